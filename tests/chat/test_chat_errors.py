"""Conversations the V3.2 format cannot express are refused with ChatFormatError (HTTP 400)."""

from __future__ import annotations

import pytest

from deepseek.chat import ChatFormatError, encode_fim, encode_messages, encode_request


def call(name="f", arguments="{}"):
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}


USER = {"role": "user", "content": "q"}
ONE_CALL = {"role": "assistant", "content": "", "reasoning_content": "r", "tool_calls": [call()]}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "ok"}


def refused(messages, thinking=False, match=""):
    with pytest.raises(ChatFormatError, match=match):
        encode_messages(messages, thinking=thinking)


def test_chat_format_error_is_a_value_error():
    assert issubclass(ChatFormatError, ValueError)


def test_tool_message_right_after_a_user_message():
    refused([USER, RESULT], match=r"messages\[1\] \(tool\): a tool message must follow an assistant")


def test_tool_message_after_an_assistant_without_tool_calls():
    refused([USER, {"role": "assistant", "content": "hi"}, RESULT],
            match=r"messages\[2\] \(tool\): more tool results than the 0 tool calls")


def test_more_tool_results_than_tool_calls():
    refused([USER, ONE_CALL, RESULT, RESULT], match=r"messages\[3\] \(tool\): more tool results")


def test_fewer_tool_results_than_tool_calls():
    two_calls = {**ONE_CALL, "tool_calls": [call(), call()]}
    refused([USER, two_calls, RESULT, USER], match=r"made 2 tool calls but 1 tool results follow")
    refused([USER, two_calls, RESULT], match=r"made 2 tool calls but 1 tool results follow")


def test_assistant_may_end_the_conversation_with_unanswered_tool_calls():
    assert encode_messages([USER, ONE_CALL], thinking=False).endswith("<｜end▁of▁sentence｜>")


def test_unknown_role():
    refused([{"role": "moderator", "content": "x"}], match=r"messages\[0\]: unknown role 'moderator'")


def test_thinking_tool_call_turn_without_reasoning_content():
    no_reasoning = {"role": "assistant", "content": None, "tool_calls": [call()]}
    refused([USER, no_reasoning, RESULT], thinking=True,
            match=r"messages\[1\] \(assistant\): in thinking mode .* must carry its reasoning_content")
    assert encode_messages([USER, no_reasoning, RESULT], thinking=False)


def test_reasoning_is_not_required_before_the_last_user_message():
    no_reasoning = {"role": "assistant", "content": None, "tool_calls": [call()]}
    assert encode_messages([USER, no_reasoning, RESULT, USER], thinking=True)


@pytest.mark.parametrize("message", [
    {"role": "user", "content": None},
    {"role": "user", "content": 42},
    {"role": "system", "content": {"text": "x"}},
    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
    {"role": "assistant", "content": ["raw string part"]},
])
def test_content_that_is_neither_a_string_nor_text_parts(message):
    refused([message], match=r"messages\[0\] \(\w+\): content must be a string or a list of text parts")


def test_tool_result_content_must_be_text():
    refused([USER, ONE_CALL, {"role": "tool", "content": None}], match=r"messages\[2\] \(tool\): content")


def test_developer_message_without_content():
    refused([{"role": "developer", "content": ""}], match="a developer message needs content")


@pytest.mark.parametrize("arguments, problem", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
])
def test_tool_call_arguments_must_be_a_json_object(arguments, problem):
    refused([USER, {"role": "assistant", "content": "", "tool_calls": [call(arguments=arguments)]}],
            match=rf"messages\[1\] \(assistant\): tool_calls\[0\].function.arguments {problem}")


def test_tool_call_without_a_function_name():
    refused([USER, {"role": "assistant", "content": "", "tool_calls": [{"function": {}}]}],
            match=r"tool_calls\[0\] needs a function with a string name")


def test_prefix_only_on_the_last_message():
    refused([USER, {"role": "assistant", "content": "a", "prefix": True}, USER],
            match="prefix is only allowed on the last message")


def test_prefix_message_cannot_carry_tool_calls():
    refused([USER, {**ONE_CALL, "prefix": True}], match="a prefix message cannot carry tool_calls")


def test_reasoning_content_must_be_a_string():
    refused([USER, {"role": "assistant", "content": "a", "reasoning_content": ["r"]}],
            match="reasoning_content must be a string")


def test_request_tools_must_be_functions_with_names():
    with pytest.raises(ChatFormatError, match=r"^tools\[0\] must be"):
        encode_request([USER], tools=[{"type": "function"}])
    with pytest.raises(ChatFormatError, match=r"messages\[0\] \(system\): tools\[0\] must be"):
        encode_messages([{"role": "system", "content": "", "tools": ["f"]}], thinking=False)


def test_request_errors_count_messages_as_the_caller_sent_them():
    with pytest.raises(ChatFormatError, match=r"messages\[0\] \(tool\)"):
        encode_request([RESULT], tools=[{"type": "function", "function": {"name": "f"}}])


def test_fim_needs_string_prompt():
    with pytest.raises(ChatFormatError):
        encode_fim(None, "x")
