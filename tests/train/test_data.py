"""The nano model's data: rendered by our own encoder, parsed back by our own parser, deterministic,
and with a held-out split that shares no tool schema, phrasing or stdlib file with training."""

from __future__ import annotations

import ast
import functools
import json
import random
import re
import textwrap
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from deepseek.chat import encode_messages, parse_completion
from deepseek.tokenizer import ASSISTANT, BOS, EOS, THINK_CLOSE, THINK_OPEN
from deepseek.train import conversations, data
from deepseek.train.synthetic import PARAMS, VERBS, made_up_value, split_of, text, tools

N = 500  # per kind and split


@pytest.fixture(scope="module")
def generated() -> dict[tuple[str, str], list[data.Example]]:
    """Examples by (kind, split); "made_up": training examples that all use made-up names."""
    out = {(kind, split): data.examples(kind, N, split, seed=7) for kind in data.KINDS for split in data.SPLITS}
    return out | {(kind, "made_up"): data.examples(kind, N, "train", seed=7, invented=1.0) for kind in data.INVENTIVE}


def every(generated, kinds=data.KINDS, splits=data.SPLITS + ("made_up",)):
    return [e for kind in kinds for split in splits if (kind, split) in generated for e in generated[kind, split]]


def with_tools_on_system(example: data.Example) -> list[dict]:
    """The request as encode_messages takes it: tools on the (possibly added, empty) system message."""
    messages = [dict(m) for m in example.messages]
    if example.tools:
        if messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": ""})
        messages[0]["tools"] = list(example.tools)
    return messages


def reply_of(example: data.Example) -> dict:
    if example.kind == "tool_call":
        call = {"id": "call_x", "type": "function", "function": {
            "name": example.expected["name"], "arguments": json.dumps(example.expected["arguments"])}}
        return {"role": "assistant", "content": "", "tool_calls": [call]}
    parsed = parse_completion(example.completion, example.thinking)
    return {"role": "assistant", "content": parsed.content, "reasoning_content": parsed.reasoning_content}


def user_texts(example: data.Example) -> list[str]:
    return [m["content"] for m in example.messages if m["role"] == "user"]


def pattern(template: str) -> re.Pattern:
    return re.compile("(.+?)".join(map(re.escape, re.split(r"\{\w+\}", template))), re.S)


# ----- the chat format -----

def test_prompt_plus_completion_is_what_the_encoder_renders_for_the_whole_conversation(generated):
    for e in every(generated):
        assert e.prompt.startswith(BOS) and e.completion.endswith(EOS) and e.completion.count(EOS) == 1
        whole = encode_messages(with_tools_on_system(e) + [reply_of(e)], e.thinking)
        assert whole == e.prompt + e.completion, (e.kind, e.messages)


def test_prompts_end_where_the_model_takes_over(generated):
    for e in every(generated):
        if e.kind == "tool_answer":
            assert e.prompt.endswith("</function_results>\n\n" + THINK_CLOSE)
        else:
            assert e.prompt.endswith(ASSISTANT + (THINK_OPEN if e.thinking else THINK_CLOSE))
        assert e.thinking == (e.kind == "thinking")


def test_parsing_a_tool_call_completion_gives_back_exactly_the_expected_call(generated):
    for e in every(generated, ["tool_call"]):
        for offered in (list(e.tools), None):  # the string attribute alone is enough
            parsed = parse_completion(e.completion, e.thinking, offered)
            assert parsed.error is None and parsed.content == "" and len(parsed.tool_calls) == 1
            call = parsed.tool_calls[0]
            assert call.name == e.expected["name"]
            assert json.loads(call.arguments) == e.expected["arguments"]
            # Types too (True == 1 in Python): the exact JSON text, as DeepSeek writes it.
            assert call.arguments == json.dumps(e.expected["arguments"], ensure_ascii=False)


def test_tool_requests_name_the_tool_and_write_out_every_value(generated):
    by_name = {tool.name: tool for split in data.SPLITS for tool in tools(split)}
    for e in every(generated, ["tool_call"]):
        request, name = user_texts(e)[-1], e.expected["name"]
        assert name in [t["function"]["name"] for t in e.tools] and 1 <= len(e.tools) <= 3
        tool = by_name.get(name)
        if tool is None:    # made up (`synthetic.invented_tool`): verb_noun, the noun written as such
            verb, noun = name.split("_", 1)
            assert split_of(name) == "train" and any(word in request.lower() for word in VERBS[verb].words)
            assert noun in request
        else:
            assert any(word in request.lower() for word in VERBS[tool.verb].words)
            assert tool.noun.text in request or tool.noun.plural in request
        assert 1 <= len(e.expected["arguments"]) <= 4
        for key, value in e.expected["arguments"].items():
            if not isinstance(value, bool):
                assert text(value) in request, (key, value, request)


def test_argument_types_cover_strings_integers_numbers_booleans_and_enums(generated):
    seen = Counter()
    for e in every(generated, ["tool_call"]):
        schemas = {t["function"]["name"]: t["function"]["parameters"]["properties"] for t in e.tools}
        for key, value in e.expected["arguments"].items():
            declared = schemas[e.expected["name"]][key]
            seen["enum" if "enum" in declared else declared["type"]] += 1
            python_type = {"string": str, "integer": int, "number": float, "boolean": bool}[declared["type"]]
            assert isinstance(value, python_type)
    assert all(seen[kind] >= 20 for kind in ("string", "integer", "number", "boolean", "enum")), seen


def test_tool_answers_copy_the_values_of_the_tool_result(generated):
    for e in every(generated, ["tool_answer"]):
        assert [m["role"] for m in e.messages[-3:]] == ["user", "assistant", "tool"]
        result = json.loads(e.messages[-1]["content"])
        for value in result.values():
            assert text(value) in e.completion, (value, e.completion)


def test_json_completions_are_objects_with_exactly_the_asked_keys(generated):
    for e in every(generated, ["json"]):
        assert "json" in user_texts(e)[-1].lower()
        answer = json.loads(parse_completion(e.completion, e.thinking).content)
        assert list(answer) == e.expected["keys"] and len(e.expected["keys"]) >= 2


def test_thinking_turns_reason_then_answer(generated):
    for e in every(generated, ["thinking"]):
        parsed = parse_completion(e.completion, thinking=True)
        assert parsed.reasoning_content and parsed.content and e.completion.count(THINK_CLOSE) == 1


def test_other_kinds_expect_nothing_in_particular(generated):
    assert all(e.expected == {} for e in every(generated, ["tool_answer", "qa", "thinking"]))
    assert any(len(user_texts(e)) > 1 for e in generated["qa", "train"])  # some history


# ----- the held-out split -----

def test_held_out_tool_schemas_never_appear_in_training(generated):
    def offered(split):
        return {(t["function"]["name"], tuple(t["function"]["parameters"]["properties"]))
                for e in every(generated, ["tool_call", "tool_answer"], [split]) for t in e.tools}

    train, heldout = offered("train"), offered("heldout")
    assert not {name for name, _ in train} & {name for name, _ in heldout}
    assert all(split_of(name) == "heldout" for name, _ in heldout)
    assert not {t.name for t in tools("train")} & {t.name for t in tools("heldout")}
    assert len({t.name for t in tools("heldout")}) >= 10
    # New combinations of known words: every held-out verb and noun is also trained.
    assert {t.verb for t in tools("heldout")} <= {t.verb for t in tools("train")}
    assert {t.noun for t in tools("heldout")} <= {t.noun for t in tools("train")}


def called(e: data.Example) -> str:
    return e.expected["name"] if e.kind == "tool_call" else e.messages[-2]["tool_calls"][0]["function"]["name"]


@pytest.mark.parametrize("kind", data.INVENTIVE)
def test_made_up_names_take_their_share_of_training_only_and_change_nothing_else(generated, kind):
    """A made-up tool's name (and its id's prefix) or JSON key can only be copied from the request."""
    known_tools = {tool.name for split in data.SPLITS for tool in tools(split)}
    known_keys = {key for make, _ in conversations.RECORDS for key in make(random.Random(0))}

    def made_up(e: data.Example) -> bool:
        return (called(e) not in known_tools if kind != "json"
                else not set(json.loads(e.completion.removesuffix(EOS))) <= known_keys)

    invented = data.examples(kind, N, "train", seed=7, invented=0.5)
    names = Counter(called(e) if kind != "json" else e.completion for e in invented if made_up(e))
    assert 0.4 * N < sum(names.values()) < 0.6 * N
    assert len(names) > 0.9 * sum(names.values())     # hardly ever the same one twice
    assert not any(made_up(e) for e in generated[kind, "train"])        # the default: none
    # held-out examples never change, and neither do the training ones of other kinds
    assert data.examples(kind, 50, "heldout", seed=7, invented=0.5) == generated[kind, "heldout"][:50]
    assert data.examples("qa", 50, "train", seed=7, invented=0.5) == generated["qa", "train"][:50]


@functools.cache
def pooled_strings() -> dict[str, set[str]]:
    """What the pools give each free-text string parameter (dates and times aside) over 300 draws."""
    return {key: {param.sample(random.Random(i)) for i in range(300)} for key, param in PARAMS.items()
            if param.type == "string" and not param.enum and key not in ("date", "time")}


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_made_up_values_have_the_schema_type_and_come_from_no_pool(seed):
    """A made-up argument value (`synthetic.made_up_value`) can only be copied from the request:
    nothing in training pairs it with its key. Enums and flags keep their own values; dates and
    times keep their shape, so one may happen to fall on a pooled date."""
    python_type = {"string": str, "integer": int, "number": (int, float), "boolean": bool}
    rng = random.Random(seed)
    for param in PARAMS.values():
        value = made_up_value(param, rng)
        assert isinstance(value, python_type[param.type]), (param.key, value)
        if param.enum or param.type == "boolean":
            assert value in (param.enum or (True, False))
        elif param.key in pooled_strings():
            assert value not in pooled_strings()[param.key], (param.key, value)
            assert value.strip() == value and value


def test_made_up_values_are_drawn_in_training_only(generated):
    pools = pooled_strings()
    made_up = [value in pools[key] for e in generated["tool_call", "made_up"]
               for key, value in e.expected["arguments"].items() if key in pools]
    assert len(made_up) > 100 and not any(made_up)
    # held-out requests are the same whatever the training share of made-up examples
    assert data.examples("tool_call", N, "heldout", seed=7, invented=1.0) == generated["tool_call", "heldout"]


@pytest.mark.parametrize("kind", ["tool_call", "json"])
def test_copy_sources_point_from_where_the_reply_writes_an_item_to_where_the_prompt_spells_it(generated, kind):
    """Tool calls copy the function name from the tool list and every non-boolean value from the
    user's message; JSON replies copy each asked key from it."""
    for e in every(generated, [kind]):
        sources = data.copy_sources(e)
        if kind == "tool_call":
            items = [e.expected["name"]] + [text(v) for v in e.expected["arguments"].values()
                                            if not isinstance(v, bool)]
        else:
            items = list(e.expected["keys"])
        assert len(sources) == len(items), (items, sources)
        assert [r for r, _ in sources] == sorted(r for r, _ in sources)
        user_at = e.prompt.rfind(user_texts(e)[-1])
        for (at_reply, at_prompt), item in zip(sources, items):
            assert e.completion.startswith(item, at_reply) and e.prompt.startswith(item, at_prompt)
            assert at_prompt >= user_at or item == e.expected.get("name")    # names: in the tool list


@pytest.mark.parametrize("kind", data.KINDS)
def test_held_out_phrasings_never_appear_in_training(generated, kind):
    own = {split: [pattern(t) for t in data.templates(kind, split)] for split in data.SPLITS}
    assert not set(data.templates(kind, "train")) & set(data.templates(kind, "heldout"))
    for split, other in (("train", "heldout"), ("heldout", "train")):
        for e in generated[kind, split]:
            for user in user_texts(e):
                assert any(p.fullmatch(user) for p in own[split]), user
                assert not any(p.fullmatch(user) for p in own[other]), (split, user)


def test_at_least_200_distinct_held_out_tool_conversations(generated):
    assert len({user_texts(e)[-1] for e in generated["tool_call", "heldout"]}) >= 200


# ----- determinism, mixture, speed -----

def test_same_arguments_give_the_same_examples():
    for kind in data.KINDS:
        first = data.examples(kind, 40, "train", 3)
        assert first == data.examples(kind, 40, "train", 3)
        assert first[:10] == data.examples(kind, 10, "train", 3)
        assert first != data.examples(kind, 40, "train", 4)
    assert data.mixture(100, "heldout", 1) == data.mixture(100, "heldout", 1)


def test_mixture_interleaves_the_kinds_in_proportion():
    mixed = data.mixture(1000, "train", 0)
    counts = Counter(e.kind for e in mixed)
    assert len(mixed) == 1000 and set(counts) == set(data.KINDS)
    assert all(abs(counts[k] - 1000 * w) <= 1 for k, w in data.DEFAULT_WEIGHTS.items())
    assert len({e.kind for e in mixed[:20]}) >= 3
    assert {e.kind for e in data.mixture(30, "train", 0, {"qa": 2.0, "json": 0})} == {"qa"}
    assert len(data.mixture(7, "train", 0, {"qa": 1, "json": 1, "thinking": 1})) == 7
    with pytest.raises(ValueError):
        data.mixture(10, "train", 0, {"poetry": 1.0})


def test_unknown_kind_or_split_is_refused():
    with pytest.raises(ValueError):
        data.examples("poetry", 1, "train", 0)
    with pytest.raises(ValueError):
        data.examples("qa", 1, "test", 0)


# ----- code -----

def test_stdlib_split_is_disjoint_sorted_and_about_five_percent_held_out():
    train, heldout = data.stdlib_files("train"), data.stdlib_files("heldout")
    assert train and heldout and not {p for p, _ in train} & {p for p, _ in heldout}
    assert 0.02 < len(heldout) / (len(train) + len(heldout)) < 0.1
    for files in (train, heldout):
        assert [p for p, _ in files] == sorted(p for p, _ in files)
        for path, source in files:
            parts = path.split("/")
            assert path.endswith(".py") and len(source.encode()) <= 200_000
            assert not {"site-packages", "test", "tests", "idle_test"} & set(parts[:-1])


@pytest.mark.parametrize("split", data.SPLITS)
def test_function_headers_end_with_a_def_line_from_the_splits_own_files(split):
    headers = data.function_headers(split, 40, 0)
    assert len(headers) == 40 and len(set(headers)) == 40
    assert headers == data.function_headers(split, 40, 0)
    own = [source for _, source in data.stdlib_files(split)]
    for header in headers:
        assert header.endswith(":\n")
        assert any(header in source for source in own)
        last_def = [m.start() for m in re.finditer(r"^[ \t]*(async[ \t]+)?def[ \t]", header, re.M)][-1]
        ast.parse(textwrap.dedent(header[last_def:]) + "    pass\n")  # the signature is whole
    other = [source for _, source in data.stdlib_files("heldout" if split == "train" else "train")]
    assert not any(header in source for header in headers for source in other)
