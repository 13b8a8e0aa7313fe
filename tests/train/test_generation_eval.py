"""Generation-based evaluation: the scorers on hand-written outputs, the metrics end to end.

A random tiny checkpoint answers noise, so the end-to-end tests only check that the metrics run
through the engine and that their counts agree; what "right" means is pinned by the scorers,
with an example's reference completion standing in for a perfect model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from deepseek.chat import encode_request, parse_completion
from deepseek.chat.dsml import render_tool_calls
from deepseek.engine.grammar import GrammarCompiler
from deepseek.engine.llm import LLM
from deepseek.engine.sampler import SamplingParams
from deepseek.tokenizer import BOS, DSML, EOS
from deepseek.train.generation_eval import (code_parse_rate, cut_function_body, generate_chat, json_accuracy,
                                            parses, prompt_ids, same_json, score_json, score_tool_call,
                                            tool_call_accuracy)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}


@dataclass(frozen=True)
class Example:
    """The shape of `deepseek.train.data.Example`, built by hand."""

    kind: str
    prompt: str
    completion: str
    messages: tuple
    tools: tuple | None
    thinking: bool
    expected: dict


def tool_example(city="Paris", days=3, thinking=False) -> Example:
    messages = ({"role": "user", "content": f"Weather in {city} for {days} days?"},)
    arguments = {"city": city, "days": days}
    reasoning = "The user wants the weather.</think>" if thinking else ""
    return Example("tool_call", encode_request(list(messages), [WEATHER], None, thinking),
                   reasoning + render_tool_calls([("get_weather", arguments)]) + EOS,
                   messages, (WEATHER,), thinking, {"name": "get_weather", "arguments": arguments})


def json_example(thinking=False) -> Example:
    messages = ({"role": "user", "content": "Give name and age as JSON."},)
    reasoning = "JSON it is.</think>" if thinking else ""
    return Example("json", encode_request(list(messages), None, None, thinking),
                   reasoning + '{"name": "Ada", "age": 36}' + EOS, messages, None, thinking,
                   {"keys": ["name", "age"]})


def reply(example: Example) -> str:
    """The reference completion as the engine would return it: EOS is never in the text."""
    return example.completion.removesuffix(EOS)


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    return LLM(tiny_checkpoint, dtype=torch.float32)


# ----- scoring tool calls -----

@pytest.mark.parametrize("thinking", [False, True])
def test_the_reference_completion_scores_exact(thinking):
    example = tool_example(thinking=thinking)
    assert score_tool_call(reply(example), example) == "exact"
    assert score_tool_call(example.completion, example) == "exact"   # a trailing EOS changes nothing


def test_a_wrong_argument_scores_right_function():
    example = tool_example(days=3)
    assert score_tool_call(reply(tool_example(days=4)), example) == "right_function"
    assert score_tool_call(reply(tool_example(city="Lyon")), example) == "right_function"


def test_numbers_compare_by_value_but_booleans_are_not_numbers():
    assert same_json({"a": [3, {"b": 1.5}]}, {"a": [3.0, {"b": 1.5}]})
    assert not same_json({"a": True}, {"a": 1})
    assert not same_json({"a": 1}, {"a": 1, "b": 2})
    assert not same_json("3", 3)
    example = tool_example(days=3)
    three = reply(example).replace('string="false">3<', 'string="false">3.0<')
    assert three != reply(example) and score_tool_call(three, example) == "exact"


def test_another_function_scores_wrong_function():
    example = tool_example()
    text = reply(example).replace('name="get_weather"', 'name="get_time"')
    assert score_tool_call(text, example) == "wrong_function"


def test_plain_content_scores_no_call():
    example = tool_example()
    assert score_tool_call("It is sunny in Paris.", example) == "no_call"
    assert score_tool_call("", example) == "no_call"


def test_reasoning_cut_off_before_think_close_scores_no_call():
    example = tool_example(thinking=True)
    assert score_tool_call("Let me think about the weather", example) == "no_call"


def test_truncated_dsml_scores_malformed():
    example = tool_example()
    text = reply(example)
    assert score_tool_call(text[: text.index("</" + DSML + "invoke>")], example) == "malformed"
    assert score_tool_call(text[: len(text) // 2], example) == "malformed"


def test_two_calls_are_not_exact():
    example = tool_example()
    calls = [("get_weather", example.expected["arguments"])] * 2
    assert score_tool_call(render_tool_calls(calls), example) == "multiple_calls"


# ----- scoring JSON -----

def test_json_with_every_key_is_keys_present():
    assert score_json('{"name": "Ada", "age": 36}', ["name", "age"]) == "keys_present"
    assert score_json('\n{"name": "Ada", "age": 36, "extra": 1} ', ["name", "age"]) == "keys_present"


def test_json_with_a_missing_key_is_missing_keys():
    assert score_json('{"name": "Ada"}', ["name", "age"]) == "missing_keys"


@pytest.mark.parametrize("text", ['["name", "age"]', '"name"', '{"name": "Ada", "ag', "", "name: Ada"])
def test_json_that_is_not_an_object_is_not_object(text):
    assert score_json(text, ["name"]) == "not_object"


# ----- cutting function bodies -----

def test_the_body_ends_at_the_first_line_back_at_the_def_indent():
    header = "import os\n\n\ndef area(w, h):\n"
    completion = "    a = w * h\n\n    return a\n\ndef other():\n    pass\n"
    function = cut_function_body(header, completion)
    assert function == "def area(w, h):\n    a = w * h\n\n    return a\n\n"
    assert parses(function)


def test_a_body_that_never_dedents_is_all_body():
    header = "def f(x):\n"
    completion = "    if x:\n        return 1\n    return"
    assert cut_function_body(header, completion) == header + completion
    assert parses(cut_function_body(header, completion))
    assert not parses(cut_function_body(header, "    return (x +"))   # cut off by max_tokens


def test_a_method_keeps_its_decorators_and_ends_at_class_level():
    header = "class A:\n    x = 1\n\n    @staticmethod\n    @cache\n    def f(y) -> int:\n"
    completion = "        return y\n    def g(self):\n        pass\n"
    function = cut_function_body(header, completion)
    assert function == "    @staticmethod\n    @cache\n    def f(y) -> int:\n        return y\n"
    assert parses(function)


def test_a_multi_line_signature_is_kept_whole():
    header = "def f(\n    a,\n    b,\n):\n"
    assert cut_function_body(header, "    return a + b\nx = 1\n") == header + "    return a + b\n"


def test_an_empty_body_does_not_parse():
    function = cut_function_body("def f():\n", "x = 1\n")
    assert function == "def f():\n" and not parses(function)


def test_a_header_without_def_is_refused():
    with pytest.raises(ValueError):
        cut_function_body("x = 1\n", "    pass\n")


# ----- prompts and generation -----

def test_chat_prompts_encode_specials_to_their_ids_with_one_bos(llm):
    tokenizer = llm.engine.tokenizer
    example = tool_example()
    ids = prompt_ids(llm, example.prompt)
    assert ids[0] == tokenizer.token_to_id(BOS) and ids.count(ids[0]) == 1
    assert tokenizer.token_to_id(DSML) in ids and tokenizer.token_to_id("<｜Assistant｜>") in ids
    assert tokenizer.decode(list(ids), skip_special_tokens=False) == example.prompt
    with pytest.raises(ValueError):
        prompt_ids(llm, example.prompt.removeprefix(BOS))


def test_tool_call_accuracy_counts_agree(llm):
    examples = [tool_example(), tool_example("Lyon", 2), tool_example(thinking=True)]
    for constrained in (True, False):
        report = tool_call_accuracy(llm, examples, max_tokens=12, constrained=constrained)
        assert report["n"] == 3 and sum(report["outcomes"].values()) == 3 and report["constrained"] is constrained
        assert 0 <= report["exact"] <= report["right_function"] <= report["n"]
        assert report["exact"] + report["no_call"] + report["malformed"] <= report["n"]
        assert report["rate"] == report["exact"] / 3
        assert len(report["samples"]) == 3 - report["exact"]


def test_json_accuracy_counts_agree_constrained_or_not(llm):
    examples = [json_example(), json_example(thinking=True)]
    for constrained in (True, False):
        report = json_accuracy(llm, examples, max_tokens=12, constrained=constrained)
        assert 0 <= report["keys_present"] <= report["parsed"] <= report["n"] == 2
        assert report["rate"] == report["keys_present"] / 2


def test_constrained_answers_are_json_from_the_first_token(llm):
    config = llm.engine.model.config
    grammar = GrammarCompiler(llm.engine.tokenizer, config.vocab_size, config.eos_token_id).json_object()
    outputs = generate_chat(llm, [json_example(), json_example()], SamplingParams(temperature=0, max_tokens=40),
                            grammars=[grammar, grammar])
    assert outputs[0].text == outputs[1].text   # greedy
    assert outputs[0].text.startswith("{")
    if outputs[0].finish_reason == "stop":
        assert isinstance(json.loads(outputs[0].text), dict)


def test_greedy_batch_matches_the_offline_api(llm):
    example = tool_example()
    params = SamplingParams(temperature=0, max_tokens=8)
    (batched,) = generate_chat(llm, [example], params)
    (alone,) = llm.generate(prompt_ids(llm, example.prompt), params)
    assert batched.token_ids == alone.token_ids and batched.text == alone.text


def test_a_prompt_too_long_for_the_model_queues_nothing(llm):
    messages = [{"role": "user", "content": "word " * 4000}]
    too_long = Example("json", encode_request(messages), "{}" + EOS, tuple(messages), None, False, {"keys": []})
    with pytest.raises(ValueError, match="context"):
        generate_chat(llm, [json_example(), too_long], SamplingParams(temperature=0, max_tokens=4))
    assert not llm.engine.has_unfinished()


def test_code_parse_rate_counts_agree(llm):
    headers = ["def add(a, b):\n", "import math\n\n\ndef norm(v):\n"]
    report = code_parse_rate(llm, headers, max_tokens=16)
    assert report["n"] == 2 and 0 <= report["parsed"] <= 2
    assert report["rate"] == report["parsed"] / 2
    assert all(s["function"].lstrip().startswith("def ") for s in report["samples"])


# ----- against the data module, once it exists -----

def test_reference_completions_of_generated_examples_score_perfectly():
    data = pytest.importorskip("deepseek.train.data")
    for e in data.examples("tool_call", 20, "heldout", 0):
        assert score_tool_call(e.completion, e) == "exact", e.completion
    for e in data.examples("json", 20, "heldout", 0):
        answer = parse_completion(e.completion, e.thinking).content
        assert score_json(answer, e.expected["keys"]) == "keys_present", e.completion


def test_function_headers_take_a_body():
    data = pytest.importorskip("deepseek.train.data")
    for header in data.function_headers("heldout", 5, 0):
        assert parses(cut_function_body(header, "    return None\n"))
