"""Typed records that carry one request through the engine.

Request (what the caller asked) -> Sequence (the engine's mutable state for it) -> RequestOutput
(what the caller gets back: a streamed delta, and at the end the finish reason and figures).
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .blocks import BlockTable
from .detokenizer import IncrementalDetokenizer
from .sampler import SamplingParams, make_generator


@dataclass(frozen=True)
class Request:
    """One generation request. `salt` isolates a tenant's prefix-cache blocks from everyone else's."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    params: SamplingParams = field(default_factory=SamplingParams)
    sparse: bool = True                 # DSA (V3.2) or dense MLA (V3) on the same weights
    salt: bytes = b""
    grammar: Any = None                 # a compiled constraint from engine.grammar, or None
    # Constrained decoding starts after this token (thinking mode: after `</think>`); None = at once.
    grammar_after_token: int | None = None


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()   # (token id, logprob), best first


@dataclass(frozen=True)
class SparseStats:
    """The sparse-attention figures the API reports for a request."""

    mode: str                 # "sparse" or "dense"
    index_topk: int | None
    context_tokens: int       # prompt + completion tokens at the end
    attended_tokens: float    # mean keys attended per generated token
    density: float            # attended_tokens / mean context at those steps


class RequestOutput(NamedTuple):
    """One update for a request: the text and tokens new since the last update; figures at the end.
    (Immutable; a named tuple because one is built per request per step: a frozen dataclass takes
    about 3x as long to construct.)"""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] = ()
    finished: bool = False
    finish_reason: str | None = None       # "stop", "length", "abort"
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    sparse: SparseStats | None = None
    queue_time: float | None = None        # seconds from arrival to first scheduling (final output)


class Sequence:
    """The engine's state for one request: its tokens, cache blocks, sampler state and text."""

    def __init__(self, request: Request, detokenizer: IncrementalDetokenizer | None):
        self.request = request
        self.params = request.params
        self.token_ids: list[int] = list(request.prompt_token_ids)
        self.num_prompt_tokens = len(self.token_ids)
        self.num_computed = 0                  # positions whose KV rows are in the cache
        self.table: BlockTable | None = None
        self.status = Status.WAITING
        self.finish_reason: str | None = None
        self.cached_prompt_tokens: int | None = None   # set at first admission
        self.generator = make_generator(self.params)
        self.output_counts: Counter[int] = Counter()   # for frequency / presence penalties
        self.detokenizer = detokenizer
        self.grammar_state = None                      # engine.grammar matcher, once active
        self.grammar_active = request.grammar is not None and request.grammar_after_token is None
        # Accumulated for SparseStats: keys attended and context length, summed over generated tokens.
        self.attended_sum = 0
        self.context_sum = 0
        self.arrival_time = time.monotonic()
        self.first_scheduled_time: float | None = None

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed

    def sparse_stats(self, index_topk: int | None) -> SparseStats:
        n = max(self.num_output_tokens, 1)
        attended = self.attended_sum / n
        density = self.attended_sum / self.context_sum if self.context_sum else 1.0
        return SparseStats(mode="sparse" if self.request.sparse else "dense",
                           index_topk=index_topk if self.request.sparse else None,
                           context_tokens=len(self.token_ids), attended_tokens=attended,
                           density=density)
