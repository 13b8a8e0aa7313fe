"""Each validation rule of the contract yields its status and DeepSeek's error shape (api.md A2, A9)."""

from __future__ import annotations

import httpx
import pytest

OK = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


def post(server, body=None, path="/chat/completions", **kwargs):
    return httpx.post(server.url + path, json=body, timeout=60, **kwargs)


def assert_error(response, status, words=""):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and words.lower() in error["message"].lower()
    assert response.headers["x-ds-trace-id"]


@pytest.mark.parametrize("change, status, words", [
    ({"temperature": 2.5}, 422, "temperature"),
    ({"temperature": -0.1}, 422, "temperature"),
    ({"top_p": 0}, 422, "top_p"),
    ({"top_p": 1.5}, 422, "top_p"),
    ({"frequency_penalty": 2.1}, 422, "frequency_penalty"),
    ({"presence_penalty": -3}, 422, "presence_penalty"),
    ({"stop": ["x"] * 17}, 422, "stop"),
    ({"tools": [TOOL] * 129}, 422, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, 422, "name"),
    ({"logprobs": True, "top_logprobs": 21}, 422, "top_logprobs"),
    ({"top_logprobs": 3}, 422, "logprobs"),
    ({"max_tokens": 0}, 422, "max_tokens"),
    ({"max_tokens": 8193}, 422, "max_tokens"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, 422,
     "json_schema"),
    ({"n": 2}, 422, "n"),
    ({"model": "gpt-4"}, 400, "model not exist"),
    ({"messages": []}, 422, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ({"messages": "hi"}, 400, "messages"),
    ({"temperature": "hot"}, 400, "temperature"),
    ({"stream_options": {"include_usage": True}}, 400, "stream_options"),
    ({"model": "deepseek-reasoner", "logprobs": True}, 400, "thinking"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "prefix": True}]},
     400, "beta"),
    ({"tools": [{"type": "function", "function": {**TOOL["function"], "strict": True}}]}, 400, "beta"),
    ({"tool_choice": "required"}, 400, "tools"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}}, 400, "'g'"),
    ({"messages": [{"role": "user", "content": "x " * 3000}]}, 400, "context"),
])
def test_invalid_chat_requests(server, change, status, words):
    assert_error(post(server, {**OK, **change}), status, words)


def test_thinking_tool_turn_without_reasoning_content_is_400(server):
    messages = [{"role": "user", "content": "weather?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    r = post(server, {**OK, "model": "deepseek-reasoner", "messages": messages, "tools": [TOOL]})
    assert_error(r, 400, "reasoning_content")


def test_strict_schema_rules_are_enforced(server):
    loose = {"type": "function", "function": {"name": "f", "strict": True, "parameters": {
        "type": "object", "properties": {"a": {"type": "string"}}, "required": []}}}
    assert_error(post(server, {**OK, "tools": [loose]}, "/beta/chat/completions"), 400, "required")
    mixed = [{"type": "function", "function": {"name": "f", "strict": True, "parameters": {
        "type": "object", "properties": {}, "required": [], "additionalProperties": False}}}, TOOL]
    assert_error(post(server, {**OK, "tools": mixed}, "/beta/chat/completions"), 400, "mixed")


def test_malformed_json_and_non_object_bodies_are_400(server):
    r = httpx.post(server.url + "/chat/completions", content=b'{"model": ', timeout=30,
                   headers={"content-type": "application/json"})
    assert_error(r, 400, "malformed json")
    assert_error(post(server, [1, 2, 3]), 400)
    r = httpx.post(server.url + "/chat/completions", content=b"", timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_fim_rules(server):
    base = {"model": "deepseek-chat", "prompt": "def f():", "max_tokens": 2}
    assert_error(post(server, {**base, "model": "deepseek-reasoner"}, "/beta/completions"), 400, "thinking")
    assert_error(post(server, {**base, "max_tokens": 5000}, "/beta/completions"), 422, "max_tokens")
    assert_error(post(server, {**base, "logprobs": 21}, "/beta/completions"), 422, "logprobs")
    assert post(server, base, "/beta/completions").status_code == 200


def test_unknown_route_and_method_keep_the_error_shape(server):
    assert_error(httpx.get(server.url + "/nope", timeout=10), 404)
    assert_error(httpx.get(server.url + "/chat/completions", timeout=10), 405)


def test_a_valid_request_still_works_after_all_that(server):
    assert post(server, OK).status_code == 200
