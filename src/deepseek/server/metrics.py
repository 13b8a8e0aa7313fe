"""Prometheus metrics (GET /metrics), in a registry of the app's own so test servers never collide.

Latencies: time to first token, inter-token latency, end-to-end time, queue time. Load: running
and waiting requests and KV-cache usage, read from the engine at scrape time. Counters: prompt,
cached and generated tokens, requests by finish reason and by status.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, engine):
        self.registry = r = CollectorRegistry()
        self.ttft = Histogram("deepseek_time_to_first_token_seconds", "Time to first token", registry=r,
                              buckets=_LATENCY_BUCKETS)
        self.itl = Histogram("deepseek_inter_token_latency_seconds", "Time between output tokens", registry=r,
                             buckets=_LATENCY_BUCKETS)
        self.e2e = Histogram("deepseek_e2e_request_latency_seconds", "Request latency, arrival to end",
                             registry=r, buckets=_LATENCY_BUCKETS)
        self.queue = Histogram("deepseek_queue_time_seconds", "Time waiting before first scheduled",
                               registry=r, buckets=_LATENCY_BUCKETS)
        self.prompt_tokens = Counter("deepseek_prompt_tokens", "Prompt tokens", registry=r)
        self.cached_tokens = Counter("deepseek_prefix_cache_hit_tokens", "Prompt tokens from the prefix cache",
                                     registry=r)
        self.generation_tokens = Counter("deepseek_generation_tokens", "Generated tokens", registry=r)
        self.finished = Counter("deepseek_request_finished", "Finished requests by finish reason",
                                ["finish_reason"], registry=r)
        self.requests = Counter("deepseek_requests", "Requests by outcome", ["status"], registry=r)
        inner = engine.engine
        Gauge("deepseek_requests_running", "Requests being generated", registry=r).set_function(
            lambda: inner.num_running)
        Gauge("deepseek_requests_waiting", "Requests waiting to be scheduled", registry=r).set_function(
            lambda: inner.num_waiting)
        Gauge("deepseek_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use", registry=r).set_function(
            inner.blocks.usage)
        Gauge("deepseek_kv_cache_free_blocks", "KV-cache blocks free or evictable", registry=r).set_function(
            lambda: inner.blocks.num_free_blocks)
        Gauge("deepseek_engine_healthy", "1 while the engine thread runs", registry=r).set_function(
            lambda: 1.0 if engine.healthy else 0.0)

    def observe(self, run, status: str) -> None:
        usage = run.usage
        self.requests.labels(status=status).inc()
        self.prompt_tokens.inc(usage.prompt_tokens)
        self.cached_tokens.inc(usage.cached_tokens)
        self.generation_tokens.inc(usage.completion_tokens)
        if run.finish_reason:
            self.finished.labels(finish_reason=run.finish_reason).inc()
        if run.first_token_at is not None:
            self.ttft.observe(run.first_token_at - run.job.arrived)
        for a, b in zip(run.token_times, run.token_times[1:]):
            self.itl.observe(b - a)
        end = run.token_times[-1] if run.token_times else None
        if end is not None:
            self.e2e.observe(end - run.job.arrived)
        if run.queue_time is not None:
            self.queue.observe(run.queue_time)

    def render(self) -> bytes:
        return generate_latest(self.registry)
