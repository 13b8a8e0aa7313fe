"""The V3.2 prompt encoder against prompts written out by hand from spec §14.1 and §14.3."""

from __future__ import annotations

import pytest

from deepseek.chat import TOOLS_BLOCK, encode_fim, encode_messages, encode_request, render_tools
from deepseek.chat.encoding import continues_in_reasoning
from deepseek.tokenizer import SPECIAL_TOKENS

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather forecast for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "days": {"type": "integer"}},
                   "required": ["city"]}}}

# Spec §14.3, copied by hand; only the <functions> line is ours.
WEATHER_TOOLS_BLOCK = """## Tools

You have access to a set of tools you can use to answer the user's question.
You can invoke functions by writing a "<｜DSML｜function_calls>" block like the following as part of your reply to the user:
<｜DSML｜function_calls>
<｜DSML｜invoke name="$FUNCTION_NAME">
<｜DSML｜parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</｜DSML｜parameter>
...
</｜DSML｜invoke>
<｜DSML｜invoke name="$FUNCTION_NAME2">
...
</｜DSML｜invoke>
</｜DSML｜function_calls>

String and scalar parameters should be specified as is without any escaping or quotes, while lists and objects should use JSON format. The "string" attribute should be set to "true" for string type parameters and "false" for other types (numbers, booleans, arrays, objects).

If the thinking_mode is enabled, then after function results you should strongly consider outputting a thinking block. Here is an example:

<｜DSML｜function_calls>
...
</｜DSML｜function_calls>

<function_results>
...
</function_results>

<think>...thinking about results</think>

Here are the functions available in JSONSchema format:
<functions>
{"name": "get_weather", "description": "Weather forecast for a city.", "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}
</functions>
"""


def call(name, arguments):
    return {"id": "call_x", "type": "function", "function": {"name": name, "arguments": arguments}}


AGENT_CONVERSATION = [
    {"role": "system", "content": "You are a helpful Assistant.", "tools": [WEATHER]},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "reasoning_content": "Need the tool.", "content": "",
     "tool_calls": [call("get_weather", '{"city": "Paris", "days": 2}')]},
    {"role": "tool", "tool_call_id": "call_x", "content": "Sunny, 21°C"},
    {"role": "assistant", "reasoning_content": "Got it.", "content": "Paris: sunny, 21°C."},
    {"role": "user", "content": "And Berlin and Rome?"},
    {"role": "assistant", "reasoning_content": "Two cities, two calls.", "content": None,
     "tool_calls": [call("get_weather", '{"city": "Berlin", "days": 1}'),
                    call("get_weather", '{"city": "Rome", "days": 1}')]},
    {"role": "tool", "tool_call_id": "call_x", "content": "Cloudy, 15°C"},
    {"role": "tool", "tool_call_id": "call_x", "content": "Sunny, 25°C"},
]

# Written by hand: the first episode's reasoning is gone and its turns end in </think>; the
# current episode keeps its reasoning and the prompt ends in <think> after the two results.
AGENT_PROMPT = (
    "<｜begin▁of▁sentence｜>You are a helpful Assistant.\n\n" + WEATHER_TOOLS_BLOCK
    + "<｜User｜>Weather in Paris?<｜Assistant｜></think>"
    "\n\n<｜DSML｜function_calls>\n"
    '<｜DSML｜invoke name="get_weather">\n'
    '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n'
    '<｜DSML｜parameter name="days" string="false">2</｜DSML｜parameter>\n'
    "</｜DSML｜invoke>\n"
    "</｜DSML｜function_calls><｜end▁of▁sentence｜>"
    "\n\n<function_results>\n<result>Sunny, 21°C</result>\n</function_results>\n\n</think>"
    "Paris: sunny, 21°C.<｜end▁of▁sentence｜>"
    "<｜User｜>And Berlin and Rome?<｜Assistant｜><think>"
    "Two cities, two calls.</think>"
    "\n\n<｜DSML｜function_calls>\n"
    '<｜DSML｜invoke name="get_weather">\n'
    '<｜DSML｜parameter name="city" string="true">Berlin</｜DSML｜parameter>\n'
    '<｜DSML｜parameter name="days" string="false">1</｜DSML｜parameter>\n'
    "</｜DSML｜invoke>\n"
    '<｜DSML｜invoke name="get_weather">\n'
    '<｜DSML｜parameter name="city" string="true">Rome</｜DSML｜parameter>\n'
    '<｜DSML｜parameter name="days" string="false">1</｜DSML｜parameter>\n'
    "</｜DSML｜invoke>\n"
    "</｜DSML｜function_calls><｜end▁of▁sentence｜>"
    "\n\n<function_results>\n<result>Cloudy, 15°C</result>\n<result>Sunny, 25°C</result>\n"
    "</function_results>\n\n<think>"
)


def test_agentic_thinking_conversation_matches_the_hand_derived_prompt():
    assert encode_messages(AGENT_CONVERSATION, thinking=True) == AGENT_PROMPT


def test_tools_block_is_spec_14_3_byte_for_byte():
    assert render_tools([WEATHER]) == WEATHER_TOOLS_BLOCK


def test_tools_block_lists_one_function_per_line():
    other = {"type": "function", "function": {"name": "now", "description": "Time.", "parameters": {}}}
    functions = WEATHER_TOOLS_BLOCK.split("<functions>\n")[1].replace("</functions>\n", "")
    assert render_tools([WEATHER, other]) == TOOLS_BLOCK.replace(
        "{functions}", functions + '{"name": "now", "description": "Time.", "parameters": {}}')


def test_tool_schema_keeps_only_name_description_parameters_in_that_order():
    shuffled = {"type": "function", "function": {"strict": True, "parameters": {}, "name": "f",
                                                 "description": "d"}}
    assert '\n{"name": "f", "description": "d", "parameters": {}}\n</functions>\n' in render_tools([shuffled])


def test_request_tools_join_the_callers_system_message():
    messages = [{key: value for key, value in m.items() if key != "tools"} for m in AGENT_CONVERSATION]
    assert encode_request(messages, tools=[WEATHER], thinking=True) == AGENT_PROMPT


def test_request_tools_without_a_system_message_get_an_empty_one():
    prompt = encode_request([{"role": "user", "content": "hi"}], tools=[WEATHER])
    assert prompt == ("<｜begin▁of▁sentence｜>\n\n" + WEATHER_TOOLS_BLOCK
                      + "<｜User｜>hi<｜Assistant｜></think>")


def test_response_format_schema_follows_the_tools():
    prompt = encode_request([{"role": "system", "content": "S"}, {"role": "user", "content": "u"}],
                            tools=[WEATHER], response_format_schema={"type": "object"})
    assert prompt.endswith("</functions>\n\n\n## Response Format:\n\nYou MUST strictly adhere to the "
                           'following schema to reply:\n{"type": "object"}<｜User｜>u<｜Assistant｜></think>')


def test_chat_mode_closes_thinking_after_every_turn_and_shows_no_reasoning():
    messages = [{"role": "user", "content": "1+1?"},
                {"role": "assistant", "content": "2", "reasoning_content": "easy"},
                {"role": "user", "content": [{"type": "text", "text": "and"},
                                             {"type": "text", "text": "2+2?"}]}]
    assert encode_messages(messages, thinking=False) == (
        "<｜begin▁of▁sentence｜><｜User｜>1+1?<｜Assistant｜></think>2<｜end▁of▁sentence｜>"
        "<｜User｜>and\n2+2?<｜Assistant｜></think>")


def test_thinking_mode_drops_earlier_reasoning_like_deepseeks_readme_example():
    messages = [{"role": "user", "content": "hello"},
                {"role": "assistant", "content": "Hello! I am DeepSeek.", "reasoning_content": "thinking..."},
                {"role": "user", "content": "1+1=?"}]
    assert encode_messages(messages, thinking=True) == (
        "<｜begin▁of▁sentence｜><｜User｜>hello<｜Assistant｜></think>Hello! I am DeepSeek."
        "<｜end▁of▁sentence｜><｜User｜>1+1=?<｜Assistant｜><think>")


def test_keeping_thinking_renders_every_turn_as_it_was_generated():
    messages = [{"role": "user", "content": "hello"},
                {"role": "assistant", "content": "Hi.", "reasoning_content": "greet"},
                {"role": "user", "content": "bye"}]
    assert encode_messages(messages, thinking=True, drop_thinking=False) == (
        "<｜begin▁of▁sentence｜><｜User｜>hello<｜Assistant｜><think>greet</think>Hi."
        "<｜end▁of▁sentence｜><｜User｜>bye<｜Assistant｜><think>")


def test_developer_message_carries_tools_before_the_users_words():
    messages = [{"role": "developer", "content": "find it", "tools": [WEATHER]}]
    assert encode_messages(messages, thinking=True) == (
        "<｜begin▁of▁sentence｜><｜User｜>\n\n" + WEATHER_TOOLS_BLOCK
        + "\n\n# The user's message is: find it<｜Assistant｜><think>")


def test_context_is_not_rendered_again_but_decides_the_last_user_turn():
    context = [{"role": "user", "content": "q"}]
    step = [{"role": "assistant", "content": "", "reasoning_content": "r",
             "tool_calls": [call("f", "{}")]},
            {"role": "tool", "content": "ok"}]
    assert encode_messages(step, thinking=True, context=context) == (
        "r</think>\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"f\">\n\n</｜DSML｜invoke>\n"
        "</｜DSML｜function_calls><｜end▁of▁sentence｜>"
        "\n\n<function_results>\n<result>ok</result>\n</function_results>\n\n<think>")
    full = encode_messages(context + step, thinking=True)
    assert full == encode_messages(context, thinking=True) + encode_messages(step, True, context)


def test_non_string_arguments_are_compact_json_and_strings_are_raw():
    messages = [{"role": "user", "content": "u"},
                {"role": "assistant", "content": "c", "tool_calls": [call("f", {
                    "s": 'a "quoted" <tag>', "n": 1.5, "b": True, "l": [1, "x"], "d": {"k": None},
                    "u": "é"})]}]
    assert encode_messages(messages, thinking=False).endswith(
        "c\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"f\">\n"
        '<｜DSML｜parameter name="s" string="true">a "quoted" <tag></｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="n" string="false">1.5</｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="b" string="false">true</｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="l" string="false">[1, "x"]</｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="d" string="false">{"k": null}</｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="u" string="true">é</｜DSML｜parameter>\n'
        "</｜DSML｜invoke>\n</｜DSML｜function_calls><｜end▁of▁sentence｜>")


@pytest.mark.parametrize("thinking, prefix, expected_tail, continues_reasoning", [
    (False, {"content": "```python\n"}, "</think>```python\n", False),
    (True, {"content": "", "reasoning_content": "Let me"}, "<think>Let me", True),
    (True, {"content": "Answer:", "reasoning_content": "done"}, "<think>done</think>Answer:", False),
])
def test_prefix_assistant_is_left_open_for_the_model_to_continue(thinking, prefix, expected_tail,
                                                                 continues_reasoning):
    user = [{"role": "user", "content": "q"}]
    as_argument = encode_request(user, thinking=thinking, prefix_assistant=prefix)
    as_message = encode_request(user + [{"role": "assistant", "prefix": True, **prefix}], thinking=thinking)
    assert as_argument == as_message == "<｜begin▁of▁sentence｜><｜User｜>q<｜Assistant｜>" + expected_tail
    assert continues_in_reasoning(prefix, thinking) is continues_reasoning


def test_fim_prompt_puts_the_hole_between_prompt_and_suffix():
    assert encode_fim("def f(", "):\n    pass") == (
        "<｜begin▁of▁sentence｜><｜fim▁begin｜>def f(<｜fim▁hole｜>):\n    pass<｜fim▁end｜>")
    assert encode_fim("x = ", None).endswith("<｜fim▁hole｜><｜fim▁end｜>")
    assert {"<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"} <= set(SPECIAL_TOKENS)


def test_encoding_leaves_the_callers_messages_untouched():
    messages = [{"role": "user", "content": "hi"}]
    encode_request(messages, tools=[WEATHER], prefix_assistant={"content": "x"})
    assert messages == [{"role": "user", "content": "hi"}]
