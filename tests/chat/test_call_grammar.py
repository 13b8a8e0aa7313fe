"""The grammar that holds DSML tool calls to the request's functions (`chat.call_grammar`).

Every call the encoder can write for a declared function with schema-valid arguments gets through,
whole or from its `｜DSML｜` trigger on (hypothesis); calls that break the schema do not.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepseek.chat.call_grammar import call_grammar, compile_calls
from deepseek.chat.dsml import render_tool_calls
from deepseek.engine.grammar import GrammarCompiler, GrammarError
from deepseek.tokenizer import DSML, EOS, sample_corpus, train_byte_bpe

WEATHER = {"name": "get_weather", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    "days": {"type": "integer", "minimum": 1},
    "hourly": {"type": "boolean"}}, "required": ["city"]}}
PING = {"name": "ping"}     # no parameters at all
FUNCTIONS = [WEATHER, PING]


@pytest.fixture(scope="module")
def tokenizer():
    return train_byte_bpe(sample_corpus(), 1024)


@pytest.fixture(scope="module")
def compiler(tokenizer):
    return GrammarCompiler(tokenizer, vocab_size=1024, eos_token_id=tokenizer.token_to_id(EOS))


@pytest.fixture(scope="module")
def grammars(compiler, tokenizer):
    dsml = tokenizer.token_to_id(DSML)
    return {"whole": compile_calls(compiler, FUNCTIONS, dsml),
            "trigger": compile_calls(compiler, FUNCTIONS, dsml, after_trigger=True),
            "single": compile_calls(compiler, FUNCTIONS, dsml, single=True)}


def accepts(grammar, tokenizer, text: str) -> bool:
    """Whether `text` is a complete document of `grammar` (fed as the tokenizer encodes it)."""
    matcher = grammar.matcher()
    try:
        for token in tokenizer.encode(text, add_special_tokens=False).ids:
            matcher.accept(token)
    except GrammarError:
        return False
    return bool(matcher.allowed_tokens()[tokenizer.token_to_id(EOS)])


def after_trigger(text: str) -> str:
    return text[text.index(DSML) + len(DSML):]


raw_text = st.text(st.characters(blacklist_characters="<", blacklist_categories=("Cs",)), max_size=20)
weather_arguments = st.fixed_dictionaries(
    {"city": raw_text},
    optional={"unit": st.sampled_from(["celsius", "fahrenheit"]), "days": st.integers(1, 10 ** 6),
              "hourly": st.booleans()})


def in_schema_order(arguments: dict) -> dict:
    return {key: arguments[key] for key in WEATHER["parameters"]["properties"] if key in arguments}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(weather_arguments.map(lambda a: ("get_weather", in_schema_order(a))),
                          st.just(("ping", {}))), min_size=1, max_size=3))
def test_every_schema_valid_call_block_is_accepted(grammars, tokenizer, calls):
    text = render_tool_calls(calls)
    assert accepts(grammars["whole"], tokenizer, text)
    assert accepts(grammars["trigger"], tokenizer, after_trigger(text))
    assert accepts(grammars["single"], tokenizer, text) == (len(calls) == 1)


@pytest.mark.parametrize("call", [
    ("get_wether", {"city": "Rome"}),                    # a function the request does not offer
    ("get_weather", {"town": "Rome"}),                   # an undeclared key
    ("get_weather", {"unit": "celsius"}),                # the required city left out
    ("get_weather", {"days": 3, "city": "Rome"}),        # out of schema order
    ("get_weather", {"city": "Rome", "days": "three"}),  # a string where the schema wants an integer
    ("get_weather", {"city": "Rome", "unit": "kelvin"}),  # outside the enum
    ("ping", {"city": "Rome"}),                          # a function without parameters given one
])
def test_a_call_that_breaks_the_schema_is_refused(grammars, tokenizer, call):
    text = render_tool_calls([call])
    assert not accepts(grammars["whole"], tokenizer, text)
    assert not accepts(grammars["trigger"], tokenizer, after_trigger(text))


def test_free_text_before_the_trigger_is_not_part_of_the_grammar(grammars, tokenizer):
    text = render_tool_calls([("ping", {})])
    assert not accepts(grammars["trigger"], tokenizer, text)     # it starts after ｜DSML｜
    assert not accepts(grammars["whole"], tokenizer, after_trigger(text))


def test_a_schema_the_grammar_cannot_enforce_falls_back_to_names_unless_strict(compiler, tokenizer):
    odd = {"name": "odd", "parameters": {"type": "object", "properties": {
        "x": {"type": "object", "properties": {"y": {"type": "string", "pattern": "(?<=a)b"}}}}}}
    dsml = tokenizer.token_to_id(DSML)
    with pytest.raises(GrammarError):
        compiler.lark(call_grammar([odd], dsml))
    with pytest.raises(GrammarError):
        compile_calls(compiler, [odd], dsml, strict=True)
    names_only = compile_calls(compiler, [odd], dsml)
    assert accepts(names_only, tokenizer, render_tool_calls([("odd", {"anything": "goes"})]))
    assert not accepts(names_only, tokenizer, render_tool_calls([("even", {})]))
