"""Every route, called with the official `openai` client against a real server process."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

USER = [{"role": "user", "content": "Say hello in json."}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city", "days"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Time in a timezone",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}}


def stream_text(stream):
    role, content, reasoning, finish, usage, calls = None, [], [], None, None, {}
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            d = choice.delta
            role = role or d.role
            content.append(d.content or "")
            reasoning.append(getattr(d, "reasoning_content", None) or "")
            for tc in d.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = entry["id"] or tc.id
                entry["name"] += tc.function.name or ""
                entry["arguments"] += tc.function.arguments or ""
            finish = choice.finish_reason or finish
    return role, "".join(content), "".join(reasoning), finish, usage, [calls[i] for i in sorted(calls)]


def test_plain_chat_reports_deepseek_usage_and_sparse_figures(server, client):
    raw = client.chat.completions.with_raw_response.create(model="deepseek-chat", messages=USER, max_tokens=8,
                                                         temperature=0)   # a sampled EOS would end it early
    assert raw.headers["x-ds-trace-id"]
    r = raw.parse()
    assert r.object == "chat.completion" and r.model == "deepseek-chat"
    assert r.system_fingerprint.startswith("fp_deepseek-py-")
    m = r.choices[0].message
    assert m.role == "assistant" and isinstance(m.content, str)
    u = r.usage
    assert u.completion_tokens == 8 and r.choices[0].finish_reason == "length"
    assert u.prompt_cache_hit_tokens + u.prompt_cache_miss_tokens == u.prompt_tokens
    assert u.prompt_tokens_details.cached_tokens == u.prompt_cache_hit_tokens
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    sa = u.sparse_attention
    assert sa["mode"] == "sparse" and sa["index_topk"] == 64 and sa["context_tokens"] == u.total_tokens


def test_streamed_and_plain_answers_are_identical(client):
    long_prompt = [{"role": "system", "content": "You are a careful assistant. " * 8}] + USER
    kwargs = dict(model="deepseek-v3.2", messages=long_prompt, max_tokens=16, temperature=0)
    plain = client.chat.completions.create(**kwargs)
    role, content, _, finish, usage, _ = stream_text(client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}))
    assert role == "assistant" and content == plain.choices[0].message.content
    assert finish == plain.choices[0].finish_reason
    assert usage.completion_tokens == plain.usage.completion_tokens
    assert usage.prompt_cache_hit_tokens > 0       # the second identical prompt hits the prefix cache


def test_thinking_mode_streams_reasoning_first(client):
    kwargs = dict(model="deepseek-reasoner", messages=USER, max_tokens=12,
                  temperature=0)                 # greedy: a sampled EOS would end it early
    role, content, reasoning, finish, usage, _ = stream_text(client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}))
    assert role == "assistant" and reasoning and finish == "length"
    assert usage.completion_tokens_details.reasoning_tokens > 0
    plain = client.chat.completions.create(**kwargs, extra_body={"seed": 1})
    assert plain.choices[0].message.reasoning_content is not None


@pytest.mark.parametrize("how", [{"extra_body": {"thinking": {"type": "enabled"}}},
                                 {"extra_body": {"chat_template_kwargs": {"thinking": True}}}])
def test_thinking_switches_on_by_parameter(client, how):
    r = client.chat.completions.create(model="deepseek-chat", messages=USER, max_tokens=6, **how)
    assert r.choices[0].message.reasoning_content is not None


def test_dense_model_id_runs_dense_attention(client):
    r = client.chat.completions.create(model="deepseek-v3", messages=USER, max_tokens=4)
    assert r.usage.sparse_attention["mode"] == "dense" and r.usage.sparse_attention["index_topk"] is None


def test_tool_choice_none_and_auto_return_a_valid_message(client):
    for choice in ("none", "auto"):
        r = client.chat.completions.create(model="deepseek-chat", messages=USER, tools=[WEATHER, TIME],
                                           tool_choice=choice, max_tokens=10)
        assert r.choices[0].finish_reason in ("length", "stop", "tool_calls")
        if choice == "none":
            assert not r.choices[0].message.tool_calls


def test_tool_choice_required_forces_a_call(client):
    # One call (parallel_tool_calls=False): a random model may otherwise chain calls until max_tokens.
    r = client.chat.completions.create(model="deepseek-chat", messages=USER, tools=[WEATHER, TIME],
                                       tool_choice="required", max_tokens=300, temperature=0,
                                       parallel_tool_calls=False)
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and calls
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    for call in calls:
        assert call.id.startswith("call_") and call.function.name in schemas
        # Without strict the call still follows its function's schema, declared keys only (as vLLM's).
        schema, arguments = schemas[call.function.name], json.loads(call.function.arguments)
        jsonschema.validate(arguments, schema)
        assert set(arguments) <= set(schema["properties"])


def test_named_tool_choice_calls_that_function_streamed(client):
    stream = client.chat.completions.create(
        model="deepseek-chat", messages=USER, tools=[WEATHER, TIME], max_tokens=300, temperature=0, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    _, _, _, finish, _, calls = stream_text(stream)
    assert finish == "tool_calls" and [c["name"] for c in calls] == ["get_time"]
    json.loads(calls[0]["arguments"])


def test_strict_tools_give_schema_valid_arguments(server):
    strict = {"type": "function", "function": {**WEATHER["function"], "strict": True}}
    # A named choice makes one call; a random model under "required" may chain calls until max_tokens.
    r = server.beta().chat.completions.create(
        model="deepseek-chat", messages=USER, tools=[strict], max_tokens=300, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert r.choices[0].finish_reason == "tool_calls"
    call = r.choices[0].message.tool_calls[0]
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])


def test_json_object_mode_returns_json(client):
    parsed = 0
    for seed in range(4):
        r = client.chat.completions.create(model="deepseek-chat", messages=USER, max_tokens=400,
                                           response_format={"type": "json_object"}, extra_body={"seed": seed})
        if r.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(r.choices[0].message.content), dict)
            parsed += 1
    assert parsed >= 1


def test_chat_prefix_completion_continues_the_assistant_text(server):
    messages = USER + [{"role": "assistant", "content": "```python\n", "prefix": True}]
    r = server.beta().chat.completions.create(model="deepseek-chat", messages=messages, max_tokens=6,
                                              temperature=0)   # greedy: a sampled EOS would end it early
    assert r.choices[0].message.content is not None and r.usage.completion_tokens == 6


def test_fim_completion(server):
    beta = server.beta()
    r = beta.completions.create(model="deepseek-chat", prompt="def add(a, b):\n", suffix="    return c\n",
                                max_tokens=8, temperature=0)
    assert r.object == "text_completion" and isinstance(r.choices[0].text, str)
    assert r.usage.completion_tokens == 8
    chunks = list(beta.completions.create(model="deepseek-chat", prompt="x = ", max_tokens=4, stream=True,
                                          temperature=0))
    assert chunks[-1].choices[0].finish_reason == "length"


def test_models_and_balance(server, client):
    assert [m.id for m in client.models.list()] == ["deepseek-v3.2", "deepseek-chat", "deepseek-reasoner",
                                                    "deepseek-v3"]
    balance = httpx.get(server.url + "/user/balance").json()
    assert balance["is_available"] is True and balance["balance_infos"][0]["currency"] == "USD"


def test_health_and_metrics(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    metrics = server.metrics()
    assert metrics["deepseek_engine_healthy"] == 1.0 and "deepseek_requests_running" in metrics


def test_logprobs(client):
    r = client.chat.completions.create(model="deepseek-chat", messages=USER, max_tokens=3, logprobs=True,
                                       top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == 3 and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
