"""The async front: concurrent streams, cancellation frees the cache, heartbeats, engine failure."""

from __future__ import annotations

import asyncio
import time

import pytest

from deepseek.engine.async_engine import AsyncEngine, EngineDeadError
from deepseek.engine.request import Request
from deepseek.engine.sampler import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def request(i, n=30):
    return Request(f"a{i}", tuple([0] + [(7 * i + 3 * j) % 1000 + 2 for j in range(n)]), GREEDY)


async def collect(engine, req, heartbeat=None):
    tokens, beats, last = [], 0, None
    async for out in engine.stream(req, heartbeat=heartbeat):
        if out is None:
            beats += 1
            continue
        tokens.extend(out.token_ids)
        last = out
    return tokens, beats, last


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def async_engine(make_engine):
    engine = AsyncEngine(make_engine(max_num_seqs=4))
    yield engine
    engine.shutdown()


def test_concurrent_streams_equal_offline_runs(async_engine, make_engine):
    async def main():
        return await asyncio.gather(*(collect(async_engine, request(i)) for i in range(6)))

    results = asyncio.run(main())
    offline = make_engine()
    for i, (tokens, _, last) in enumerate(results):
        offline.add_request(request(i))
    expected = {}
    while offline.has_unfinished():
        for out in offline.step():
            expected.setdefault(out.request_id, []).extend(out.token_ids)
    for i, (tokens, _, last) in enumerate(results):
        assert tokens == expected[f"a{i}"] and last.finished and last.finish_reason == "length"


def test_leaving_a_stream_early_aborts_and_frees_blocks(async_engine):
    long = Request("long", request(1).prompt_token_ids, SamplingParams(temperature=0, max_tokens=500,
                                                                       ignore_eos=True))

    async def main():
        async for out in async_engine.stream(long):
            if out.completion_tokens >= 3:
                break

    asyncio.run(main())
    blocks = async_engine.engine.blocks
    assert wait_until(lambda: not async_engine.engine.seqs)
    assert wait_until(lambda: blocks.num_free_blocks == blocks.num_blocks)


def test_heartbeats_while_waiting_in_the_queue(make_engine):
    engine = AsyncEngine(make_engine(max_num_seqs=1))
    try:
        ahead = Request("ahead", request(2).prompt_token_ids,
                        SamplingParams(temperature=0, max_tokens=150, ignore_eos=True))

        async def main():
            first = asyncio.create_task(collect(engine, ahead))
            await asyncio.sleep(0.05)
            behind = await collect(engine, request(3), heartbeat=0.01)
            await first
            return behind

        tokens, beats, last = asyncio.run(main())
        assert beats > 0 and len(tokens) == 12
    finally:
        engine.shutdown()


def test_invalid_requests_raise_before_anything_runs(async_engine):
    async def main():
        async for _ in async_engine.stream(Request("bad", (), GREEDY)):
            pass

    with pytest.raises(ValueError, match="empty"):
        asyncio.run(main())
    assert async_engine.healthy


def test_an_engine_failure_reaches_every_stream_and_marks_it_unhealthy(make_engine):
    inner = make_engine()

    def broken_step():
        raise RuntimeError("boom")

    inner.step = broken_step
    engine = AsyncEngine(inner)
    try:
        with pytest.raises(EngineDeadError, match="boom"):
            asyncio.run(collect(engine, request(4)))
        assert wait_until(lambda: not engine.healthy)
        with pytest.raises(EngineDeadError):
            asyncio.run(collect(engine, request(5)))
    finally:
        engine.shutdown()
