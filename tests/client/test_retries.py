"""Retries, measured against a scripted local HTTP server: server hints, backoff, idempotency keys,
and the `insufficient_system_resource` policy."""

from __future__ import annotations

import asyncio
import json

import pytest
from sdk_helpers import USER, completion

from deepseek import AsyncDeepSeek, DeepSeek, InsufficientBalanceError, InsufficientSystemResourceError
from deepseek.client import Backoff

RATE_LIMITED = {"error": {"message": "Rate Limit Reached", "type": "rate_limit_error", "code": "rate_limit"}}
TOLERANCE = 0.25   # seconds of scheduling slack on a loaded CI machine


def make_client(url, **kwargs) -> DeepSeek:
    return DeepSeek(api_key="sk-test", base_url=url, timeout=10, **kwargs)


def ask(client):
    return client.chat.completions.create(model="deepseek-chat", messages=USER, max_tokens=2)


def test_429_with_retry_after_is_retried_after_the_given_delays_then_succeeds(stub):
    server = stub([(429, {"Retry-After": "1"}, RATE_LIMITED), (429, {"Retry-After": "0.5"}, RATE_LIMITED),
                   (200, {}, completion())])
    r = ask(make_client(server.url, max_retries=2))
    assert r.choices[0].message.content == "ok"
    first, second = server.gaps()
    assert 1.0 <= first < 1.0 + TOLERANCE and 0.5 <= second < 0.5 + TOLERANCE
    keys = {req["headers"]["idempotency-key"] for req in server.requests}
    assert len(keys) == 1                                   # one logical request, one key
    assert [req["headers"]["x-stainless-retry-count"] for req in server.requests] == ["0", "1", "2"]


def test_retry_after_ms_takes_precedence(stub):
    server = stub([(503, {"retry-after-ms": "300", "Retry-After": "5"}, RATE_LIMITED), (200, {}, completion())])
    ask(make_client(server.url))
    assert 0.3 <= server.gaps()[0] < 0.3 + TOLERANCE


def test_without_a_hint_backoff_doubles_up_to_the_cap(stub):
    server = stub([(500, {}, {})] * 3 + [(200, {}, completion())])
    ask(make_client(server.url, max_retries=3, backoff=Backoff(initial=0.2, maximum=0.3, jitter=0)))
    gaps = server.gaps()
    for gap, expected in zip(gaps, (0.2, 0.3, 0.3)):        # 0.2, then 0.4 capped at 0.3
        assert expected <= gap < expected + TOLERANCE


def test_retries_are_exhausted_then_the_error_is_raised(stub):
    import openai

    server = stub([(429, {"Retry-After": "0.1"}, RATE_LIMITED)] * 3)
    with pytest.raises(openai.RateLimitError):
        ask(make_client(server.url, max_retries=1))
    assert len(server.requests) == 2


def test_each_logical_request_gets_its_own_idempotency_key(stub):
    server = stub([(200, {}, completion()), (200, {}, completion())])
    client = make_client(server.url)
    ask(client), ask(client)
    a, b = (req["headers"]["idempotency-key"] for req in server.requests)
    assert a != b and a.startswith("ds-")


def test_402_raises_insufficient_balance_at_once(stub):
    body = {"error": {"message": "Insufficient Balance", "type": "insufficient_balance_error"}}
    server = stub([(402, {}, body)] * 3)
    with pytest.raises(InsufficientBalanceError, match="Insufficient Balance") as e:
        ask(make_client(server.url, max_retries=2))
    assert len(server.requests) == 1 and e.value.body["type"] == "insufficient_balance_error"


def test_backoff_delays_stay_within_jitter_and_cap():
    b = Backoff()
    assert (b.initial, b.maximum) == (1.0, 60.0)
    for n in range(12):
        base = min(2.0 ** n, 60.0)
        assert all(0.75 * base <= b.delay(n) <= base for _ in range(50))
    assert b.delay(10_000) <= 60.0
    with pytest.raises(ValueError):
        Backoff(initial=2, maximum=1)


def test_insufficient_system_resource_is_retried_with_a_new_key_by_default(stub):
    server = stub([(200, {}, completion("insufficient_system_resource", "partial")), (200, {}, completion())])
    r = ask(make_client(server.url, backoff=Backoff(initial=0.05)))
    assert r.choices[0].message.content == "ok"
    a, b = (req["headers"]["idempotency-key"] for req in server.requests)
    assert a != b                # a new generation, not a replay of the partial one


def test_insufficient_system_resource_raise_and_return_policies(stub):
    partial = completion("insufficient_system_resource", "partial")
    server = stub([(200, {}, partial)] * 2)
    with pytest.raises(InsufficientSystemResourceError) as e:
        ask(make_client(server.url, on_insufficient_resource="raise"))
    assert e.value.response.choices[0].message.content == "partial"
    r = ask(make_client(server.url, on_insufficient_resource="return"))
    assert r.choices[0].finish_reason == "insufficient_system_resource"
    with pytest.raises(ValueError):
        make_client(server.url, on_insufficient_resource="ignore")


def test_insufficient_system_resource_gives_up_after_max_retries(stub):
    server = stub([(200, {}, completion("insufficient_system_resource"))] * 3)
    with pytest.raises(InsufficientSystemResourceError) as e:
        ask(make_client(server.url, max_retries=1, backoff=Backoff(initial=0.05)))
    assert e.value.attempts == 2 and len(server.requests) == 2


def _sse(*chunks: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def test_a_stream_that_ran_out_raises_after_its_last_chunk(stub):
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "deepseek-chat"}
    body = _sse({**chunk, "choices": [{"index": 0, "delta": {"content": "par"}}]},
                {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "insufficient_system_resource"}]},
                {**chunk, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
    server = stub([(200, {"Content-Type": "text/event-stream"}, body)] * 2)
    seen = []
    with pytest.raises(InsufficientSystemResourceError):
        for c in make_client(server.url).chat.completions.create(model="deepseek-chat", messages=USER, stream=True):
            seen.append(c)
    assert len(seen) == 3 and seen[-1].usage.total_tokens == 4    # the usage chunk still arrived

    async def consume():
        async with AsyncDeepSeek(api_key="k", base_url=server.url) as client:
            return [c async for c in await client.chat.completions.create(
                model="deepseek-chat", messages=USER, stream=True)]

    with pytest.raises(InsufficientSystemResourceError):
        asyncio.run(consume())


def test_async_client_retries_the_same_way(stub):
    server = stub([(429, {"Retry-After": "0.3"}, RATE_LIMITED), (200, {}, completion())])

    async def main():
        async with AsyncDeepSeek(api_key="k", base_url=server.url) as client:
            return await client.chat.completions.create(model="deepseek-chat", messages=USER)

    assert asyncio.run(main()).usage.prompt_cache_hit_tokens == 4
    assert 0.3 <= server.gaps()[0] < 0.3 + TOLERANCE
    assert len({req["headers"]["idempotency-key"] for req in server.requests}) == 1


def test_openai_account_headers_never_reach_deepseek(stub, monkeypatch):
    monkeypatch.setenv("OPENAI_ORG_ID", "org-secret")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-secret")
    server = stub([(200, {}, completion())])
    ask(make_client(server.url))
    headers = server.requests[0]["headers"]
    assert "openai-organization" not in headers and "openai-project" not in headers
    assert headers["authorization"] == "Bearer sk-test"
