"""Per-key request-rate and concurrency limits, in memory, for the asyncio server.

Both limiters answer "not now" with a Retry-After hint in seconds, so the route can send
429 + Retry-After (perf_and_reliability.md §B3). Both take an injectable clock for tests.

Rate: a token bucket per key, computed as GCRA (one float per key, O(1) per check). A key with
`rpm = N` may send a burst of N requests, then one every 60/N seconds; the Retry-After is exactly
when the next request would be admitted. This is the continuously refilling limit OpenAI and
DeepSeek clients expect, and it needs no per-request history.

Concurrency: a counter per key. `try_acquire` hands out a `Slot` whose `release()` is idempotent
and which is also a (sync or async) context manager, so a route cannot leak a slot on an error,
a cancellation or a client disconnect, nor release one twice. The Retry-After hint is the key's
recent mean slot hold time divided by its slots in use: roughly when the first one frees.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Hashable

_SWEEP_EVERY = 1024   # checks between drops of idle rate-limit state, so memory tracks active keys


class RateLimiter:
    """Requests-per-minute per key (token bucket with capacity `rpm`, refilled at rpm/60 per s)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._tat: dict[Hashable, float] = {}   # GCRA "theoretical arrival time" per key
        self._checks = 0
        self._lock = threading.Lock()

    def check(self, key_id: Hashable, rpm: int | None, now: float | None = None) -> float | None:
        """Admit one request (None) or refuse it: seconds until it would be admitted (> 0).

        A refused request uses up nothing. `rpm=None` means no limit.
        """
        if rpm is None:
            return None
        if rpm <= 0:
            raise ValueError(f"rpm must be positive or None, got {rpm}")
        now = self.clock() if now is None else now
        interval = 60.0 / rpm             # one token's refill time
        burst = 60.0 - interval           # how far ahead of `now` the schedule may run: rpm - 1 tokens
        with self._lock:
            self._maybe_sweep(now)
            tat = max(self._tat.get(key_id, now), now)
            ahead = tat - now
            if ahead > burst + 1e-9:      # tolerance: float sums of `interval` drift by ulps
                return ahead - burst
            self._tat[key_id] = tat + interval
            return None

    def _maybe_sweep(self, now: float) -> None:
        self._checks += 1
        if self._checks % _SWEEP_EVERY == 0:
            # A key whose schedule is in the past has a full bucket: same as no state at all.
            self._tat = {k: t for k, t in self._tat.items() if t > now}


class Slot:
    """One held concurrency slot. `release()` is idempotent; `with`/`async with` release on exit."""

    __slots__ = ("_limiter", "key_id", "acquired_at", "_released")

    def __init__(self, limiter: ConcurrencyLimiter, key_id: Hashable, acquired_at: float):
        self._limiter, self.key_id, self.acquired_at = limiter, key_id, acquired_at
        self._released = False

    def release(self) -> None:
        self._limiter._release(self)

    @property
    def released(self) -> bool:
        return self._released

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    async def __aenter__(self) -> Slot:
        return self

    async def __aexit__(self, *exc) -> None:
        self.release()


class ConcurrencyLimiter:
    """At most `limit` requests in flight per key."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, min_retry_after: float = 1.0,
                 max_retry_after: float = 60.0, smoothing: float = 0.2):
        self.clock = clock
        self.min_retry_after, self.max_retry_after = min_retry_after, max_retry_after
        self.smoothing = smoothing                   # EWMA weight of the newest hold time
        self._held: dict[Hashable, int] = {}
        self._mean_hold: dict[Hashable, float] = {}
        self._lock = threading.Lock()                # releases may come from a worker thread

    def try_acquire(self, key_id: Hashable, limit: int | None) -> Slot | None:
        """A slot (truthy) if `key_id` has fewer than `limit` in flight, else None. None limit: no cap."""
        if limit is not None and limit <= 0:
            raise ValueError(f"limit must be positive or None, got {limit}")
        with self._lock:
            held = self._held.get(key_id, 0)
            if limit is not None and held >= limit:
                return None
            self._held[key_id] = held + 1
        return Slot(self, key_id, self.clock())

    def _release(self, slot: Slot) -> None:
        with self._lock:
            if slot._released:
                return
            slot._released = True
            held = self._held[slot.key_id] - 1
            if held:
                self._held[slot.key_id] = held
            else:
                del self._held[slot.key_id]         # idle keys leave no state behind
            hold = max(self.clock() - slot.acquired_at, 0.0)
            mean = self._mean_hold.get(slot.key_id)
            self._mean_hold[slot.key_id] = hold if mean is None else mean + self.smoothing * (hold - mean)

    def retry_after(self, key_id: Hashable) -> float:
        """Seconds a refused client should wait: about when the first of its slots frees."""
        with self._lock:
            mean = self._mean_hold.get(key_id)
            held = self._held.get(key_id, 0)
        if mean is None:
            return self.min_retry_after
        return min(max(mean / max(held, 1), self.min_retry_after), self.max_retry_after)

    def in_flight(self, key_id: Hashable) -> int:
        """Slots held by one key (open mode uses the key None)."""
        with self._lock:
            return self._held.get(key_id, 0)

    def total_in_flight(self) -> int:
        """Slots held by all keys: back to 0 whenever the server is idle (§B5 item 5)."""
        with self._lock:
            return sum(self._held.values())
