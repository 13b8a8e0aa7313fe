"""StreamParser: the same answers as parse_completion, however the completion is cut into deltas."""

from __future__ import annotations

import json

from dsv32_samples import (FRAGMENTS, chunked, completions, content_text, counting_ids,
                           reasoning_text, text, tool_calls)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepseek.chat import (ContentDelta, ParsedMessage, ReasoningDelta, StreamParser, ToolCall,
                           ToolCallArgumentsDelta, ToolCallStart, collect, encode_messages,
                           parse_completion)

EOS = "<｜end▁of▁sentence｜>"
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def stream(chunks, thinking, tools=None):
    parser = StreamParser(thinking, tools, new_id=counting_ids())
    events = [event for chunk in chunks for event in parser.feed(chunk)] + parser.finish()
    return collect(events, thinking, parser.error), events


def batch(whole, thinking, tools=None):
    return parse_completion(whole, thinking, tools, new_id=counting_ids())


def assert_agree(streamed: ParsedMessage, parsed: ParsedMessage):
    assert streamed.reasoning_content == parsed.reasoning_content
    assert streamed.content == parsed.content
    assert streamed.malformed == parsed.malformed
    assert streamed.tool_calls == parsed.tool_calls


@SETTINGS
@given(st.booleans(), st.data())
def test_any_chunking_of_a_completion_gives_what_the_batch_parser_gives(thinking, data):
    whole, reasoning, content, calls = data.draw(completions(thinking))
    expected = ParsedMessage(reasoning, content, [
        ToolCall(f"call_{i}", name, json.dumps(arguments, ensure_ascii=False))
        for i, (name, arguments) in enumerate(calls)])
    assert batch(whole, thinking) == expected
    streamed, _ = stream(data.draw(chunked(whole)), thinking)
    assert streamed == expected


@SETTINGS
@given(st.booleans(), st.data())
def test_any_truncation_streams_like_the_batch_parser(thinking, data):
    whole = data.draw(completions(thinking))[0]
    cut = whole[:data.draw(st.integers(0, len(whole)))]
    assert_agree(stream(data.draw(chunked(cut)), thinking)[0], batch(cut, thinking))


@SETTINGS
@given(st.booleans(), st.data())
def test_any_text_at_all_streams_like_the_batch_parser(thinking, data):
    whole = data.draw(st.lists(st.sampled_from(FRAGMENTS) | text, max_size=12).map("".join))
    assert_agree(stream(data.draw(chunked(whole)), thinking)[0], batch(whole, thinking))


@SETTINGS
@given(st.booleans(), reasoning_text, content_text | st.none(), tool_calls)
def test_an_encoded_assistant_turn_parses_back_to_itself(thinking, reasoning, content, calls):
    user = [{"role": "user", "content": "q"}]
    turn = {"role": "assistant", "reasoning_content": reasoning, "content": content,
            "tool_calls": [{"id": "x", "type": "function",
                            "function": {"name": name, "arguments": json.dumps(arguments)}}
                           for name, arguments in calls]}
    prompt, full = encode_messages(user, thinking), encode_messages(user + [turn], thinking)
    assert full.startswith(prompt) and full.endswith(EOS)
    parsed = batch(full[len(prompt):], thinking)
    assert parsed.reasoning_content == (reasoning if thinking else None)
    assert parsed.content == (content or "")
    assert [(call.name, json.loads(call.arguments)) for call in parsed.tool_calls] == \
        [(name, json.loads(json.dumps(arguments))) for name, arguments in calls]


def feed_all(parser, *chunks):
    return [parser.feed(chunk) for chunk in chunks] + [parser.finish()]


def test_partial_markers_are_held_back_until_they_resolve():
    parser = StreamParser(thinking=True)
    assert feed_all(parser, "abc</th", "ink>Hi\n", "\n<｜DS", "Mx", "<｜end▁of▁sen", "tence｜>after") == [
        [ReasoningDelta("abc")], [ContentDelta("Hi")], [], [ContentDelta("\n\n<｜DSMx")], [], [], []]
    assert parser.eos_seen


def test_held_back_text_is_released_at_the_end():
    parser = StreamParser(thinking=False)
    assert feed_all(parser, "a\n\n<") == [[ContentDelta("a")], [ContentDelta("\n\n<")]]
    assert not parser.eos_seen


def test_string_arguments_stream_as_they_arrive():
    parser = StreamParser(thinking=False, new_id=counting_ids())
    head = '\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name="search">\n' \
           '<｜DSML｜parameter name="q" string="true">'
    assert feed_all(parser, head, 'say "hi"', "</｜DSML｜para", "meter>\n</｜DSML｜invoke>\n",
                    "</｜DSML｜function_calls>", EOS) == [
        [ToolCallStart(0, "call_0", "search"), ToolCallArgumentsDelta(0, '{"q": "')],
        [ToolCallArgumentsDelta(0, 'say \\"hi\\"')], [], [ToolCallArgumentsDelta(0, '"}')], [], [], []]


def test_non_string_arguments_arrive_whole_once_their_value_closes():
    parser = StreamParser(thinking=False, new_id=counting_ids())
    head = '\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name="f">\n' \
           '<｜DSML｜parameter name="xs" string="false">'
    assert feed_all(parser, head, "[1,", "2]</｜DSML｜parameter>") == [
        [ToolCallStart(0, "call_0", "f")], [], [ToolCallArgumentsDelta(0, '{"xs": [1, 2]')],
        [ContentDelta(head + "[1,2]</｜DSML｜parameter>")]]  # cut off: the markup goes back as content
    assert parser.error


def test_the_schema_of_the_request_tools_applies_while_streaming_too():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "properties": {"n": {"type": "integer"}}}}}]
    whole = '\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name="f">\n' \
            '<｜DSML｜parameter name="n" string="true">7</｜DSML｜parameter>\n</｜DSML｜invoke>\n' \
            '</｜DSML｜function_calls>'
    streamed, _ = stream(list(whole), thinking=False, tools=tools)
    assert streamed == batch(whole, False, tools)
    assert streamed.tool_calls[0].arguments == '{"n": 7}'
