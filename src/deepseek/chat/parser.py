"""Parse a finished V3.2 completion into reasoning, content and tool calls (spec §14, "Parsing").

Grammar (EOS ends the completion wherever it appears; `ws` is any run of space, tab, CR, LF):

    completion := [reasoning "</think>"] content [calls]        (reasoning only in thinking mode)
    calls      := "\\n\\n<｜DSML｜function_calls>" (ws invoke)+ ws "</｜DSML｜function_calls>" ws
    invoke     := '<｜DSML｜invoke name="NAME">' (ws param)* ws "</｜DSML｜invoke>"
    param      := '<｜DSML｜parameter name="KEY" string="true|false">VALUE</｜DSML｜parameter>'

Content ends at the first "\\n\\n<｜DSML｜function_calls". Markup that does not follow the grammar
(most often a block cut short by max_tokens) never raises: the whole text after the reasoning
becomes content and `error` says what went wrong. StreamParser (stream.py) reads the same grammar
incrementally; the two agree on every input, which the tests check property by property.
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Callable

from deepseek.tokenizer import EOS, THINK_CLOSE

from .dsml import (CALLS_CLOSE, CALLS_START, INVOKE_CLOSE, INVOKE_OPEN, PARAM_CLOSE, PARAM_OPEN,
                   declared_type, json_text, value_json)

_ID_ALPHABET = string.ascii_letters + string.digits


def new_call_id() -> str:
    """A fresh tool-call id: `call_` and 24 random alphanumerics."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, as in OpenAI's `function.arguments`

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ParsedMessage:
    reasoning_content: str | None  # None outside thinking mode
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    error: str | None = None  # why the tool-call markup was given back as content

    @property
    def malformed(self) -> bool:
        return self.error is not None


class _Malformed(Exception):
    pass


_WS = "[ \t\r\n]*"
_INVOKE = re.compile(_WS + re.escape(INVOKE_OPEN) + r'([^"]*)">')
_PARAM = re.compile(_WS + re.escape(PARAM_OPEN) + r'([^"]*)" string="(true|false)">(.*?)'
                    + re.escape(PARAM_CLOSE), re.S)
_INVOKE_END = re.compile(_WS + re.escape(INVOKE_CLOSE))
_CALLS_END = re.compile(_WS + re.escape(CALLS_CLOSE) + _WS + r"\Z")


def parse_completion(text: str, thinking: bool, tools: list[dict] | None = None, *,
                     new_id: Callable[[], str] = new_call_id) -> ParsedMessage:
    """The assistant message a completion spells.

    `tools` (the request's) lets a parameter's declared JSON-schema type override a wrong
    `string` attribute; `new_id` makes tool-call ids (inject one for deterministic tests).
    """
    body = text.split(EOS, 1)[0]
    reasoning = None
    if thinking:
        reasoning, closed, body = body.partition(THINK_CLOSE)
        if not closed:  # cut off while still reasoning
            return ParsedMessage(reasoning, "")
    start = body.find(CALLS_START)
    if start < 0:
        return ParsedMessage(reasoning, body)
    try:
        calls = _parse_calls(body, start + len(CALLS_START), tools)
    except _Malformed as error:
        return ParsedMessage(reasoning, body, [], str(error))
    return ParsedMessage(reasoning, body[:start], [ToolCall(new_id(), name, arguments)
                                                   for name, arguments in calls])


def _parse_calls(text: str, pos: int, tools: list[dict] | None) -> list[tuple[str, str]]:
    if not text.startswith(">", pos):
        raise _Malformed("function_calls tag is not closed with '>'")
    pos, calls = pos + 1, []
    while True:
        invoke = _INVOKE.match(text, pos)
        if invoke is None:
            raise _Malformed(f"expected an invoke at offset {pos}")
        name = invoke.group(1)
        if not name:
            raise _Malformed("invoke without a function name")
        pos, arguments = _parse_parameters(text, invoke.end(), name, tools)
        calls.append((name, arguments))
        if _CALLS_END.match(text, pos):
            return calls


def _parse_parameters(text: str, pos: int, name: str, tools: list[dict] | None) -> tuple[int, str]:
    values: dict[str, str] = {}
    while (param := _PARAM.match(text, pos)) is not None:
        key, is_string, raw = param.group(1), param.group(2) == "true", param.group(3)
        if key in values:
            raise _Malformed(f"parameter {key!r} given twice")
        values[key] = value_json(raw, is_string, declared_type(tools, name, key))
        pos = param.end()
    end = _INVOKE_END.match(text, pos)
    if end is None:
        raise _Malformed(f"invoke of {name!r} is not closed")
    arguments = "{" + ", ".join(f"{json_text(key)}: {value}" for key, value in values.items()) + "}"
    return end.end(), arguments
