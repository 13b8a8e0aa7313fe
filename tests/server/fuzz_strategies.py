"""Hypothesis strategies for the server fuzz (tests/server/test_fuzz.py).

Schemathesis generates bodies from the OpenAPI schema, but that schema says little: `messages`
is a list of arbitrary objects and `model` any string, so almost every generated body stops at
"Model Not Exist" or at the first conversation check. These strategies overlay plausible parts
(a real model id, conversations that are valid or nearly so, tools, sampling knobs) on the
generated bodies so the fuzz also reaches prompt rendering, grammars and the engine. They also
tame what would only cost time: `max_tokens` is kept small, so no example generates for long.
"""

from __future__ import annotations

import json

from hypothesis import strategies as st

MODELS = ("deepseek-v3.2", "deepseek-chat", "deepseek-reasoner", "deepseek-v3")
MAX_TOKENS_CAP = 8            # the most tokens any fuzz example may generate (runtime knob)
HUGE_MAX_TOKENS = 10**6       # above every route's limit: rejected before any work is done

TEXT = st.text(max_size=24)
# A lone surrogate ("\ud800") is legal in a JSON string but has no UTF-8 form; `overlay` plants one now and then.
LONE_SURROGATE = st.characters(categories=["Cs"])
# Edge values sit in one list with ordinary ones, so they come up often (an `a | b` union mostly draws `a`).
SEED = st.sampled_from([0, 1, 42, -1, 2**31, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**30])
TEMPERATURE = st.sampled_from([1.0, 0.0, 0.7, 2.0, 5e-324, 1e-308, 1e-40, 1e-30]) | st.floats(0, 2)
TOP_P = st.sampled_from([1.0, 0.9, 5e-324, 1e-308, 1e-40]) | st.floats(0.01, 1)
NAME = st.sampled_from(["get_weather", "get_time"]) | st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8)

TEXT_PART = st.fixed_dictionaries({"type": st.just("text"), "text": TEXT})
ODD_PART = (st.fixed_dictionaries({"type": st.sampled_from(["image_url", "input_text", "text", "audio"])},
                                  optional={"text": JSONISH, "image_url": JSONISH}) | JSONISH)
CONTENT = st.one_of(TEXT, st.lists(TEXT_PART, max_size=3), st.none(),
                    st.lists(st.one_of(TEXT_PART, ODD_PART), max_size=3), JSONISH)

WEATHER_PARAMS = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                  "required": ["city", "days"], "additionalProperties": False}
ARGUMENTS = st.one_of(
    st.fixed_dictionaries({"city": TEXT, "days": st.integers(-5, 30)}).map(json.dumps),
    st.dictionaries(TEXT, JSONISH, max_size=3).map(json.dumps),
    TEXT,                                 # usually not JSON at all
    JSONISH.map(json.dumps),              # JSON, but maybe not an object
    JSONISH)                              # not even a string
TOOL_CALL = st.fixed_dictionaries({"id": TEXT, "type": st.just("function"),
                                   "function": st.fixed_dictionaries({"name": NAME, "arguments": ARGUMENTS})})

ROLE = st.sampled_from(["system", "user", "assistant", "tool", "developer"]) | TEXT | JSONISH
ANY_MESSAGE = st.fixed_dictionaries({"role": ROLE}, optional={
    "content": CONTENT, "name": TEXT, "tool_calls": st.lists(TOOL_CALL, max_size=2) | JSONISH,
    "tool_call_id": TEXT | JSONISH, "reasoning_content": TEXT | JSONISH, "prefix": st.booleans() | JSONISH})


@st.composite
def conversation(draw, beta: bool = True) -> list:
    """A conversation that is valid or one step away from it: system?, user, tool round?, prefix?"""
    out = []
    if draw(st.booleans()):
        out.append({"role": "system", "content": draw(TEXT)})
    out.append({"role": draw(st.sampled_from(["user", "developer"])),
                "content": draw(st.one_of(TEXT.filter(bool), st.lists(TEXT_PART, min_size=1, max_size=2)))})
    if draw(st.booleans()):   # a tool round: assistant calls, then one result per call
        calls = draw(st.lists(TOOL_CALL, min_size=1, max_size=2))
        call = {"role": "assistant", "content": draw(st.none() | TEXT), "tool_calls": calls}
        if draw(st.booleans()):
            call["reasoning_content"] = draw(TEXT)
        out.append(call)
        for c in calls[:len(calls) - draw(st.sampled_from([0, 0, 0, 1]))]:
            out.append({"role": "tool", "tool_call_id": c["id"], "content": draw(st.one_of(TEXT, CONTENT))})
    if draw(st.integers(0, 3)) == 3 and beta:      # chat prefix completion (valid on /beta only)
        prefix = {"role": "assistant", "content": draw(TEXT | st.none()), "prefix": True}
        if draw(st.booleans()):
            prefix["reasoning_content"] = draw(TEXT)
        out.append(prefix)
    if draw(st.integers(0, 4)) == 4:      # one message from anywhere, anywhere
        out.insert(draw(st.integers(0, len(out))), draw(ANY_MESSAGE))
    return out


def tool_spec(strict: bool | None, params) -> dict:
    fn = {"name": "get_weather", "description": "Weather for a city", "parameters": params}
    if strict is not None:
        fn["strict"] = strict
    return {"type": "function", "function": fn}


# Parameter schemas of every sort: strict mode must refuse the wrong ones with a 400, not choke on them.
ODD_SCHEMA = st.fixed_dictionaries(
    {"type": st.sampled_from(["object", "string", "array", "integer"]) | JSONISH},
    optional={"properties": st.dictionaries(NAME, JSONISH | st.fixed_dictionaries({"type": JSONISH}), max_size=3)
              | JSONISH,
              "required": st.lists(NAME, max_size=3) | JSONISH, "additionalProperties": st.booleans() | JSONISH,
              "items": JSONISH, "anyOf": JSONISH, "enum": st.lists(JSONISH, max_size=3)})
SIMPLE_SCHEMA = st.sampled_from([{"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"},
                                 {"type": "string", "enum": ["a", "b"]}, {"type": "array", "items": {"type": "string"}},
                                 {"type": "null"}, {"anyOf": [{"type": "string"}, {"type": "integer"}]}])
STRICT_SCHEMA = st.recursive(
    SIMPLE_SCHEMA,
    lambda inner: st.dictionaries(NAME, inner, max_size=3).map(lambda props: {
        "type": "object", "properties": props, "required": list(props), "additionalProperties": False}),
    max_leaves=5).filter(lambda s: s.get("type") == "object") | st.just(WEATHER_PARAMS)
TOOL_LIST = st.one_of(     # strict tools: /beta only
    st.lists(st.builds(tool_spec, st.just(True), STRICT_SCHEMA), min_size=1, max_size=2),
    st.lists(st.builds(tool_spec, st.sampled_from([True, None, False]), ODD_SCHEMA | st.none()),
             min_size=1, max_size=2),
    st.just([tool_spec(None, WEATHER_PARAMS)]),
    st.just([tool_spec(True, WEATHER_PARAMS)]))
V1_TOOL_LIST = st.one_of(
    st.lists(st.builds(tool_spec, st.sampled_from([None, False]), ODD_SCHEMA | st.none()), min_size=1, max_size=2),
    st.just([tool_spec(None, WEATHER_PARAMS)]))
TOOL_CHOICE = st.sampled_from(["required", None, "none", "auto",
                               {"type": "function", "function": {"name": "get_weather"}},
                               {"type": "function", "function": {"name": "absent"}}])
STOP = st.none() | TEXT.filter(bool) | st.lists(TEXT.filter(bool), max_size=3)

# Each knob takes values the schema allows (edges included); `overlay` then poisons at most one field,
# so that one bad field does not stop every example at validation.
CHAT_KNOBS = {
    "tools": st.none(),    # (overlay draws the tools for the route)
    "tool_choice": st.sampled_from(["none", "auto", "required"]),   # without tools: a 400 unless none/auto
    "response_format": st.sampled_from([None, {"type": "text"}, {"type": "json_object"}]),
    "thinking": st.sampled_from([None, {"type": "enabled"}, {"type": "disabled"}]),
    "chat_template_kwargs": st.sampled_from([None, {"thinking": True}, {"enable_thinking": False}, {}]),
    "stream": st.sampled_from([True, False, None]),
    "logprobs": st.sampled_from([{"logprobs": False}, {"logprobs": True}, {"logprobs": True, "top_logprobs": 5},
                                 {"logprobs": True, "top_logprobs": 20}, {"top_logprobs": 0}]),  # 400 when thinking
    "stop": STOP,
    "temperature": TEMPERATURE, "top_p": TOP_P, "seed": SEED,
    "frequency_penalty": st.floats(-2, 2), "presence_penalty": st.floats(-2, 2),
}
FIM_KNOBS = {
    "suffix": TEXT | st.none(), "echo": st.booleans(), "logprobs": st.sampled_from([None, 0, 3, 20]),
    "stream": st.sampled_from([True, False, None]), "stop": STOP,
    "temperature": TEMPERATURE, "top_p": TOP_P, "seed": SEED,
}


@st.composite
def overlay(draw, kind: str, beta: bool, with_tools: bool = False) -> dict:
    """A plausible body: a real model, a conversation (or FIM prompt), some knobs, maybe one poisoned.
    Off /beta it keeps to what /v1 accepts (no prefix message, no strict tools)."""
    out = {"model": draw(st.sampled_from(MODELS))}
    if kind == "chat":
        out["messages"] = draw(conversation(beta))
    else:
        out["prompt"] = draw(TEXT)
    knobs = CHAT_KNOBS if kind == "chat" else FIM_KNOBS
    tool_list = TOOL_LIST if beta else V1_TOOL_LIST
    for name in sorted(knobs):              # each knob set or left out with even odds
        if draw(st.booleans()):
            value = draw(st.none() | tool_list if name == "tools" else knobs[name])
            if name == "logprobs" and kind == "chat":
                out.update(value)
            else:
                out[name] = value
    if with_tools:
        out.update(tools=draw(tool_list), tool_choice=draw(TOOL_CHOICE))
    if out.get("stream") and draw(st.booleans()):
        out["stream_options"] = {"include_usage": draw(st.booleans())}
    if draw(st.integers(0, 3)) == 3:         # poison one field
        out[draw(st.sampled_from(sorted(knobs) + ["stream_options", "model"]))] = draw(JSONISH)
    if draw(st.integers(0, 7)) == 7:         # a lone surrogate in the text the tokenizer will see
        if kind == "chat":
            for message in out["messages"]:
                if isinstance(message, dict) and isinstance(message.get("content"), str):
                    message["content"] += draw(LONE_SURROGATE)
                    break
        else:
            out[draw(st.sampled_from(["prompt", "suffix"]))] = draw(TEXT) + draw(LONE_SURROGATE)
    return out


def _as_number(value) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def cap_max_tokens(body: dict, small: int) -> None:
    """Never let an example generate more than MAX_TOKENS_CAP tokens (absent = a 4K default)."""
    value = body.get("max_tokens")
    number = _as_number(value)
    if value is None or (number is not None and MAX_TOKENS_CAP < number < HUGE_MAX_TOKENS):
        # A value the server might coerce (8.0, "8") stays in its type: the type is what is tested.
        body["max_tokens"] = {float: float(small), str: str(small)}.get(type(value), small)


def pick_mode(draw, negative: bool) -> str:
    """How `tame` treats the next schemathesis body. Hypothesis draws the first choice most (it is the
    "simplest"): the one that reaches furthest. A negative (schema-violating) body keeps what makes it
    invalid: at most it gets a real model id."""
    if negative:
        return draw(st.sampled_from(["real model", "as generated"]))
    return draw(st.sampled_from(["plausible only"] * 3 + ["plausible on generated"] * 2
                                + ["real model", "as generated"]))


def tame(draw, how: str, body, kind: str, beta: bool = True):
    """Apply mode `how` to a generated body (`kind` is 'chat' or 'fim'; `body` is ignored for
    "plausible only"), then cap max_tokens. Returns the body to send."""
    if how == "plausible only":
        body = {}
    if not isinstance(body, dict):
        return body
    if how.startswith("plausible"):
        body.update(draw(overlay(kind, beta, with_tools=kind == "chat" and draw(st.sampled_from([True, False])))))
    elif how == "real model":
        body["model"] = draw(st.sampled_from(MODELS))
    cap_max_tokens(body, draw(st.integers(1, MAX_TOKENS_CAP)))
    return body


def predict_body(instances: list):
    """A Vertex predict body around `instances`, or something that is not one."""
    return st.sampled_from([{"instances": instances}, {"instances": []}, {"instances": instances[0]}, instances,
                            {"instances": [None, *instances]}, {"other": instances}])
