"""Grammar-constrained decoding: JSON mode, JSON schemas (strict tools) and lark grammars as token masks.

The engine's hook for `response_format` and strict function calling (spec/api.md §A4, §A5). One
`GrammarCompiler` per model turns a schema or grammar into a `Grammar`; every sequence that uses it
gets its own `Matcher`, and each decode step is

    matcher.apply(logits_row)        # disallowed ids -> -inf, in place
    token = sampler(...)
    matcher.accept(token)

llguidance does the work (MIT, no dependencies; the choice is measured in spec/ecosystem.md §3).

Whitespace. JSON allows any amount of whitespace between tokens, and a model that has not been told
to write JSON may emit it forever (the failure §A4 warns about). `JSON_WHITESPACE` keeps it flexible
enough for any pretty-printer but bounded: each run between two JSON tokens holds at most one line
break and an indent of 32 columns, and none may come before the document or after it (the matcher
stops at the closing brace). It is passed as an *override*, so a schema's "x-guidance" cannot lift it.

Length. Nothing else bounds a document: strings, arrays and objects are unbounded (strict mode
forbids maxLength and maxItems), so the request's max_tokens is the only limit. When it cuts a
document the response ends with finish_reason "length" and content that is a JSON prefix which does
not parse; that is the API's documented behaviour, and clients retry with a larger max_tokens.
"""

from __future__ import annotations

import json

import llguidance
# The numpy helpers, not llguidance.torch: importing that one builds a torch.compile kernel (~2.5 s).
import llguidance.numpy as llg_numpy
import numpy as np
import torch

# At most one line break, then an indent of up to 32 columns: indent=2 to depth 16, indent=4 to depth 8.
JSON_WHITESPACE = r"(?:\r?\n)?[\x20\x09]{0,32}"
_JSON_OPTIONS = {"whitespace_flexible": True, "whitespace_pattern": JSON_WHITESPACE}


class GrammarError(ValueError):
    """A schema or grammar that cannot be compiled, or a token the grammar does not allow.

    Compile errors come from the request, so the server answers them with a 4xx.
    """


class GrammarCompiler:
    """Compiles grammars for one tokenizer and one model vocabulary.

    `tokenizer` is a `tokenizers.Tokenizer` (our checkpoints' tokenizer.json). `vocab_size` is the
    model's, which may be larger than the tokenizer's: the extra ids are padding rows of the
    embedding that never decode, and no mask ever allows them.
    """

    def __init__(self, tokenizer, vocab_size: int, eos_token_id: int):
        n_tokens = tokenizer.get_vocab_size(with_added_tokens=True)
        if n_tokens > vocab_size:
            raise ValueError(f"the tokenizer has {n_tokens} tokens but the model only {vocab_size}")
        if not 0 <= eos_token_id < n_tokens:
            raise ValueError(f"eos_token_id {eos_token_id} is not a token of the tokenizer")
        self.vocab_size, self.eos_token_id, self.n_tokens = vocab_size, eos_token_id, n_tokens
        # llguidance reads the tokenizer.json text, as its transformers helper (llguidance/hf.py)
        # does; padding and truncation are switched off there too, as they would change encodings.
        spec = json.loads(tokenizer.to_str())
        spec["padding"] = spec["truncation"] = None
        # Slow for a real vocabulary (~1 s for 128k tokens): built once here, shared by every grammar.
        self._lltokenizer = llguidance.LLTokenizer(json.dumps(spec), n_vocab=vocab_size,
                                                   eos_token=eos_token_id)
        # Error messages go back to API clients: no parser state dumps in them.
        self._limits = llguidance.LLParserLimits(verbose_errors=False)

    def json_object(self) -> Grammar:
        """Any JSON object: response_format {"type": "json_object"}."""
        return self.json_schema({"type": "object"})

    def json_schema(self, schema: dict) -> Grammar:
        """Documents valid under `schema`: response_format json_schema and strict tools."""
        if not isinstance(schema, dict):
            raise GrammarError(f"invalid JSON schema: expected an object, got {type(schema).__name__}")
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=_JSON_OPTIONS)
        except (TypeError, ValueError) as e:  # not JSON-serialisable
            raise GrammarError(f"invalid JSON schema: {e}") from e
        return self._compile(grammar, "JSON schema")

    def lark(self, grammar: str) -> Grammar:
        """A raw lark grammar in llguidance's dialect (special tokens are written `<name>`)."""
        return self._compile(llguidance.LLMatcher.grammar_from_lark(grammar), "lark grammar")

    def _compile(self, grammar: str, what: str) -> Grammar:
        # Building the matcher compiles the grammar; it reports errors through get_error(), never raises.
        prototype = llguidance.LLMatcher(self._lltokenizer, grammar, log_level=0, limits=self._limits)
        if prototype.is_error():
            raise GrammarError(f"invalid {what}: {_message(prototype.get_error())}")
        return Grammar(prototype, self.vocab_size, self.n_tokens)


class Grammar:
    """A compiled grammar: immutable, shared by every request that uses it."""

    def __init__(self, prototype: llguidance.LLMatcher, vocab_size: int, n_tokens: int):
        self._prototype = prototype  # never advanced; each matcher starts from a copy
        self._vocab_size, self._n_tokens = vocab_size, n_tokens

    def matcher(self) -> Matcher:
        """A fresh matcher at the start of the document (a cheap copy: no recompilation)."""
        return Matcher(self._prototype.deep_copy(), self._vocab_size, self._n_tokens)


class Matcher:
    """The grammar state of one sequence.

    Invariants: `allowed_tokens()` has the model's vocab size, never allows padding ids, and allows
    EOS exactly when the text so far is a complete document; once `finished`, EOS is all it allows.
    A rejected token leaves the matcher dead (every later call raises `GrammarError`): the engine
    only samples allowed tokens, so a rejection means the sequence must be aborted.
    """

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int, n_tokens: int):
        self._matcher = matcher
        self._vocab_size, self._n_tokens = vocab_size, n_tokens
        self._words = np.zeros((1, (vocab_size + 31) // 32), dtype=np.int32)  # llguidance's bitmask
        self._allowed: torch.Tensor | None = None  # computed once per state, reused until accept()

    def allowed_tokens(self) -> torch.Tensor:
        """Bool [vocab_size]: the tokens that may come next."""
        if self._allowed is None:
            self._raise_if_dead()
            llg_numpy.fill_next_token_bitmask(self._matcher, self._words, 0)
            # Bit i of word w is token 32*w + i: little-endian bytes unpacked little-bit-first.
            as_bytes = self._words[0].astype("<i4", copy=False).view(np.uint8)
            bits = np.unpackbits(as_bytes, bitorder="little")[: self._vocab_size]
            bits[self._n_tokens:] = 0  # padding ids never decode
            self._allowed = torch.from_numpy(bits.astype(bool))
        return self._allowed

    def apply(self, logits: torch.Tensor) -> None:
        """Set the disallowed entries of one row of logits [vocab_size] to -inf, in place."""
        if logits.shape != (self._vocab_size,):
            raise ValueError(f"expected logits of shape ({self._vocab_size},), got {tuple(logits.shape)}")
        allowed = self.allowed_tokens().to(logits.device, non_blocking=True)
        logits.masked_fill_(~allowed, float("-inf"))

    def accept(self, token_id: int) -> None:
        """Advance past `token_id`; GrammarError if the grammar does not allow it here."""
        self._raise_if_dead()
        # Checked here because llguidance knows padding ids as placeholders a lark grammar could name.
        if not 0 <= token_id < self._n_tokens:
            raise GrammarError(f"token {token_id} is outside the tokenizer's vocabulary")
        self._allowed = None
        if not self._matcher.consume_token(token_id):
            raise GrammarError(f"token {token_id} is not allowed here: {_message(self._matcher.get_error())}")

    @property
    def finished(self) -> bool:
        """The document is complete and cannot be extended: EOS must come next."""
        return self._matcher.is_stopped() and not self._matcher.is_error()

    def _raise_if_dead(self) -> None:
        # A dead llguidance matcher masks everything but EOS, which would end the sequence silently.
        if self._matcher.is_error():
            error = _message(self._matcher.get_error())
            raise GrammarError(f"the matcher rejected an earlier token: {error}")


def _message(error: str) -> str:
    """llguidance's error text without the placeholder that replaces its state dump."""
    return error.replace("<non-verbose/>", "").strip()
