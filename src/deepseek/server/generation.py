"""One request's trip through the engine, shared by the chat, FIM and Vertex routes.

A `Job` is everything a route decided (prompt tokens, sampling, grammar, how to parse the output).
`Run` streams it through the `AsyncEngine`, turns text deltas into reasoning / content /
tool-call deltas with the chat `StreamParser`, and at the end knows the final message, the
finish reason and the usage block (with DeepSeek's cache fields and the sparse-attention figures).
The non-streaming routes consume the same deltas, so both answers are identical by construction.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

from deepseek.chat import (ContentDelta, ReasoningDelta, StreamParser, ToolCallArgumentsDelta,
                           ToolCallStart, collect)
from deepseek.engine.async_engine import EngineDeadError
from deepseek.engine.request import Request, RequestOutput

from .state import ModelRoute, ServerState


@dataclass
class Job:
    route: ModelRoute
    model_name: str                     # as the client sent it
    request: Request
    parse_thinking: bool                # the output starts inside a reasoning block
    tools: list[dict] | None = None
    parse_tools: bool = True            # FIM output is plain text
    key: object | None = None           # the caller's KeyInfo, or None in open mode
    created: int = field(default_factory=lambda: int(time.time()))
    arrived: float = field(default_factory=time.monotonic)


def new_request_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Usage:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    sparse: dict | None = None

    def to_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_cache_hit_tokens": self.cached_tokens,
            "prompt_cache_miss_tokens": self.prompt_tokens - self.cached_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "sparse_attention": self.sparse,
        }


class Run:
    """Drive one job; iterate `deltas()`; afterwards read `message`, `finish_reason`, `usage`."""

    def __init__(self, state: ServerState, job: Job):
        self.state, self.job = state, job
        self.parser = StreamParser(job.parse_thinking, job.tools) if job.parse_tools else None
        self.think_close = state.token_id("</think>")
        self.events: list = []
        self.text: list[str] = []
        self.logprobs: list = []
        self.usage = Usage(prompt_tokens=len(job.request.prompt_token_ids))
        self.finish_reason: str | None = None
        self.first_token_at: float | None = None
        self.token_times: list[float] = []
        self.queue_time: float | None = None
        self._in_reasoning = job.parse_thinking

    async def deltas(self) -> AsyncIterator[list | None]:
        """Yield lists of parser events (or text, for FIM) as they come; None = still waiting."""
        try:
            async for out in self.state.engine.stream(self.job.request, self.state.settings.keepalive_seconds):
                if out is None:
                    yield None
                    continue
                events = self._absorb(out)
                if events:
                    yield events
        except EngineDeadError:
            self.finish_reason = "insufficient_system_resource"
            tail = self.parser.finish() if self.parser else []
            self.events.extend(tail)
            if tail:
                yield tail

    def _absorb(self, out: RequestOutput) -> list:
        now = time.monotonic()
        if out.token_ids:
            self.first_token_at = self.first_token_at or now
            self.token_times.append(now)
        self._count(out)
        self.logprobs.extend(out.logprobs)
        self.text.append(out.text)
        if self.parser is None:
            events = [out.text] if out.text else []
        else:
            events = self.parser.feed(out.text)
            if out.finished:
                events += self.parser.finish()
        self.events.extend(events)
        if out.finished:
            self.queue_time = out.queue_time
            self._finish(out)
        return events

    def _count(self, out: RequestOutput) -> None:
        u = self.usage
        u.prompt_tokens, u.cached_tokens = out.prompt_tokens, out.cached_prompt_tokens
        u.completion_tokens = out.completion_tokens
        for token in out.token_ids:
            if self._in_reasoning:
                u.reasoning_tokens += 1
                self._in_reasoning = token != self.think_close

    def _finish(self, out: RequestOutput) -> None:
        reason = out.finish_reason
        if reason == "stop" and self.parser is not None and self.message.tool_calls:
            reason = "tool_calls"
        self.finish_reason = {"abort": "insufficient_system_resource"}.get(reason, reason)
        if out.sparse is not None:
            s = out.sparse
            self.usage.sparse = {"mode": s.mode, "index_topk": s.index_topk, "context_tokens": s.context_tokens,
                                 "attended_tokens": round(s.attended_tokens, 2), "density": round(s.density, 4)}

    @property
    def message(self):
        return collect(self.events, self.job.parse_thinking, self.parser.error if self.parser else None)

    @property
    def full_text(self) -> str:
        return "".join(self.text)


def chunk_delta(event) -> dict:
    """One parser event as the `delta` of a `chat.completion.chunk`."""
    if isinstance(event, ReasoningDelta):
        return {"reasoning_content": event.text}
    if isinstance(event, ContentDelta):
        return {"content": event.text}
    if isinstance(event, ToolCallStart):
        return {"tool_calls": [{"index": event.index, "id": event.id, "type": "function",
                                "function": {"name": event.name, "arguments": ""}}]}
    if isinstance(event, ToolCallArgumentsDelta):
        return {"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]}
    raise TypeError(f"unknown event {event!r}")
