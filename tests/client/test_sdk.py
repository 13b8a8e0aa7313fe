"""The SDK end to end against a real server: sync and async, streaming, tools, balance, beta, errors."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from sdk_helpers import USER, WEATHER
from openai.types.chat import ChatCompletion

from deepseek import AsyncDeepSeek, DeepSeek, InsufficientBalanceError, MissingAPIKeyError
from deepseek.client.types import ChatCompletionChunkResponse, ChatCompletionResponse


def test_chat_completion_carries_deepseek_typed_extras(sdk):
    r = sdk.chat.completions.create(model="deepseek-reasoner", messages=USER, max_tokens=6, timeout=30, seed=7)
    assert isinstance(r, ChatCompletion) and isinstance(r, ChatCompletionResponse)
    message, usage = r.choices[0].message, r.usage
    assert isinstance(message.reasoning_content, str) and message.reasoning_content
    assert usage.prompt_cache_hit_tokens + usage.prompt_cache_miss_tokens == usage.prompt_tokens
    assert usage.sparse_attention.mode == "sparse" and usage.sparse_attention.index_topk > 0
    assert 0 < usage.completion_tokens_details.reasoning_tokens <= usage.completion_tokens


def test_streaming_gives_typed_chunks_reasoning_first_then_usage(sdk):
    stream = sdk.chat.completions.create(model="deepseek-reasoner", messages=USER, max_tokens=6, stream=True,
                                         stream_options={"include_usage": True}, seed=7)
    chunks = list(stream)
    assert all(isinstance(c, ChatCompletionChunkResponse) for c in chunks)
    reasoning = "".join(c.choices[0].delta.reasoning_content or "" for c in chunks if c.choices)
    assert reasoning and chunks[-1].choices == [] and 0 < chunks[-1].usage.completion_tokens <= 6
    assert chunks[-1].usage.prompt_cache_miss_tokens is not None


def test_tool_call_and_tool_result_round_trip(sdk):
    first = sdk.chat.completions.create(model="deepseek-chat", messages=USER, tools=[WEATHER], max_tokens=150,
                                        tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                        temperature=0)
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments), dict)
    history = [*USER, first.choices[0].message.to_dict(),
               {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}]
    second = sdk.chat.completions.create(model="deepseek-chat", messages=history, tools=[WEATHER],
                                         tool_choice="none", max_tokens=4)
    assert second.choices[0].message.content is not None


def test_models_balance_fim_and_prefix_completion(sdk):
    assert {"deepseek-chat", "deepseek-reasoner", "deepseek-v3", "deepseek-v3.2"} <= {m.id for m in sdk.models.list()}
    balance = sdk.user.balance()
    assert balance.is_available and balance.balance_infos[0].currency == "USD"
    fim = sdk.beta.completions.create(model="deepseek-chat", prompt="def add(a, b):", suffix="    return c",
                                      max_tokens=4)
    assert fim.object == "text_completion" and fim.usage.prompt_cache_miss_tokens is not None
    prefix = sdk.beta.chat.completions.create(
        model="deepseek-chat", max_tokens=4,
        messages=[*USER, {"role": "assistant", "content": "```python\n", "prefix": True}])
    assert prefix.choices[0].message.role == "assistant"
    with pytest.raises(openai.BadRequestError):          # prefix completion is beta-only
        sdk.chat.completions.create(model="deepseek-chat", max_tokens=4,
                                    messages=[*USER, {"role": "assistant", "content": "x", "prefix": True}])


def test_async_client_one_short_lived_client_per_call_inside_a_semaphore(sdk_server):
    async def main():
        semaphore = asyncio.Semaphore(3)

        async def one(i: int) -> str:
            async with semaphore:
                async with AsyncDeepSeek(api_key=sdk_server.key, base_url=sdk_server.url) as client:
                    r = await client.chat.completions.create(
                        model="deepseek-chat", messages=[{"role": "user", "content": f"n={i}"}], max_tokens=3)
                    return r.choices[0].finish_reason

        async with AsyncDeepSeek(api_key=sdk_server.key, base_url=sdk_server.url) as client:
            chunks = [c async for c in await client.chat.completions.create(
                model="deepseek-chat", messages=USER, max_tokens=3, stream=True)]
            balance = await client.user.balance()
            fim = await client.beta.completions.create(model="deepseek-chat", prompt="x = ", max_tokens=2)
        return await asyncio.gather(*(one(i) for i in range(8))), chunks, balance, fim

    finishes, chunks, balance, fim = asyncio.run(main())
    assert len(finishes) == 8 and set(finishes) <= {"length", "stop"}     # a random model may stop early
    assert isinstance(chunks[0], ChatCompletionChunkResponse) and balance.is_available and fim.choices


def test_missing_or_empty_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    for kwargs in ({}, {"api_key": ""}):
        for cls in (DeepSeek, AsyncDeepSeek):
            with pytest.raises(MissingAPIKeyError, match="DEEPSEEK_API_KEY") as e:
                cls(**kwargs)
            assert "export DEEPSEEK_API_KEY=" in str(e.value)
    monkeypatch.setenv("DEEPSEEK_API_KEY", "   ")
    with pytest.raises(MissingAPIKeyError):
        DeepSeek()


def test_key_and_base_url_come_from_the_environment(monkeypatch, sdk_server):
    monkeypatch.setenv("DEEPSEEK_API_KEY", sdk_server.key)
    monkeypatch.delenv("DEEPSEEK_BASE_URL", raising=False)
    assert str(DeepSeek().base_url).rstrip("/") == "https://api.deepseek.com"
    assert str(DeepSeek().beta._client.base_url).rstrip("/") == "https://api.deepseek.com/beta"
    monkeypatch.setenv("DEEPSEEK_BASE_URL", sdk_server.url + "/v1")
    client = DeepSeek()
    assert client.api_key == sdk_server.key and client.models.list().data
    assert str(client.beta._client.base_url).rstrip("/") == sdk_server.url + "/beta"
    assert str(DeepSeek(base_url="http://example.invalid").base_url).startswith("http://example.invalid")


def test_402_is_insufficient_balance_and_is_not_retried(sdk_server, new_key):
    secret, _ = new_key(budget="0.000001")
    client = DeepSeek(api_key=secret, base_url=sdk_server.url, max_retries=3)
    client.chat.completions.create(model="deepseek-chat", messages=USER, max_tokens=3)   # overshoots the budget
    with pytest.raises(InsufficientBalanceError) as e:
        client.chat.completions.create(model="deepseek-chat", messages=USER, max_tokens=3)
    assert e.value.status_code == 402 and isinstance(e.value, openai.APIStatusError)
    assert client.user.balance().is_available is False


def test_with_options_keeps_the_deepseek_behaviour(sdk):
    from deepseek.client import Backoff

    copy = sdk.with_options(max_retries=5, backoff=Backoff(initial=0.5))
    assert isinstance(copy, DeepSeek) and copy.max_retries == 5 and copy._backoff.initial == 0.5
    assert copy._on_insufficient_resource == sdk._on_insufficient_resource
    raw = copy.chat.completions.with_raw_response.create(model="deepseek-chat", messages=USER, max_tokens=2)
    assert raw.http_request.headers["idempotency-key"].startswith("ds-")
    assert isinstance(raw.parse(), ChatCompletionResponse)
