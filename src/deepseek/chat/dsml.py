"""DSML, the markup DeepSeek-V3.2 writes tool calls in (spec §14.1), in both directions.

    \\n\\n<｜DSML｜function_calls>
    <｜DSML｜invoke name="NAME">
    <｜DSML｜parameter name="KEY" string="true|false">VALUE</｜DSML｜parameter>
    </｜DSML｜invoke>
    </｜DSML｜function_calls>

`render_tool_calls` writes it for the prompt; `value_json` and `declared_type` turn a parsed
parameter back into the JSON an OpenAI `arguments` string holds. The tag strings are shared by
the batch parser and the stream parser so that both read exactly the same grammar.
"""

from __future__ import annotations

import json
import math
from typing import Any

from deepseek.tokenizer import DSML

CALLS_OPEN = f"<{DSML}function_calls>"
CALLS_CLOSE = f"</{DSML}function_calls>"
# Content ends where this begins; the model always puts a blank line before its calls.
CALLS_START = "\n\n" + CALLS_OPEN[:-1]
INVOKE_OPEN = f'<{DSML}invoke name="'  # then NAME">
INVOKE_CLOSE = f"</{DSML}invoke>"
PARAM_OPEN = f'<{DSML}parameter name="'  # then KEY" string="true|false">VALUE
PARAM_STRING = ' string="'
PARAM_CLOSE = f"</{DSML}parameter>"
# Between tags the parsers accept any run of these (the model writes exactly one "\n").
WHITESPACE = " \t\r\n"

_NON_STRING_TYPES = {"integer", "number", "boolean", "array", "object", "null"}


def render_tool_calls(calls: list[tuple[str, dict[str, Any]]]) -> str:
    """The DSML block for (name, arguments) pairs, leading blank line included."""
    invokes = []
    for name, arguments in calls:
        params = "\n".join(_render_parameter(key, value) for key, value in arguments.items())
        invokes.append(f'{INVOKE_OPEN}{name}">\n{params}\n{INVOKE_CLOSE}')
    return "\n\n" + CALLS_OPEN + "\n" + "\n".join(invokes) + "\n" + CALLS_CLOSE


def _render_parameter(key: str, value: Any) -> str:
    # Strings go in raw (no quotes, no escaping); everything else as compact JSON.
    if isinstance(value, str):
        return f'{PARAM_OPEN}{key}" string="true">{value}{PARAM_CLOSE}'
    return f'{PARAM_OPEN}{key}" string="false">{json_text(value)}{PARAM_CLOSE}'


def json_text(value: Any) -> str:
    """JSON as DeepSeek writes it: default separators, non-ASCII kept as is."""
    return json.dumps(value, ensure_ascii=False)


def declared_type(tools: list[dict] | None, name: str, key: str) -> str | None:
    """The JSON-schema `type` the request's tools declare for parameter `key` of `name`, if one."""
    for tool in tools or []:
        function = tool.get("function", tool)
        if function.get("name") != name:
            continue
        schema = (function.get("parameters") or {}).get("properties", {}).get(key)
        kind = schema.get("type") if isinstance(schema, dict) else None
        return kind if isinstance(kind, str) else None
    return None


def streams_as_string(is_string: bool, declared: str | None) -> bool:
    """Whether the value will be JSON-quoted raw text, so it can be streamed as it arrives."""
    return declared == "string" or (is_string and declared not in _NON_STRING_TYPES)


def value_json(raw: str, is_string: bool, declared: str | None) -> str:
    """The JSON text for one parameter value.

    `string="true"` values are JSON strings; `string="false"` values are JSON, re-serialised so
    that `arguments` always equals `json.dumps` of the argument object. Two repairs: a value
    that is not valid JSON becomes a string, and the request's schema (`declared`) wins over a
    wrong `string` attribute.
    """
    if streams_as_string(is_string, declared):
        return json_text(raw)
    try:
        value = json.loads(raw, parse_constant=_reject, parse_float=_finite_float)
    except ValueError:
        return json_text(raw)
    if is_string and not _matches(value, declared):
        return json_text(raw)
    return json_text(value)


def _reject(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 would come back out as "Infinity"
        raise ValueError(f"{text} overflows a double")
    return value


def _matches(value: Any, declared: str | None) -> bool:
    if declared == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if declared == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    kinds = {"boolean": bool, "array": list, "object": dict, "null": type(None)}
    return isinstance(value, kinds.get(declared, ()))
