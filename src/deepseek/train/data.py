"""Training and evaluation data for the nano model, generated offline and deterministic from a seed.

Two sources. Chat examples (tool calls, answers from tool results, JSON: `conversations.py`;
short Q&A, thinking-mode turns: `questions.py`) are rendered with the project's own V3.2
encoder, so the model learns exactly the prompt format the server sends. Code comes from the running
interpreter's standard library. Both have a held-out split that shares nothing with training:
held-out tool schemas and phrasings (see `synthetic.py`), held-out stdlib files by path hash.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import re
import textwrap
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Callable

from deepseek.chat.dsml import render_tool_calls
from deepseek.chat.encoding import encode_request
from deepseek.tokenizer import EOS, THINK_CLOSE

from . import conversations, questions
from .conversations import Chat
from .synthetic import text as spelled

KINDS = ("tool_call", "tool_answer", "json", "qa", "thinking")
SPLITS = ("train", "heldout")
DEFAULT_WEIGHTS = {"tool_call": 0.3, "tool_answer": 0.15, "json": 0.15, "qa": 0.25, "thinking": 0.15}
# the kinds whose generators can make up names (their `invented` argument)
INVENTIVE = ("tool_call", "tool_answer", "json")
GENERATORS: dict[str, Callable[[random.Random, str], Chat]] = {
    "tool_call": conversations.tool_call, "tool_answer": conversations.tool_answer,
    "json": conversations.json_object, "qa": questions.qa, "thinking": questions.thinking}


@dataclass(frozen=True)
class Example:
    kind: str  # one of KINDS
    prompt: str  # BOS ... generation marker, from encode_request
    completion: str  # what the model must write, ending with EOS
    messages: tuple  # OpenAI-format request messages, for evaluation through the API
    tools: tuple | None  # OpenAI-format tools of the request
    thinking: bool
    expected: dict  # tool_call: {"name", "arguments"}; json: {"keys": [...]}; else {}


def examples(kind: str, n: int, split: str, seed: int, invented: float = 0.0) -> list[Example]:
    """`n` examples of one kind; the same arguments always give the same list (and n is a prefix).
    `invented`: the share of training tool calls, tool answers and JSON requests whose tool names or
    JSON keys are made up, so that they can only be copied from the request (never held-out ones)."""
    if kind not in KINDS or split not in SPLITS:
        raise ValueError(f"unknown kind {kind!r} or split {split!r}")
    rng = random.Random(f"{kind}/{split}/{seed}")
    make = partial(GENERATORS[kind], invented=invented) if kind in INVENTIVE else GENERATORS[kind]
    return [_render(kind, make(rng, split)) for _ in range(n)]


def mixture(n: int, split: str, seed: int, weights: dict[str, float] | None = None,
            invented: float = 0.0) -> list[Example]:
    """`n` examples of all kinds in proportion to `weights`, interleaved in a seeded order."""
    weights = DEFAULT_WEIGHTS if weights is None else weights
    if set(weights) - set(KINDS) or any(w < 0 for w in weights.values()) or not sum(weights.values()) > 0:
        raise ValueError(f"weights must be non-negative, not all zero, over {KINDS}: {weights}")
    total = sum(weights.values())
    shares = {kind: n * weights.get(kind, 0) / total for kind in KINDS}
    counts = {kind: int(share) for kind, share in shares.items()}
    # Largest remainders get the examples that rounding down left over.
    for kind in sorted(KINDS, key=lambda k: counts[k] - shares[k])[:n - sum(counts.values())]:
        counts[kind] += 1
    pools = {kind: iter(examples(kind, count, split, seed, invented)) for kind, count in counts.items()}
    order = [kind for kind in KINDS for _ in range(counts[kind])]
    random.Random(f"mixture/{split}/{seed}").shuffle(order)
    return [next(pools[kind]) for kind in order]


def templates(kind: str, split: str) -> tuple[str, ...]:
    """Every user-turn template `kind` uses in `split`; the two splits share none."""
    if kind in ("tool_call", "tool_answer"):
        return conversations.TOOL_FRAMES[split]
    if kind == "json":
        return conversations.JSON_FRAMES[split]
    families = questions.QA if kind == "qa" else questions.THINKING
    return tuple(frame for family in families.values() for frame in getattr(family, split))


def _render(kind: str, chat: Chat) -> Example:
    prompt = encode_request(list(chat.messages), tools=list(chat.tools) if chat.tools else None,
                            thinking=chat.thinking)
    return Example(kind, prompt, completion(chat.reply, chat.thinking), chat.messages, chat.tools,
                   chat.thinking, chat.expected)


def completion(reply: dict, thinking: bool) -> str:
    """The assistant turn as the encoder renders it after the prompt: [reasoning</think>]content[calls]EOS."""
    calls = [(call["function"]["name"], json.loads(call["function"]["arguments"]))
             for call in reply.get("tool_calls") or []]
    reasoning = (reply.get("reasoning_content") or "") + THINK_CLOSE if thinking else ""
    return reasoning + (reply.get("content") or "") + (render_tool_calls(calls) if calls else "") + EOS


def copy_sources(example: Example) -> list[tuple[int, int]]:
    """Where the reply copies from the prompt: (offset in `completion` where a copied item starts,
    offset in `prompt` where the model can read it), in reply order.

    Tool calls copy the function's name from the function list and each argument value that the
    user's message spells out as a whole word; JSON replies copy each requested key from the user's
    message. Values the user only implies (a boolean, a class they named differently) have no source."""
    reply, prompt, cursor, found = example.completion, example.prompt, 0, []
    user = example.messages[-1]["content"]
    user_at = prompt.rfind(user) if isinstance(user, str) else -1

    def from_user(at: int, item: str) -> None:     # the item's first whole-word occurrence there
        word = re.search(rf"(?<!\w){re.escape(item)}(?!\w)", user) if item else None
        if word:
            found.append((at, user_at + word.start()))

    if example.kind == "tool_call" and example.expected:
        name = example.expected["name"]
        cursor = reply.index(f'invoke name="{name}"') + len('invoke name="')
        source = prompt.find(f'"name": "{name}"')
        if source >= 0:
            found.append((cursor, source + len('"name": "')))
        for key, value in example.expected["arguments"].items():
            cursor = reply.index(">", reply.index(f'parameter name="{key}"', cursor)) + 1
            if user_at >= 0 and not isinstance(value, bool):
                from_user(cursor, spelled(value))
    elif example.kind == "json" and user_at >= 0:
        for key in example.expected["keys"]:
            cursor = reply.index(f'"{key}":', cursor) + 1
            from_user(cursor, key)
    return found


# --- code: the standard library ----------------------------------------------------------------

_SKIPPED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
_MAX_BYTES = 200_000
_HEADER_CONTEXT = 20  # lines of the file shown before a function's decorators
_HEADERS_PER_FILE = 3  # files are read until n headers take at most 3 from each: no few files dominate


def code_split_of(relative_path: str) -> str:
    """About 5% of stdlib files are held out, by a hash of their path that never changes."""
    return "heldout" if hashlib.sha256(relative_path.encode()).digest()[0] < 13 else "train"


def stdlib_files(split: str) -> list[tuple[str, str]]:
    """(path relative to the stdlib root, source) for the split's `.py` files, sorted by path."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    return [(path, source) for path, source in _stdlib() if code_split_of(path) == split]


@lru_cache(maxsize=1)
def _stdlib() -> tuple[tuple[str, str], ...]:
    root = os.path.dirname(os.__file__)
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
        for name in files:
            full = os.path.join(folder, name)
            if name.endswith(".py") and os.path.getsize(full) <= _MAX_BYTES:
                try:
                    with open(full, encoding="utf-8") as f:
                        found.append((os.path.relpath(full, root).replace(os.sep, "/"), f.read()))
                except (UnicodeDecodeError, OSError):
                    continue
    return tuple(sorted(found))


def function_headers(split: str, n: int, seed: int) -> list[str]:
    """`n` code prompts from the split's files, each ending with a `def ...:` header and a newline.

    A prompt is the ~20 lines before a top-level function or method, its decorators and its
    signature, exactly as in the file; the model writes the body. Only functions whose source
    parses on its own after dedenting are used, spread over as many files as `n` needs, none
    twice, and none that occurs verbatim in a file of the other split. Fewer than `n` come
    back only if the split has fewer such functions.
    """
    files = stdlib_files(split)
    rng = random.Random(f"headers/{split}/{seed}")
    per_file: list[list[str]] = []
    seen: set[str] = set()
    for index in rng.sample(range(len(files)), len(files)):  # parse only as many files as needed
        found = [h for h in _headers(files[index][1]) if h not in seen and not _in_other_split(h, split)]
        seen.update(found)
        rng.shuffle(found)
        per_file.append(found)
        if sum(min(len(f), _HEADERS_PER_FILE) for f in per_file) >= n:
            break
    # Round-robin over the files: each gives its first header before any gives a second.
    rounds = max(map(len, per_file), default=0)
    return [f[i] for i in range(rounds) for f in per_file if i < len(f)][:n]


def _in_other_split(header: str, split: str) -> bool:
    # Boilerplate (encodings/*.py, near-copies like chunk.py) repeats across files: a held-out
    # prompt that also occurs in a training file would test recall, not completion.
    return header in _split_text("train" if split == "heldout" else "heldout")


@lru_cache(maxsize=2)
def _split_text(split: str) -> str:
    return "\0".join(source for _, source in stdlib_files(split))


def _headers(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = [line + "\n" for line in source.split("\n")]  # ast counts lines by "\n" only
    out = []
    for node in _functions(tree.body):
        first = min([d.lineno for d in node.decorator_list] + [node.lineno])
        end = _signature_end(node, lines)
        if end is None or not _parses("".join(lines[first - 1:node.end_lineno])):
            continue
        out.append("".join(lines[max(0, first - 1 - _HEADER_CONTEXT):end]))
    return out


def _functions(body: list[ast.stmt]):
    """Top-level functions and methods (of classes at any depth), not functions inside functions."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node.body)


def _signature_end(node: ast.FunctionDef, lines: list[str]) -> int | None:
    """The 1-based line that ends the signature with ':', if the body starts on a later line."""
    for number in range(node.body[0].lineno - 1, node.lineno - 1, -1):
        line = lines[number - 1].strip()
        if line and not line.startswith("#"):
            return number if lines[number - 1].endswith(":\n") else None
    return None


def _parses(source: str) -> bool:
    try:
        ast.parse(textwrap.dedent(source))
    except SyntaxError:
        return False
    return True
