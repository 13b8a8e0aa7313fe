"""Hypothesis strategies for V3.2 completions: text full of near-markup, and DSML tool calls."""

from __future__ import annotations

import itertools
import json

from hypothesis import strategies as st

from deepseek.chat.dsml import CALLS_START, PARAM_CLOSE, render_tool_calls
from deepseek.tokenizer import EOS, THINK_CLOSE

# Pieces that make markers, near-misses of markers and JSON-looking text likely.
FRAGMENTS = ["<", ">", "/", "｜", "\n", "\n\n", " ", '"', "\\", "x", "é", "1", "[", "]", "{", "}",
             "think", "</think", "</think>", "<｜end▁of", EOS, "<｜DSML｜", CALLS_START, ">\n",
             '<｜DSML｜invoke name="', '">', "</｜DSML｜invoke>", '<｜DSML｜parameter name="',
             '" string="true">', '" string="false">', "</｜DSML｜parameter>",
             "</｜DSML｜function_calls>", "true", "null"]

text = st.lists(st.sampled_from(FRAGMENTS) | st.characters(), max_size=30).map("".join)


def free_of(*markers: str):
    return text.filter(lambda s: not any(marker in s for marker in markers))


reasoning_text = free_of(THINK_CLOSE, EOS)
content_text = free_of(CALLS_START, EOS)
# Names and keys sit inside name="..." ; values must not close their parameter early.
key_text = free_of('"', EOS)
name_text = key_text.filter(bool)
safe_string = free_of(PARAM_CLOSE, EOS)
scalars = (st.none() | st.booleans() | st.integers(-10**20, 10**20)
           | st.floats(allow_nan=False, allow_infinity=False) | safe_string)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(safe_string, inner, max_size=3), max_leaves=6)
argument_values = json_values.filter(lambda v: PARAM_CLOSE not in json.dumps(v, ensure_ascii=False)
                                     and EOS not in json.dumps(v, ensure_ascii=False))
arguments = st.dictionaries(key_text, argument_values, max_size=4)
tool_calls = st.lists(st.tuples(name_text, arguments), max_size=3)


@st.composite
def completions(draw, thinking: bool):
    """(completion text, reasoning, content, [(name, arguments)]) as the model would write it."""
    reasoning = draw(reasoning_text) if thinking else None
    content = draw(content_text)
    calls = draw(tool_calls)
    out = (reasoning + THINK_CLOSE if thinking else "") + content
    out += render_tool_calls(calls) if calls else ""
    if draw(st.booleans()):
        out += EOS + draw(text)  # anything after EOS is never read
    return out, reasoning, content, calls


@st.composite
def chunked(draw, whole: str) -> list[str]:
    """`whole` cut at random places (empty chunks included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(whole)), max_size=12)))
    return [whole[a:b] for a, b in zip([0] + cuts, cuts + [len(whole)])]


def counting_ids():
    """A deterministic id source: call_0, call_1, ..."""
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"
