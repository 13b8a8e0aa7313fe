"""parse_completion: how a finished V3.2 completion splits into reasoning, content and tool calls."""

from __future__ import annotations

import re

import pytest

from deepseek.chat import ParsedMessage, ToolCall, new_call_id, parse_completion

EOS = "<｜end▁of▁sentence｜>"


def invoke(name, *params):
    body = "\n".join(f'<｜DSML｜parameter name="{k}" string="{s}">{v}</｜DSML｜parameter>'
                     for k, s, v in params)
    return f'<｜DSML｜invoke name="{name}">\n{body}\n</｜DSML｜invoke>'


def block(*invokes):
    return "\n\n<｜DSML｜function_calls>\n" + "\n".join(invokes) + "\n</｜DSML｜function_calls>"


def parse(text, thinking=False, tools=None):
    ids = iter(f"call_{i}" for i in range(10))
    return parse_completion(text, thinking, tools, new_id=lambda: next(ids))


def test_thinking_mode_splits_reasoning_at_think_close_and_content_at_eos():
    assert parse("Let me see.</think>It is 4." + EOS + "ignored", thinking=True) == \
        ParsedMessage("Let me see.", "It is 4.", [])


def test_chat_mode_has_no_reasoning_and_keeps_think_tags_as_content():
    assert parse("a</think>b", thinking=False) == ParsedMessage(None, "a</think>b", [])


def test_completion_cut_off_while_reasoning_is_all_reasoning():
    assert parse("still thinking <｜DS", thinking=True) == ParsedMessage("still thinking <｜DS", "")


def test_tool_calls_become_openai_tool_calls_with_json_arguments_in_parameter_order():
    text = "Checking." + block(invoke("get_weather", ("city", "true", 'Paris "FR"\n'),
                                      ("days", "false", "2")),
                               invoke("now")) + EOS
    assert parse(text) == ParsedMessage(None, "Checking.", [
        ToolCall("call_0", "get_weather", '{"city": "Paris \\"FR\\"\\n", "days": 2}'),
        ToolCall("call_1", "now", "{}")])


def test_non_string_values_are_reserialised_as_json_dumps_would():
    text = block(invoke("f", ("l", "false", '[1,"é"]'), ("d", "false", '{"a":true}'),
                        ("x", "false", "1.50")))
    assert parse(text).tool_calls[0].arguments == '{"l": [1, "é"], "d": {"a": true}, "x": 1.5}'


@pytest.mark.parametrize("raw", ["Paris", "NaN", "1e400", "[1,"])
def test_non_string_value_that_is_not_json_becomes_a_string(raw):
    assert parse(block(invoke("f", ("v", "false", raw)))).tool_calls[0].arguments == f'{{"v": "{raw}"}}'


SCHEMA = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
    "n": {"type": "integer"}, "s": {"type": "string"}, "o": {"type": "object"}}}}}]


@pytest.mark.parametrize("param, arguments", [
    (("n", "true", "3"), '{"n": 3}'),              # the schema says integer: the attribute was wrong
    (("n", "true", "three"), '{"n": "three"}'),    # ...but a non-integer stays the string it was
    (("n", "true", "3.5"), '{"n": "3.5"}'),
    (("s", "false", "42"), '{"s": "42"}'),         # the schema says string
    (("o", "true", '{"a": 1}'), '{"o": {"a": 1}}'),
])
def test_declared_parameter_types_override_a_wrong_string_attribute(param, arguments):
    assert parse(block(invoke("f", param)), tools=SCHEMA).tool_calls[0].arguments == arguments


def test_without_a_declared_type_the_string_attribute_decides():
    assert parse(block(invoke("g", ("n", "true", "3"))), tools=SCHEMA).tool_calls[0].arguments == '{"n": "3"}'
    assert parse(block(invoke("f", ("n", "true", "3")))).tool_calls[0].arguments == '{"n": "3"}'


def test_markup_without_the_blank_line_is_content():
    text = "x<｜DSML｜function_calls>\n" + invoke("f") + "\n</｜DSML｜function_calls>"
    assert parse(text) == ParsedMessage(None, text, [])


def test_whitespace_between_tags_is_lenient():
    text = "\n\n<｜DSML｜function_calls>\n\n  <｜DSML｜invoke name=\"f\"> \n" \
           "<｜DSML｜parameter name=\"a\" string=\"false\">1</｜DSML｜parameter>\r\n" \
           "</｜DSML｜invoke></｜DSML｜function_calls>\n"
    assert parse(text).tool_calls == [ToolCall("call_0", "f", '{"a": 1}')]


@pytest.mark.parametrize("bad_block", [
    block(invoke("f", ("a", "true", "cut"))).split("cut")[0] + "cu",   # max_tokens mid-value
    block(invoke("f"))[:-5],                                              # close tag cut short
    block(invoke("f")) + "and more",                                      # text after the block
    block(invoke("f", ("a", "true", "1"), ("a", "true", "2"))),           # a parameter twice
    block(invoke("f", ("a", "maybe", "1"))),                              # bad string attribute
    block(invoke("")),                                                    # no function name
    block().replace("function_calls>\n\n", "function_calls>\n"),          # no invoke at all
    "\n\n<｜DSML｜function_calls " + invoke("f"),                         # opener not closed
])
def test_malformed_markup_falls_back_to_content_and_says_why(bad_block):
    parsed = parse("r</think>Sure." + bad_block + EOS, thinking=True)
    assert parsed.reasoning_content == "r"
    assert parsed.content == "Sure." + bad_block
    assert parsed.tool_calls == [] and parsed.malformed and parsed.error


def test_default_ids_look_like_deepseeks():
    assert re.fullmatch(r"call_[A-Za-z0-9]{24}", new_call_id())
    parsed = parse_completion(block(invoke("f")), thinking=False)
    assert re.fullmatch(r"call_[A-Za-z0-9]{24}", parsed.tool_calls[0].id)
    assert parsed.tool_calls[0].to_openai() == {"id": parsed.tool_calls[0].id, "type": "function",
                                                "function": {"name": "f", "arguments": "{}"}}
