"""How much does the prefix cache cut time-to-first-token for a long prompt whose head was seen before?

An 8K-token prompt = a shared prefix of 8K-64 tokens + a 64-token tail. TTFT is measured through
`LLMEngine`: `add_request`, then `step()` until the request's first token comes back (chunked
prefill at the engine's default budget of 512 tokens per step; model loading excluded).

* cold: a fresh engine (after one short unrelated warm-up request), prompt = prefix + tail A;
* warm: the same engine after that request finished (its full blocks stay cached), prompt =
  prefix + a different tail; only the blocks after the shared prefix are computed.

Preset: `bench` (max_position_embeddings 163840, index_topk 2048, ~150M parameters, random FP8
weights). Its cold 8K sparse prefill takes about a minute on this machine (1 thread, quiet), under
the ~2 minute limit past which the issue allowed a smaller model, so no smaller config is derived. Other jobs on
the shared 2 cores can stretch the wall time, so CPU time (`time.process_time`, the 1 thread's
work) is reported beside it. Attention is
sparse (DSA, the V3.2 default) unless --attention dense. Timers around the attention parts of the
prefill (cache reads, indexer, expanded attention and its kv_b_proj up-projection of every cached
row) say where a TTFT goes.

Goal: warm TTFT <= 1/20 of cold TTFT; cached_prompt_tokens of the warm request = the prefix.

Usage: python bench/prefix_cache.py [--prompt 8192] [--tail 64] [--attention sparse] [--warm-repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from common import checkpoint, emit, other_load, random_prompts, save_plot, timed_parts


def prefill_parts(model) -> list[tuple[object, str, str]]:
    """Timed parts of a prefill step; "(inside ...)" parts are nested in another: reported, not summed."""
    import deepseek.model.indexer as indexer
    from deepseek.engine.cache import PagedCacheView
    from deepseek.model.mla import MLA

    parts = [(PagedCacheView, "store", "cache write"), (PagedCacheView, "store_tokens", "cache write"),
             (PagedCacheView, "load", "cache read, all T rows"),
             (indexer.Indexer, "select", "indexer: select (scan of all T keys, top-k)"),
             (indexer.Indexer, "scores", "(inside select) scan"), (indexer, "topk_positions", "(inside select) top-k"),
             (MLA, "_expanded", "attention, expanded form")]
    for layer in model.model.layers:
        parts.append((layer.self_attn.kv_b_proj, "forward", "(inside expanded) kv_b_proj over cached rows"))
    return parts


def ttft(engine, request_id: str, prompt: list[int], sparse: bool) -> dict:
    """Seconds from add_request to the first token, with the step count and cached prompt tokens."""
    from deepseek.engine.request import Request
    from deepseek.engine.sampler import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    with timed_parts(prefill_parts(engine.model)) as parts:
        start, cpu_start, steps = time.perf_counter(), time.process_time(), 0
        engine.add_request(Request(request_id, tuple(prompt), params, sparse=sparse))
        while not (outputs := [o for o in engine.step() if o.request_id == request_id]):
            steps += 1
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    assert outputs[0].finished, "max_tokens=1: the first token finishes the request"
    parts = dict(parts)
    parts["rest: projections, MoE, norms, indexer keys, engine"] = 1000 * seconds - sum(
        v for k, v in parts.items() if not k.startswith("(inside"))
    return {"ttft_s": seconds, "cpu_s": cpu_seconds, "steps": steps + 1,
            "cached_prompt_tokens": outputs[0].cached_prompt_tokens, "parts_ms": parts}


def fresh_engine(model, tokenizer, sparse: bool, warmup: list[int]):
    from deepseek.engine.engine import EngineConfig, LLMEngine

    engine = LLMEngine(model, tokenizer, EngineConfig())
    ttft(engine, "warmup", warmup, sparse)
    return engine


def run(model, tokenizer, args) -> dict:
    sparse = args.attention == "sparse"
    vocab = model.config.vocab_size
    prefix_len = args.prompt - args.tail
    prefix, = random_prompts(1, prefix_len, vocab, seed=1)
    tails = random_prompts(1 + args.warm_repeats, args.tail, vocab, seed=2)
    warmup, = random_prompts(1, 64, vocab, seed=3)
    engine = fresh_engine(model, tokenizer, sparse, warmup)
    cold = ttft(engine, "cold", prefix + tails[0], sparse)
    warm = [ttft(engine, f"warm-{i}", prefix + tail, sparse) for i, tail in enumerate(tails[1:])]
    engine.check_integrity()
    warm_s = statistics.median(w["ttft_s"] for w in warm)
    warm_cpu = statistics.median(w["cpu_s"] for w in warm)
    return {"cold": cold, "warm": warm, "cold_ttft_s": cold["ttft_s"], "warm_ttft_s_median": warm_s,
            "speedup": cold["ttft_s"] / warm_s, "speedup_cpu_time": cold["cpu_s"] / warm_cpu,
            "prefix_tokens": prefix_len,
            "block_size": engine.config.block_size, "chunk_tokens": engine.config.max_num_batched_tokens}


def plot(result: dict, name: str) -> Path:
    def draw(ax):
        labels = ["cold", *[f"warm {i + 1}" for i in range(len(result["warm"]))]]
        values = [result["cold_ttft_s"], *[w["ttft_s"] for w in result["warm"]]]
        ax.bar(labels, values, color=["tab:red"] + ["tab:green"] * len(result["warm"]), label="TTFT")
        ax.axhline(result["cold_ttft_s"] / 20, color="gray", ls=":", label="goal: cold / 20")
        ax.set_yscale("log")
        ax.set_ylabel("time to first token (s)")
        ax.set_title(f"{result['preset']}: {result['prompt_tokens']}-token prompt, "
                     f"{result['prefix_tokens']} cached ({result['attention']})")
    return save_plot(name, draw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=8192)
    parser.add_argument("--tail", type=int, default=64)
    parser.add_argument("--attention", choices=["sparse", "dense"], default="sparse")
    parser.add_argument("--warm-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ds-bench"))
    parser.add_argument("--quick", action="store_true", help="tiny preset, 512-token prompt: a smoke test")
    args = parser.parse_args()
    from deepseek.model import Transformer
    from deepseek.tokenizer import load_tokenizer

    torch.set_num_threads(args.threads)
    preset = "tiny" if args.quick else "bench"
    if args.quick:
        args.prompt, args.warm_repeats = 512, 1
    folder = checkpoint(args.dir / preset, preset)
    model = Transformer.from_pretrained(folder, mtp=False)
    with other_load() as load:
        measured = run(model, load_tokenizer(folder), args)
    result = {"preset": preset, "params": sum(p.numel() for p in model.parameters()),
              "prompt_tokens": args.prompt, "tail_tokens": args.tail, "attention": args.attention,
              "threads": args.threads, **measured, "other_load_cores": load["cores"]}
    result["goals"] = {"warm <= cold / 20": result["speedup"] >= 20,
                       "warm reuses the whole prefix": all(w["cached_prompt_tokens"] == result["prefix_tokens"]
                                                           for w in result["warm"])}
    name = "prefix_cache-quick" if args.quick else "prefix_cache"
    result["plot"] = str(plot(result, name))
    runs = [("cold", result["cold"]), *[(f"warm {i + 1}", w) for i, w in enumerate(result["warm"])]]
    rows = [[label, f"{r['ttft_s']:.3f}", f"{r['cpu_s']:.3f}", r["steps"], r["cached_prompt_tokens"]]
            for label, r in runs]
    emit(name, result, ["request", "TTFT (s)", "CPU (s)", "engine steps", "cached_prompt_tokens"], rows)
    print(f"\ncold / warm (median) = {result['speedup']:.1f}x wall, {result['speedup_cpu_time']:.1f}x CPU time "
          "(goal >= 20x)")


if __name__ == "__main__":
    main()
