"""Tool choice and strict function calling, enforced with a grammar over V3.2's DSML call format
(`chat.call_grammar`: declared functions only, parameters as their schemas say).

* `tool_choice: "required"`: the answer must be a call block (any declared function);
* a named `tool_choice`: exactly one call, to that function;
* `"auto"`: free text, but a call block the model begins must be a valid call (the grammar starts at
  its first `｜DSML｜` token);
* `strict: true` (beta): the functions' schemas must follow strict mode's rules, and a schema the
  grammar cannot enforce is a 400 (without strict, such a call holds only its function name);
* `"none"` drops the tools from the prompt.
"""

from __future__ import annotations

from typing import NamedTuple

from deepseek.chat.call_grammar import compile_calls
from deepseek.tokenizer import DSML

from .errors import APIError
from .schemas import NamedToolChoice


class ToolGrammar(NamedTuple):
    grammar: object          # engine.grammar.Grammar
    after_dsml: bool         # it applies from the first ｜DSML｜ token on ("auto"), else from the start


_STRICT_FORBIDDEN = {"minLength", "maxLength", "pattern", "format", "minimum", "maximum", "multipleOf",
                     "patternProperties", "minItems", "maxItems"}


def tool_grammar(state, tools: list[dict] | None, choice, beta: bool, parallel: bool = True) -> ToolGrammar | None:
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
    dsml_id = state.token_id(DSML)
    auto = choice in (None, "auto")
    if choice == "none" or (auto and dsml_id is None):   # no trigger token: "auto" stays free
        return None
    chosen = [t["function"] for t in tools if named is None or t["function"]["name"] == named]
    try:
        grammar = compile_calls(state.grammars, chosen, dsml_id, single=named is not None or not parallel,
                                after_trigger=auto, strict=True in strict)
    except (ValueError, RecursionError) as e:
        raise APIError(400, f"a tool's parameters cannot be enforced: {e}", "tools") from e
    return ToolGrammar(grammar, after_dsml=auto)


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
