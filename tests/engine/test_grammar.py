"""Grammar-constrained decoding: random "models" driven through the mask always produce valid documents.

Random logits stand in for a model. Unbiased, they wander: a JSON string only closes when a token
containing a quote is drawn (13 of our 1 024 tokens), so documents run to thousands of tokens. The
tests add a fixed bias of CLOSE_BIAS to the tokens that contain `"`, `}` or `]`, so that a walk ends
within ~150 steps; the grammar itself is never told about the bias, and every token still
comes through the mask.
"""

from __future__ import annotations

import json
import time

import jsonschema
import pytest
import torch

from deepseek.engine.grammar import Grammar, GrammarCompiler, GrammarError
from deepseek.tokenizer import EOS, sample_corpus, train_byte_bpe

MODEL_VOCAB = 1100  # larger than the tokenizer's 1 024: ids 1024.. are padding that never decodes
EOS_ID = 1
MAX_STEPS = 300  # never reached: the longest of 400 seeds per mode measured 143 tokens
CLOSE_BIAS = 4.0

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "color", "tags", "ok"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer():
    tok = train_byte_bpe(sample_corpus(), 1024)
    assert tok.token_to_id(EOS) == EOS_ID
    return tok


@pytest.fixture(scope="module")
def compiler(tokenizer):
    return GrammarCompiler(tokenizer, vocab_size=MODEL_VOCAB, eos_token_id=EOS_ID)


@pytest.fixture(scope="module")
def close_bias(tokenizer):
    bias = torch.zeros(MODEL_VOCAB)
    for i in range(tokenizer.get_vocab_size()):
        if any(c in tokenizer.decode([i]) for c in '"}]'):
            bias[i] = CLOSE_BIAS
    return bias


def random_walk(grammar: Grammar, seed: int, bias: torch.Tensor, timings: list | None = None) -> list[int]:
    """Decode with random logits through the mask until EOS; even seeds take the argmax, odd ones sample."""
    matcher, gen = grammar.matcher(), torch.Generator().manual_seed(seed)
    tokens = []
    for _ in range(MAX_STEPS):
        logits = torch.randn(MODEL_VOCAB, generator=gen) + bias
        start = time.perf_counter()
        matcher.apply(logits)
        if timings is not None:
            timings.append(time.perf_counter() - start)
        if seed % 2 == 0:
            token = int(logits.argmax())
        else:
            token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
        matcher.accept(token)  # raises if the mask let through a token the grammar rejects
        if token == EOS_ID:
            assert matcher.finished
            return tokens
        tokens.append(token)
    pytest.fail(f"seed {seed}: no EOS within {MAX_STEPS} steps")


@pytest.mark.parametrize("seed", range(50))
def test_json_object_mode_always_produces_a_json_object(compiler, tokenizer, close_bias, seed):
    text = tokenizer.decode(random_walk(compiler.json_object(), seed, close_bias))
    assert isinstance(json.loads(text), dict), text


@pytest.mark.parametrize("seed", range(30))
def test_json_schema_mode_output_validates_against_the_schema(compiler, tokenizer, close_bias, seed):
    text = tokenizer.decode(random_walk(compiler.json_schema(PERSON), seed, close_bias))
    jsonschema.validate(json.loads(text), PERSON)


def test_a_finished_document_allows_only_eos(compiler, tokenizer):
    matcher = compiler.json_schema(PERSON).matcher()
    doc = '{"name": "Ada", "age": 36, "color": "blue", "tags": ["x"], "ok": true}'
    for token in tokenizer.encode(doc).ids:
        assert not matcher.allowed_tokens()[EOS_ID], "EOS allowed before the document is complete"
        matcher.accept(token)
    assert matcher.finished
    assert matcher.allowed_tokens().nonzero().flatten().tolist() == [EOS_ID]


def test_masks_have_the_model_vocab_size_and_never_allow_padding_ids(compiler, tokenizer):
    # a lark grammar could name a padding id as <[1050]>; the mask still refuses it
    for grammar in (compiler.json_object(), compiler.lark('start: "a" <[1050]> | "b"')):
        matcher = grammar.matcher()
        allowed = matcher.allowed_tokens()
        assert allowed.shape == (MODEL_VOCAB,) and allowed.dtype == torch.bool
        assert allowed.any() and not allowed[tokenizer.get_vocab_size():].any()
    with pytest.raises(GrammarError, match="outside the tokenizer's vocabulary"):
        matcher.accept(1050)


def test_apply_sets_exactly_the_disallowed_logits_to_minus_infinity(compiler):
    matcher = compiler.json_object().matcher()
    logits = torch.randn(MODEL_VOCAB)
    original = logits.clone()
    matcher.apply(logits)
    allowed = matcher.allowed_tokens()
    assert torch.equal(logits[allowed], original[allowed])
    assert torch.isneginf(logits[~allowed]).all()
    with pytest.raises(ValueError, match="shape"):
        matcher.apply(torch.zeros(1, MODEL_VOCAB))


def test_accepting_a_disallowed_token_raises_and_kills_the_matcher(compiler, tokenizer):
    matcher = compiler.json_object().matcher()
    token = tokenizer.token_to_id("a")
    assert not matcher.allowed_tokens()[token]  # a JSON object starts with "{"
    with pytest.raises(GrammarError, match=f"token {token} is not allowed"):
        matcher.accept(token)
    with pytest.raises(GrammarError, match="rejected an earlier token"):
        matcher.allowed_tokens()


def test_eos_is_rejected_before_the_document_is_complete(compiler, tokenizer):
    matcher = compiler.json_object().matcher()
    matcher.accept(tokenizer.token_to_id("{"))
    with pytest.raises(GrammarError):
        matcher.accept(EOS_ID)


@pytest.mark.parametrize("schema, message", [
    ({"type": "nonsense"}, "Invalid type: nonsense"),
    ({"properties": {"a": {"$ref": "#/nope"}}}, "/nope"),
    ({"type": "string", "pattern": "("}, "unclosed group"),
    (["not", "a", "schema"], "expected an object"),
])
def test_an_invalid_schema_raises_grammar_error_with_the_reason(compiler, schema, message):
    with pytest.raises(GrammarError, match="invalid JSON schema") as info:
        compiler.json_schema(schema)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)  # the server maps ValueErrors from requests to 4xx


def test_whitespace_between_tokens_is_flexible_but_bounded(compiler, tokenizer):
    def accepts(text: str) -> bool:
        matcher = compiler.json_object().matcher()
        try:
            for token in tokenizer.encode(text).ids:
                matcher.accept(token)
        except GrammarError:
            return False
        return matcher.finished

    assert accepts('{"a": [1, 2]}') and accepts('{ "a" : 1 }')
    assert accepts(json.dumps({"a": {"b": [1, {"c": None}]}}, indent=4))
    assert not accepts('{"a":' + " " * 40 + "1}")  # past the 32-column indent
    assert not accepts('{"a":\n\n1}')  # at most one line break per gap
    assert not accepts(' {"a": 1}')  # nothing before the document


def test_a_schema_cannot_lift_the_whitespace_bound(compiler, tokenizer):
    matcher = compiler.json_schema({"type": "object", "x-guidance": {"whitespace_pattern": " *"}}).matcher()
    with pytest.raises(GrammarError):
        for token in tokenizer.encode('{"a":' + " " * 40 + "1}").ids:
            matcher.accept(token)


def test_lark_grammar_yes_or_no(compiler, tokenizer):
    grammar = compiler.lark('start: "yes" | "no"')
    for answer in ("yes", "no"):
        matcher = grammar.matcher()
        for token in tokenizer.encode(answer).ids:
            matcher.accept(token)
        assert matcher.finished
        assert matcher.allowed_tokens().nonzero().flatten().tolist() == [EOS_ID]
    first = grammar.matcher().allowed_tokens().nonzero().flatten().tolist()
    assert {tokenizer.decode([t])[0] for t in first} == {"y", "n"}


def test_an_invalid_lark_grammar_raises_grammar_error(compiler):
    with pytest.raises(GrammarError, match="invalid lark grammar.*unknown name"):
        compiler.lark("start: foo")


def test_a_grammar_is_shared_matchers_are_independent(compiler, tokenizer):
    grammar = compiler.json_object()
    first, second = grammar.matcher(), grammar.matcher()
    first.accept(tokenizer.token_to_id("{"))
    assert not torch.equal(first.allowed_tokens(), second.allowed_tokens())
    assert torch.equal(second.allowed_tokens(), grammar.matcher().allowed_tokens())


def test_a_model_vocab_smaller_than_the_tokenizer_is_refused(tokenizer):
    with pytest.raises(ValueError, match="tokenizer has"):
        GrammarCompiler(tokenizer, vocab_size=1000, eos_token_id=EOS_ID)


def test_report_per_token_mask_time(compiler, tokenizer, close_bias):
    """Not a pass/fail check: prints what one apply() (mask + unpack + masked_fill) costs here.

    The first walks are slower: llguidance builds its lexer states lazily and caches them in the
    shared grammar, so the second pass over the same seeds shows the steady state.
    """
    start = time.perf_counter()
    GrammarCompiler(tokenizer, vocab_size=MODEL_VOCAB, eos_token_id=EOS_ID)
    print(f"\ncompiler setup for a {MODEL_VOCAB}-id vocab: {(time.perf_counter() - start) * 1e3:.1f} ms")
    grammars = {"json_object": compiler.json_object(), "json_schema": compiler.json_schema(PERSON)}
    for name, grammar in grammars.items():
        for phase in ("cold", "warm"):
            timings: list[float] = []
            for seed in range(10):
                random_walk(grammar, seed, close_bias, timings)
            t = sorted(timings)
            print(f"{name} {phase}: {len(t)} masks, mean {sum(t) / len(t) * 1e6:.0f} us, "
                  f"p50 {t[len(t) // 2] * 1e6:.0f} us, max {t[-1] * 1e6:.0f} us")
