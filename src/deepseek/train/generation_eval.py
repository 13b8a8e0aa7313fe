"""Generation-based evaluation: does the trained model call tools, answer in JSON, write Python?

Loss says how well a model predicts reference text; these metrics say whether what it writes
itself, decoding greedily through the offline engine, is usable: a DSML tool call with the right
function and arguments, a JSON object with the expected keys, a function body that parses.
Every metric submits all its requests in one engine call, so continuous batching runs them together.

Each metric is a generation step and a pure scoring function (`score_tool_call`, `score_json`,
`cut_function_body`); the scorers are what the tests pin down, on hand-written outputs.

Prompts go in as the server sends them: chat prompts already hold BOS and special tokens as text,
and the tokenizer maps those to their ids (`LLM.generate` would prepend a second BOS to a str).
Outputs come back with special tokens decoded (`<｜DSML｜...`, `</think>`), which the DSML parser
needs, and without the EOS token that ended them.
"""

from __future__ import annotations

import ast
import json
import textwrap
from collections import Counter
from typing import Any, Sequence

from deepseek.chat import parse_completion
from deepseek.chat.call_grammar import compile_calls
from deepseek.engine.grammar import GrammarCompiler
from deepseek.engine.llm import LLM, Completion
from deepseek.engine.request import Request
from deepseek.engine.sampler import SamplingParams
from deepseek.tokenizer import DSML, THINK_CLOSE

MAX_SAMPLES = 5
PROMPT_TAIL = 200   # characters of the prompt a failure sample shows: the question, not the tools block


# ----- generation -----

def prompt_ids(llm: LLM, prompt: str) -> tuple[int, ...]:
    """A rendered chat prompt (BOS and specials as text) -> token ids, as the server encodes it."""
    ids = tuple(llm.engine.tokenizer.encode(prompt, add_special_tokens=False).ids)
    if not ids or ids[0] != llm.engine.model.config.bos_token_id:
        raise ValueError("a chat prompt must start with the BOS token")
    return ids


def generate_chat(llm: LLM, examples: Sequence, params: SamplingParams, attention: str = "sparse",
                  grammars: Sequence | None = None, after_token: int | None = None) -> list[Completion]:
    """Greedy-or-not completions of chat examples in one batch, optionally grammar-constrained
    (`grammars`: one per example, None for free text).

    As in the server's chat route, a grammar starts after `after_token` if given (a tool call's
    `｜DSML｜` trigger), else after `</think>` for thinking-mode examples, else at once.
    `LLM.generate` takes no grammar, so the requests are built here and run with `LLM.run`.
    """
    think_close = llm.engine.tokenizer.token_to_id(THINK_CLOSE)
    grammars = grammars or [None] * len(examples)

    def trigger(example, grammar) -> int | None:
        if grammar is None:
            return None
        if after_token is not None:
            return after_token
        return think_close if example.thinking else None

    requests = [Request(f"eval-{i}", prompt_ids(llm, e.prompt), params, sparse=attention == "sparse",
                        grammar=g, grammar_after_token=trigger(e, g))
                for i, (e, g) in enumerate(zip(examples, grammars))]
    return llm.run(requests)


def _compiler(llm: LLM) -> GrammarCompiler:
    config = llm.engine.model.config
    return GrammarCompiler(llm.engine.tokenizer, config.vocab_size, config.eos_token_id)


def _greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens)


def _rate(count: int, n: int) -> float:
    return count / n if n else 0.0


# ----- tool calls -----

def same_json(a: Any, b: Any) -> bool:
    """Equality of decoded JSON values: 3 == 3.0, but true is not 1 (Python's == says it is)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers):
        return a == b
    return type(a) is type(b) and a == b


def score_tool_call(text: str, example) -> str:
    """The outcome of one completion that should make exactly one call, `example.expected`.

    "exact" (right function, equal arguments), "right_function" (wrong arguments),
    "wrong_function", "multiple_calls", "no_call" (plain content, or still reasoning when it was
    cut off), or "malformed" (DSML markup the parser could not read, e.g. cut off by max_tokens).
    """
    tools = list(example.tools) if example.tools else None
    message = parse_completion(text, example.thinking, tools)
    if message.malformed:
        return "malformed"
    if not message.tool_calls:
        return "no_call"
    if len(message.tool_calls) > 1:
        return "multiple_calls"
    call, expected = message.tool_calls[0], example.expected
    if call.name != expected["name"]:
        return "wrong_function"
    return "exact" if same_json(json.loads(call.arguments), expected["arguments"]) else "right_function"


def tool_call_accuracy(llm: LLM, examples: Sequence, attention: str = "sparse", max_tokens: int = 160,
                       constrained: bool = True) -> dict:
    """Greedy tool calls scored against the expected call.

    `constrained` holds a call the model begins to the offered functions and their schemas, as the
    server does under tool_choice "auto" (`chat.call_grammar`, from the first `｜DSML｜` token on);
    whether to call, which function and what values stay the model's choice.
    `right_function` counts every completion that called the expected function (exact ones
    included), so 0 <= exact <= right_function <= n.
    """
    grammars, dsml = None, llm.engine.tokenizer.token_to_id(DSML)
    if constrained:
        compiler = _compiler(llm)
        grammars = [compile_calls(compiler, [t["function"] for t in e.tools], dsml, after_trigger=True)
                    for e in examples]
    outputs = generate_chat(llm, examples, _greedy(max_tokens), attention, grammars, dsml)
    outcomes = [score_tool_call(out.text, e) for out, e in zip(outputs, examples)]
    counts = Counter(outcomes)
    failures = [{"outcome": o, "prompt_tail": e.prompt[-PROMPT_TAIL:], "output": out.text,
                 "expected": e.expected}
                for o, out, e in zip(outcomes, outputs, examples) if o != "exact"]
    n = len(examples)
    return {"n": n, "exact": counts["exact"], "right_function": counts["exact"] + counts["right_function"],
            "no_call": counts["no_call"], "malformed": counts["malformed"], "rate": _rate(counts["exact"], n),
            "constrained": constrained, "outcomes": dict(counts), "samples": failures[:MAX_SAMPLES]}


# ----- JSON answers -----

def score_json(text: str, keys: Sequence[str]) -> str:
    """The outcome of one JSON answer: "keys_present", "missing_keys" or "not_object".

    "missing_keys" is a JSON object without some of `keys`; "not_object" is anything that does
    not parse, or parses to something other than an object.
    """
    try:
        value = json.loads(text)
    except ValueError:
        return "not_object"
    if not isinstance(value, dict):
        return "not_object"
    return "keys_present" if all(k in value for k in keys) else "missing_keys"


def json_accuracy(llm: LLM, examples: Sequence, attention: str = "sparse", max_tokens: int = 120,
                  constrained: bool = True) -> dict:
    """Greedy JSON answers (after any reasoning) scored on the expected keys.

    `constrained` applies the grammar the server uses for response_format json_object; a
    constrained answer cut off by max_tokens is a JSON prefix and counts as not parsed.
    """
    grammars = [_compiler(llm).json_object()] * len(examples) if constrained else None
    outputs = generate_chat(llm, examples, _greedy(max_tokens), attention, grammars)
    answers = [parse_completion(out.text, e.thinking).content for out, e in zip(outputs, examples)]
    outcomes = [score_json(a, e.expected["keys"]) for a, e in zip(answers, examples)]
    counts = Counter(outcomes)
    failures = [{"outcome": o, "prompt_tail": e.prompt[-PROMPT_TAIL:], "output": out.text,
                 "expected": e.expected}
                for o, out, e in zip(outcomes, outputs, examples) if o != "keys_present"]
    n = len(examples)
    return {"n": n, "parsed": counts["keys_present"] + counts["missing_keys"],
            "keys_present": counts["keys_present"], "rate": _rate(counts["keys_present"], n),
            "constrained": constrained, "samples": failures[:MAX_SAMPLES]}


# ----- code -----

def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def cut_function_body(header: str, completion: str) -> str:
    """The function `header` opens, with the body `completion` gives it: decorators, def, body.

    The body ends before the first non-blank line indented at or left of the `def` line; a
    completion that never comes back out (cut off by max_tokens) is all body.
    """
    lines = header.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith(("def ", "async def "))]
    if not starts:
        raise ValueError("the header has no def line")
    start = starts[-1]
    depth = _indent(lines[start])
    while start > 0 and lines[start - 1].lstrip().startswith("@") and _indent(lines[start - 1]) == depth:
        start -= 1
    body = []
    for line in completion.splitlines(keepends=True):
        if line.strip() and _indent(line) <= depth:
            break
        body.append(line)
    return "".join(lines[start:] + body)


def parses(source: str) -> bool:
    try:
        ast.parse(textwrap.dedent(source))
    except (SyntaxError, ValueError):   # ValueError: a NUL byte in the source
        return False
    return True


def code_parse_rate(llm: LLM, headers: Sequence[str], attention: str = "sparse", max_tokens: int = 128) -> dict:
    """Greedy function bodies for `def` headers: how many make a function that parses.

    The prompt stops at the header's colon, without its newline: byte-level BPE merges a newline
    with the indentation after it, so a prompt ending in a bare newline token tells the model that
    an unindented line comes next."""
    prompts = [h[:-1] if h.endswith("\n") else h for h in headers]
    outputs = llm.generate(prompts, _greedy(max_tokens), attention=attention)
    # The body follows the newline the prompt left out; an output without one has no body.
    functions = [cut_function_body(h, out.text[1:] if out.text.startswith("\n") else "")
                 for h, out in zip(headers, outputs)]
    ok = [parses(f) for f in functions]
    good = [f for f, p in zip(functions, ok) if p][:2]
    bad = [f for f, p in zip(functions, ok) if not p][:2]
    n = len(headers)
    return {"n": n, "parsed": sum(ok), "rate": _rate(sum(ok), n),
            "samples": [{"parsed": True, "function": f} for f in good]
            + [{"parsed": False, "function": f} for f in bad]}
