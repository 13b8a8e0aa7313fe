"""Per-key rate and concurrency limits: what is admitted, the Retry-After hints, no leaked slots."""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deepseek.server.limits import ConcurrencyLimiter, RateLimiter


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- requests per minute -------------------------------------------------------------------------

def test_a_key_may_burst_its_rpm_then_waits_one_refill_interval():
    limiter = RateLimiter(clock=Clock())
    assert all(limiter.check("k", 60) is None for _ in range(60))
    assert limiter.check("k", 60) == pytest.approx(1.0)
    assert limiter.check("k", 60) == pytest.approx(1.0)        # a refused request uses nothing up


def test_the_retry_after_is_exactly_when_the_next_request_is_admitted():
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    assert limiter.check("k", 2) is None and limiter.check("k", 2) is None
    clock.now += 10
    wait = limiter.check("k", 2)
    assert wait == pytest.approx(20.0)                          # one token per 30 s
    clock.now += wait - 0.01
    assert limiter.check("k", 2) == pytest.approx(0.01)
    clock.now += 0.01
    assert limiter.check("k", 2) is None


def test_keys_are_limited_independently_and_none_means_unlimited():
    limiter = RateLimiter(clock=Clock())
    assert limiter.check("a", 1) is None and limiter.check("a", 1) == pytest.approx(60.0)
    assert limiter.check("b", 1) is None
    assert all(limiter.check("a", None) is None for _ in range(1000))
    with pytest.raises(ValueError):
        limiter.check("a", 0)


def test_an_explicit_now_overrides_the_clock():
    limiter = RateLimiter(clock=lambda: pytest.fail("clock read"))
    assert limiter.check("k", 1, now=5.0) is None
    assert limiter.check("k", 1, now=35.0) == pytest.approx(30.0)


@given(st.integers(1, 120), st.lists(st.floats(0, 30, allow_nan=False), min_size=1, max_size=300))
def test_admissions_never_exceed_the_bucket_and_refusals_say_when(rpm, gaps):
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    start, admitted = clock.now, 0
    for gap in gaps:
        clock.now += gap
        wait = limiter.check("k", rpm)
        if wait is None:
            admitted += 1
        else:
            assert wait > 0
            clock.now += wait                           # honouring Retry-After always succeeds
            assert limiter.check("k", rpm) is None
            admitted += 1
        # Token bucket: a burst of rpm, then rpm per 60 s.
        assert admitted <= rpm + rpm * (clock.now - start) / 60 + 1e-6


def test_idle_keys_leave_no_state_behind():
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    for i in range(2000):
        limiter.check(f"key{i}", 600)
        clock.now += 0.5                               # each key's 0.1 s token refills long before
    assert len(limiter._tat) < 1024


# --- requests in flight --------------------------------------------------------------------------

def test_a_key_holds_at_most_its_concurrency_limit():
    limiter = ConcurrencyLimiter(clock=Clock())
    slots = [limiter.try_acquire("k", 2), limiter.try_acquire("k", 2)]
    assert all(slots) and limiter.try_acquire("k", 2) is None
    assert limiter.try_acquire("other", 2) and limiter.in_flight("k") == 2
    slots[0].release()
    assert limiter.try_acquire("k", 2) is not None
    assert limiter.try_acquire("k", None) is not None       # no limit
    with pytest.raises(ValueError):
        limiter.try_acquire("k", 0)


def test_releasing_a_slot_twice_frees_it_once():
    limiter = ConcurrencyLimiter(clock=Clock())
    a, b = limiter.try_acquire("k", 3), limiter.try_acquire("k", 3)
    a.release()
    a.release()
    assert a.released and limiter.in_flight("k") == 1
    with b:
        pass
    b.release()
    assert limiter.total_in_flight() == 0


def test_a_slot_is_released_when_the_handler_fails():
    limiter = ConcurrencyLimiter(clock=Clock())
    with pytest.raises(RuntimeError):
        with limiter.try_acquire("k", 1):
            raise RuntimeError("route failed")
    assert limiter.total_in_flight() == 0


def test_a_slot_is_released_when_the_request_task_is_cancelled():
    limiter = ConcurrencyLimiter()
    async def handler(ready):
        async with limiter.try_acquire("k", 1):
            ready.set()
            await asyncio.sleep(3600)                  # a stream the client walks away from

    async def main():
        ready = asyncio.Event()
        task = asyncio.create_task(handler(ready))
        await ready.wait()
        assert limiter.in_flight("k") == 1 and limiter.try_acquire("k", 1) is None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert limiter.total_in_flight() == 0


def test_retry_after_tracks_how_long_slots_are_held():
    clock = Clock()
    limiter = ConcurrencyLimiter(clock=clock, min_retry_after=0.5, max_retry_after=30.0, smoothing=0.5)
    assert limiter.retry_after("k") == 0.5                 # no history yet
    slot = limiter.try_acquire("k", 2)
    clock.now += 8
    slot.release()
    assert limiter.retry_after("k") == 8.0
    slots = [limiter.try_acquire("k", 2) for _ in range(2)]
    assert limiter.retry_after("k") == 4.0                  # two in flight: one frees in ~half the mean
    clock.now += 200
    slots[0].release()
    assert limiter.retry_after("k") == 30.0                 # capped


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 9)), max_size=200), st.integers(1, 4))
def test_in_flight_always_equals_the_slots_not_yet_released(ops, limit):
    limiter = ConcurrencyLimiter(clock=Clock())
    held = []
    for acquire, pick in ops:
        if acquire:
            slot = limiter.try_acquire("k", limit)
            assert (slot is None) == (len([s for s in held if not s.released]) >= limit)
            if slot:
                held.append(slot)
        elif held:
            held[pick % len(held)].release()            # may repeat: must stay idempotent
        assert limiter.in_flight("k") == sum(not s.released for s in held) <= limit
    for s in held:
        s.release()
    assert limiter.total_in_flight() == 0


def test_threads_acquiring_and_releasing_leave_nothing_held():
    limiter = ConcurrencyLimiter()
    peak = []

    def worker():
        for _ in range(2000):
            if slot := limiter.try_acquire("k", 3):
                peak.append(limiter.in_flight("k"))
                slot.release()
                slot.release()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert limiter.total_in_flight() == 0 and max(peak) <= 3
