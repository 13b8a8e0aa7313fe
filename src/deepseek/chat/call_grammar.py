"""Grammars that hold DSML tool calls to a request's functions (lark, in llguidance's dialect).

A call must name a declared function, and its parameters follow that function's schema: declared
keys only, in schema order, the required ones present; string values raw (`string="true"`, string
enums as one of their values), every other value JSON valid under its schema (`string="false"`),
just as the encoder writes them (`dsml.render_tool_calls`).

Two ways in:
* at once: the whole answer is a call block (`tool_choice` "required" or named);
* after a trigger: the answer is free until the model writes its first `｜DSML｜` token, and from
  there it must finish a valid call block (`tool_choice` "auto"). Free text is untouched, and a call
  the model has begun cannot name a function the request does not offer. SGLang's structural tags
  work the same way.

`｜DSML｜` is a special token, so the grammar names it by token id. String values are text without
`<`, which keeps them from closing the markup early.
"""

from __future__ import annotations

import json

from deepseek.tokenizer import DSML


def _q(text: str) -> str:
    """A lark string literal (JSON quoting is valid lark syntax)."""
    return json.dumps(text, ensure_ascii=False)


class _Rules:
    def __init__(self, dsml_id: int | None, free_parameters: bool):
        self.dsml = f"<[{dsml_id}]>" if dsml_id is not None else _q(DSML)
        self.free_parameters = free_parameters

    def tag(self, before: str, after: str) -> str:
        """`before｜DSML｜after` as a lark sequence."""
        return " ".join(p for p in (_q(before) if before else "", self.dsml, _q(after) if after else "") if p)

    def grammar(self, functions: list[dict], single: bool, after_trigger: bool) -> str:
        opening = '"function_calls>"' if after_trigger else f'"\\n\\n" {self.tag("<", "function_calls>")}'
        invokes = [f"invoke_{i}" for i in range(len(functions))]
        lines = [f'start: {opening} "\\n" ' + ("invoke" if single else 'invoke ("\\n" invoke)*')
                 + f' "\\n" {self.tag("</", "function_calls>")}',
                 "invoke: " + " | ".join(invokes),
                 "TEXT: /[^<]*/"]
        for rule, fn in zip(invokes, functions):
            lines += self._invoke(rule, fn)
        return "\n".join(lines) + "\n"

    def _invoke(self, rule: str, fn: dict) -> list[str]:
        name = _q(f'"{fn["name"]}">\n')
        head = f'{self.tag("<", "invoke name=")} {name}'
        tail = f'"\\n" {self.tag("</", "invoke>")}'
        if self.free_parameters:
            param = (f'{self.tag("<", "parameter name=")} "\\"" /[A-Za-z0-9_.-]+/ "\\" string=\\"" '
                     f'("true" | "false") "\\">" TEXT {self.tag("</", "parameter>")}')
            return [f"{rule}: {head} ({rule}_param (\"\\n\" {rule}_param)*)? {tail}", f"{rule}_param: {param}"]
        schema = fn.get("parameters") or {}
        properties = (schema.get("properties") or {}) if isinstance(schema, dict) else None
        if not isinstance(properties, dict):
            raise ValueError(f"the parameters of {fn['name']} are not an object schema with properties")
        listed = schema.get("required")
        required = {r for r in listed if isinstance(r, str)} if isinstance(listed, list) else set()
        keys = list(properties)
        lines = [f"{rule}: {head} {rule}_first0 {tail}"]
        # first_k: the parameters from the k-th on, the first written without a leading newline;
        # rest_k: the same, each after a newline. Optional ones may be skipped, the order is kept.
        for k, key in enumerate(keys):
            p, nxt = f"{rule}_p{k}", k + 1
            lines.append(f"{p}: {self._param(key, properties[key])}")
            if key in required:
                lines += [f"{rule}_first{k}: {p} {rule}_rest{nxt}", f'{rule}_rest{k}: "\\n" {p} {rule}_rest{nxt}']
            else:
                lines += [f"{rule}_first{k}: {p} {rule}_rest{nxt} | {rule}_first{nxt}",
                          f'{rule}_rest{k}: ("\\n" {p})? {rule}_rest{nxt}']
        lines += [f'{rule}_first{len(keys)}: ""', f'{rule}_rest{len(keys)}: ""']
        return lines

    def _param(self, key: str, schema) -> str:
        schema = schema if isinstance(schema, dict) else {}
        enum = schema.get("enum")
        if isinstance(enum, list) and enum and all(isinstance(v, str) for v in enum):
            flag, value = "true", "(" + " | ".join(_q(v) for v in enum) + ")"
        elif schema.get("type") == "string" and "enum" not in schema:
            flag, value = "true", "TEXT"
        else:
            flag, value = "false", f"%json{json.dumps(schema, allow_nan=False)}"
        opening = _q(f'"{key}" string="{flag}">')
        return f'{self.tag("<", "parameter name=")} {opening} {value} {self.tag("</", "parameter>")}'


def call_grammar(functions: list[dict], dsml_id: int | None, single: bool = False, after_trigger: bool = False,
                 free_parameters: bool = False) -> str:
    """The lark text for call blocks over `functions` (OpenAI `function` objects).

    `single`: exactly one call; `after_trigger`: the text starts after the first `｜DSML｜`;
    `free_parameters`: any parameter names and raw values (only the function names are held)."""
    return _Rules(dsml_id, free_parameters).grammar(functions, single, after_trigger)


def compile_calls(compiler, functions: list[dict], dsml_id: int | None, single: bool = False,
                  after_trigger: bool = False, strict: bool = False):
    """`call_grammar` compiled by an `engine.grammar.GrammarCompiler`.

    A schema llguidance cannot enforce is an error under `strict`; otherwise the call falls back
    to holding the function names alone. Raises `GrammarError` (a ValueError) or RecursionError."""
    try:
        return compiler.lark(call_grammar(functions, dsml_id, single, after_trigger))
    except (ValueError, RecursionError):    # GrammarError is a ValueError; NaN in a schema too
        if strict:
            raise
        return compiler.lark(call_grammar(functions, dsml_id, single, after_trigger, free_parameters=True))
