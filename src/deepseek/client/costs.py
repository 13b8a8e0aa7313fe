"""Cost tracking on the client: price each response's usage and add it up by user, feature and model.

Prices come from `deepseek.pricing` (the table the server's ledger uses), so a tracker fed the
same responses arrives at the ledger's figures to the nano-dollar: both price each request once,
as integers, from (cache hit, cache miss, output) tokens.

    tracker = CostTracker()
    tracker.add_threshold("5.00", callback=alert, user="alice")   # once alice's spend reaches $5
    r = client.chat.completions.create(...)
    tracker.record(r, user="alice", feature="search")
    tracker.totals(feature="search").cost_usd; tracker.by("model")
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from deepseek.pricing import DEFAULT_PRICES, Amount, Price, cost_nano_usd, format_usd, usd_to_nano

log = logging.getLogger(__name__)

TAGS = ("user", "feature", "model")


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    value = obj.get(name, default) if isinstance(obj, Mapping) else getattr(obj, name, default)
    return default if value is None else value


@dataclass(frozen=True)
class Charge:
    """One response's usage and cost. prompt = cache hit + cache miss; reasoning is part of completion."""

    model: str
    prompt_tokens: int
    cache_hit_tokens: int
    cache_miss_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cost_nano: int


def charge(usage: Any, model: str, prices: Mapping[str, Price] = DEFAULT_PRICES) -> Charge:
    """Price a usage block (an openai/DeepSeek usage object or its dict). Unknown models cost 0."""
    prompt = int(_get(usage, "prompt_tokens", 0))
    hit = _get(usage, "prompt_cache_hit_tokens")
    if hit is None:   # an OpenAI-style server: the hit count only sits in prompt_tokens_details
        hit = _get(_get(usage, "prompt_tokens_details"), "cached_tokens", 0)
    hit = int(hit)
    completion = int(_get(usage, "completion_tokens", 0))
    reasoning = int(_get(_get(usage, "completion_tokens_details"), "reasoning_tokens", 0))
    price = prices.get(model)
    cost = cost_nano_usd(price, hit, prompt - hit, completion) if price is not None else 0
    return Charge(model, prompt, hit, prompt - hit, completion, reasoning, cost)


@dataclass
class UsageTotals:
    requests: int = 0
    prompt_tokens: int = 0
    cache_hit_tokens: int = 0
    cache_miss_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cost_nano: int = 0

    def add(self, c: Charge | UsageTotals) -> None:
        self.requests += c.requests if isinstance(c, UsageTotals) else 1
        for name in ("prompt_tokens", "cache_hit_tokens", "cache_miss_tokens", "completion_tokens",
                     "reasoning_tokens", "cost_nano"):
            setattr(self, name, getattr(self, name) + getattr(c, name))

    @property
    def cost_usd(self) -> str:
        return format_usd(self.cost_nano, places=6)


@dataclass(frozen=True)
class Threshold:
    """Fires once, when the spend of the matching responses first reaches `limit_nano`."""

    limit_nano: int
    scope: tuple[tuple[str, str], ...]          # (tag, value) pairs a response must match; () = all
    callback: Optional[Callable[["ThresholdCrossed"], None]] = field(default=None, compare=False)

    def matches(self, tags: Mapping[str, Optional[str]]) -> bool:
        return all(tags.get(tag) == value for tag, value in self.scope)


@dataclass(frozen=True)
class ThresholdCrossed:
    threshold: Threshold
    totals: UsageTotals

    def __str__(self) -> str:
        scope = ", ".join(f"{k}={v}" for k, v in self.threshold.scope) or "all usage"
        return (f"spend for {scope} reached ${self.totals.cost_usd} "
                f"(threshold ${format_usd(self.threshold.limit_nano, places=6)})")


class CostTracker:
    """Aggregates responses' usage and cost by user, feature and model tags; thread-safe."""

    def __init__(self, prices: Mapping[str, Price] | None = None):
        self.prices = dict(DEFAULT_PRICES if prices is None else prices)
        self.unpriced: set[str] = set()
        self._cells: dict[tuple, UsageTotals] = {}       # (user, feature, model) -> totals
        self._thresholds: list[Threshold] = []
        self._fired: set[int] = set()
        self._lock = threading.Lock()

    def add_threshold(self, usd: Amount, callback: Callable[[ThresholdCrossed], None] | None = None,
                      **scope: str) -> Threshold:
        """Call `callback` (default: log a warning) once the scoped spend reaches `usd` dollars."""
        unknown = set(scope) - set(TAGS)
        if unknown:
            raise ValueError(f"threshold scope tags must be among {TAGS}, got {sorted(unknown)}")
        threshold = Threshold(usd_to_nano(usd), tuple(sorted(scope.items())), callback)
        with self._lock:
            self._thresholds.append(threshold)
        return threshold

    def record(self, response: Any = None, *, usage: Any = None, model: str | None = None,
               user: str | None = None, feature: str | None = None) -> Charge:
        """Add one response (or a bare `usage` block with its `model`) under the given tags."""
        usage = usage if usage is not None else _get(response, "usage")
        model = model or _get(response, "model")
        if usage is None or not model:
            raise ValueError("record() needs a response with usage and model, or usage= and model=")
        c = charge(usage, model, self.prices)
        with self._lock:
            if model not in self.prices and model not in self.unpriced:
                self.unpriced.add(model)
                log.warning("no price for model %r: its usage is counted at cost 0", model)
            self._cells.setdefault((user, feature, model), UsageTotals()).add(c)
            crossed = self._crossed({"user": user, "feature": feature, "model": model})
        for event in crossed:   # outside the lock: a callback may read the tracker
            (event.threshold.callback or (lambda e: log.warning("%s", e)))(event)
        return c

    def _crossed(self, tags: Mapping[str, Optional[str]]) -> list[ThresholdCrossed]:
        events = []
        for i, t in enumerate(self._thresholds):
            if i in self._fired or not t.matches(tags):
                continue
            totals = self._sum(dict(t.scope))
            if totals.cost_nano >= t.limit_nano:
                self._fired.add(i)
                events.append(ThresholdCrossed(t, totals))
        return events

    def _sum(self, scope: Mapping[str, Optional[str]]) -> UsageTotals:
        out = UsageTotals()
        for cell, totals in self._cells.items():
            if all(cell[TAGS.index(tag)] == value for tag, value in scope.items()):
                out.add(totals)
        return out

    def totals(self, **scope: str) -> UsageTotals:
        """Totals over every response, or those matching the given tags (`user=`, `feature=`, `model=`)."""
        with self._lock:
            return self._sum(scope)

    def by(self, tag: str) -> dict[Optional[str], UsageTotals]:
        """Totals per value of one tag ("user", "feature" or "model"); untagged responses under None."""
        if tag not in TAGS:
            raise ValueError(f"tag must be one of {TAGS}, got {tag!r}")
        out: dict[Optional[str], UsageTotals] = {}
        with self._lock:
            for cell, totals in self._cells.items():
                out.setdefault(cell[TAGS.index(tag)], UsageTotals()).add(totals)
        return out
