"""Tool choice and strict function calling, enforced with a grammar over V3.2's DSML call format.

The model writes tool calls as (spec §14.1)

    \\n\\n<｜DSML｜function_calls>\\n<｜DSML｜invoke name="NAME">\\n
    <｜DSML｜parameter name="KEY" string="true|false">VALUE</｜DSML｜parameter>
    ...\\n</｜DSML｜invoke>\\n</｜DSML｜function_calls>

* `tool_choice: "required"`: the answer must be a call block (any declared function);
* a named `tool_choice`: exactly one call, to that function;
* `strict: true` (beta): every call's parameters follow the function's JSON schema: all listed
  properties, in schema order, string values as raw text, other values as JSON of their schema;
* `"auto"` without strict is free text, parsed afterwards; `"none"` drops the tools from the prompt.

`｜DSML｜` is a special token, so the grammar names it by token id. String values are restricted to
text without `<`, which keeps them from closing the markup early.
"""

from __future__ import annotations

import json

from deepseek.tokenizer import DSML

from .errors import APIError
from .schemas import NamedToolChoice

_STRICT_FORBIDDEN = {"minLength", "maxLength", "pattern", "format", "minimum", "maximum", "multipleOf",
                     "patternProperties", "minItems", "maxItems"}


def tool_grammar(state, tools: list[dict] | None, choice, beta: bool, parallel: bool = True):
    """The grammar a request's tool settings impose on the output, or None for free text."""
    if not tools:
        if choice not in (None, "none", "auto"):
            raise APIError(400, "tool_choice requires tools", "tool_choice")
        return None
    names = [t["function"]["name"] for t in tools]
    strict = {bool(t["function"].get("strict")) for t in tools}
    if True in strict:
        if not beta:
            raise APIError(400, "strict function calling needs the /beta base URL", "tools")
        if len(strict) > 1:
            raise APIError(400, "strict and non-strict functions cannot be mixed", "tools")
        for t in tools:
            check_strict_schema(t["function"].get("parameters") or {"type": "object", "properties": {}},
                                f"tools.{t['function']['name']}")
    named = choice.function.name if isinstance(choice, NamedToolChoice) else None
    if named is not None and named not in names:
        raise APIError(400, f"tool_choice names {named!r}, which is not among the tools", "tool_choice")
    if choice == "none" or (choice in (None, "auto") and True not in strict):
        return None
    rules = _Rules(state.token_id(DSML), strict=True in strict)
    chosen = [t for t in tools if named is None or t["function"]["name"] == named]
    try:
        text = rules.grammar(chosen, single=named is not None or not parallel, optional=choice in (None, "auto"))
        return state.grammars.lark(text)
    except (ValueError, RecursionError) as e:   # GrammarError is a ValueError; NaN in a schema too
        raise APIError(400, f"a tool's parameters cannot be enforced: {e}", "tools") from e


def check_strict_schema(schema: dict, where: str) -> None:
    """Strict mode's schema rules (api.md A5): objects list every property as required and forbid
    additional ones; some keywords are not allowed."""
    if not isinstance(schema, dict):
        raise APIError(400, f"{where}: a schema must be an object", "tools")
    for key, kind in (("properties", dict), ("required", list), ("anyOf", list)):
        if key in schema and not isinstance(schema[key], kind):
            raise APIError(400, f"{where}: {key} must be a{'n object' if kind is dict else ' list'}", "tools")
    bad = _STRICT_FORBIDDEN & set(schema)
    if bad:
        raise APIError(400, f"{where}: {sorted(bad)[0]} is not allowed in strict mode", "tools")
    if schema.get("type") == "object":
        props = schema.get("properties", {})
        required = schema.get("required", [])
        if not all(isinstance(r, str) for r in required) or set(required) != set(props) \
                or schema.get("additionalProperties") is not False:
            raise APIError(400, f"{where}: strict objects must list every property in required and set "
                                "additionalProperties to false", "tools")
        for key, sub in props.items():
            check_strict_schema(sub, f"{where}.{key}")
    for key in ("items",):
        if isinstance(schema.get(key), dict):
            check_strict_schema(schema[key], f"{where}.{key}")
    for sub in schema.get("anyOf", []):
        check_strict_schema(sub, f"{where}.anyOf")


class _Rules:
    """Builds the lark text. Literals are JSON-quoted, which is also valid lark string syntax."""

    def __init__(self, dsml_id: int | None, strict: bool):
        self.dsml = f"<[{dsml_id}]>" if dsml_id is not None else json.dumps(DSML, ensure_ascii=False)
        self.strict = strict

    def tag(self, before: str, after: str) -> str:
        """`before｜DSML｜after` as a lark sequence."""
        q = lambda s: json.dumps(s, ensure_ascii=False)  # noqa: E731
        return " ".join(p for p in (q(before) if before else "", self.dsml, q(after) if after else "") if p)

    def grammar(self, tools: list[dict], single: bool, optional: bool) -> str:
        invokes = [f"invoke_{i}" for i in range(len(tools))]
        lines = [f'calls: "\\n\\n" {self.tag("<", "function_calls>")} "\\n" '
                 + ("invoke" if single else 'invoke ("\\n" invoke)*')
                 + f' "\\n" {self.tag("</", "function_calls>")}',
                 "invoke: " + " | ".join(invokes),
                 'TEXT: /[^<]*/']
        for rule, tool in zip(invokes, tools):
            lines.append(self._invoke(rule, tool["function"]))
        # auto + strict: optional free text, then optionally calls; the text may not contain "<".
        lines.insert(0, "start: CONTENT calls?\nCONTENT: /[^<]*/" if optional else "start: calls")
        return "\n".join(lines) + "\n"

    def _invoke(self, rule: str, fn: dict) -> str:
        name = json.dumps(fn["name"])[1:-1]
        head = f'{self.tag("<", "invoke name=")} "\\"{name}\\">\\n"'
        tail = f'"\\n" {self.tag("</", "invoke>")}'
        if not self.strict:
            param = (f'{self.tag("<", "parameter name=")} "\\"" /[A-Za-z0-9_.-]+/ "\\" string=\\"" '
                     f'("true" | "false") "\\">" TEXT {self.tag("</", "parameter>")}')
            return f"{rule}: {head} ({rule}_param (\"\\n\" {rule}_param)*)? {tail}\n{rule}_param: {param}"
        schema = fn.get("parameters") or {"type": "object", "properties": {}}
        params = [self._param(key, sub) for key, sub in schema.get("properties", {}).items()]
        body = ' "\\n" '.join(params) if params else '""'
        return f"{rule}: {head} {body} {tail}"

    def _param(self, key: str, schema: dict) -> str:
        is_string = schema.get("type") == "string" and "enum" not in schema
        value = "TEXT" if is_string else f"%json{json.dumps(schema, allow_nan=False)}"
        flag = "true" if is_string else "false"
        return (f'{self.tag("<", "parameter name=")} "\\"{json.dumps(key)[1:-1]}\\" string=\\"{flag}\\">" '
                f'{value} {self.tag("</", "parameter>")}')
