"""Constrained decoding through the engine: JSON-object and JSON-schema output from a random model.

A random model emits noise, so the grammar does all the work: every token must keep the output
inside the grammar, and every document the engine ends (finish_reason "stop") must parse. Random
strings rarely close (few tokens contain a quote), so some JSON-object runs hit max_tokens; those
outputs are still valid prefixes. The schema test bounds string lengths, so every run completes.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from deepseek.engine.grammar import GrammarCompiler
from deepseek.engine.request import Request
from deepseek.engine.sampler import SamplingParams


@pytest.fixture(scope="module")
def compiler(tiny_tokenizer, tiny_config):
    return GrammarCompiler(tiny_tokenizer, tiny_config.vocab_size, tiny_config.eos_token_id)


def run_all(engine, requests):
    """Run to completion: ({id: text}, {id: generated token ids}, {id: final output})."""
    texts, tokens, finals = {}, {}, {}
    for r in requests:
        engine.add_request(r)
    while engine.has_unfinished():
        for out in engine.step():
            texts[out.request_id] = texts.get(out.request_id, "") + out.text
            tokens.setdefault(out.request_id, []).extend(out.token_ids)
            if out.finished:
                finals[out.request_id] = out
    return texts, tokens, finals


@pytest.mark.slow
def test_json_object_output_always_parses_when_it_ends(make_engine, compiler):
    grammar = compiler.json_object()
    engine = make_engine(max_num_seqs=50)
    requests = [Request(f"j{seed}", (0, 40, 41, 42), SamplingParams(temperature=1.0, seed=seed, max_tokens=250),
                        grammar=grammar) for seed in range(50)]
    texts, tokens, finals = run_all(engine, requests)
    stopped = [r.request_id for r in requests if finals[r.request_id].finish_reason == "stop"]
    assert len(stopped) >= 10
    for rid in stopped:
        assert isinstance(json.loads(texts[rid]), dict), texts[rid]
        assert tokens[rid][-1] == 1                      # the document ended with EOS
    for r in requests:   # cut-off documents are still prefixes the grammar accepts, token by token
        matcher = grammar.matcher()
        for token in tokens[r.request_id]:
            matcher.accept(token)
        assert matcher.finished == (finals[r.request_id].finish_reason == "stop")
    engine.check_integrity()


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "role": {"enum": ["admin", "user", "guest"]},
        "active": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["a", "bb", "ccc"]}, "maxItems": 3},
    },
    "required": ["name", "age", "role", "active", "tags"],
    "additionalProperties": False,
}


@pytest.mark.slow
def test_json_schema_output_validates(make_engine, compiler):
    grammar = compiler.json_schema(SCHEMA)
    engine = make_engine(max_num_seqs=20)
    requests = [Request(f"s{seed}", (0, 50, 51), SamplingParams(temperature=1.0, seed=seed, max_tokens=300),
                        grammar=grammar) for seed in range(20)]
    texts, _, finals = run_all(engine, requests)
    for r in requests:
        assert finals[r.request_id].finish_reason == "stop", texts[r.request_id]
        jsonschema.validate(json.loads(texts[r.request_id]), SCHEMA)


def test_grammar_starts_only_after_its_trigger_token(make_engine, compiler, tiny_tokenizer):
    """Thinking mode: reasoning is free text and the grammar applies after `</think>`. Here the
    trigger is whatever token the free greedy run emits first, so the first token is unconstrained
    and everything after it must follow the grammar."""
    prompt = (0, 60, 61)
    free = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    _, tokens, _ = run_all(make_engine(), [Request("free", prompt, free)])
    trigger = tokens["free"][0]
    grammar = compiler.json_schema({"enum": ["yes", "no"]})
    texts, tokens, finals = run_all(make_engine(), [Request(
        "gated", prompt, SamplingParams(temperature=0, max_tokens=20), grammar=grammar,
        grammar_after_token=trigger)])
    assert tokens["gated"][0] == trigger and finals["gated"].finish_reason == "stop"
    answer = tiny_tokenizer.decode(tokens["gated"][1:-1], skip_special_tokens=False)
    assert json.loads(answer) in ("yes", "no")
