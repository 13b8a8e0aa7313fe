"""The sampler: greedy, seeded sampling, top-k/top-p support, OpenAI penalties, logprobs, validation."""

from collections import Counter

import math

import pytest
import torch

from deepseek.engine.sampler import (SampleOutput, Sampler, SamplingParams, apply_penalties,
                                     inverse_cdf, make_generator)

VOCAB = 50


def random_logits(rows: int, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def logits_of(probs: list[float]) -> torch.Tensor:
    return torch.tensor(probs).log().unsqueeze(0)


def draw_many(logits: torch.Tensor, params: SamplingParams, draws: int, seed: int = 1234) -> Counter:
    """`draws` tokens from one row, all from one seeded generator (deterministic)."""
    sampler, generator = Sampler(), torch.Generator().manual_seed(seed)
    batch = logits.expand(draws, -1)
    out = sampler.sample(batch, [params] * draws, [generator] * draws)
    return Counter(out.token_ids.tolist())


def test_greedy_takes_the_argmax_of_each_row():
    logits = random_logits(6)
    out = Sampler().sample(logits, [SamplingParams(temperature=0)] * 6)
    assert out.token_ids.dtype == torch.int64
    assert torch.equal(out.token_ids, logits.argmax(-1))
    assert out.logprobs is None and out.top_logprobs is None


def test_same_seed_gives_same_tokens_whatever_shares_the_batch():
    logits = random_logits(1, seed=3)
    params = SamplingParams(temperature=1.2, top_p=0.9, seed=7)

    def run(companions: list[SamplingParams], steps: int = 20) -> list[int]:
        sampler, batch = Sampler(), [params] + companions
        generators = [make_generator(p) for p in batch]
        rows = torch.cat([logits, random_logits(len(companions), seed=9)]) if companions else logits
        return [sampler.sample(rows, batch, generators).token_ids[0].item() for _ in range(steps)]

    alone = run([])
    crowded = run([SamplingParams(temperature=0), SamplingParams(top_k=3, seed=1), SamplingParams()])
    assert alone == crowded
    assert len(set(alone)) > 1  # it really sampled


def test_low_temperature_behaves_like_greedy():
    logits = random_logits(4, seed=5)
    params = [SamplingParams(temperature=0.01, seed=i) for i in range(4)]
    out = Sampler().sample(logits, params, [make_generator(p) for p in params])
    assert torch.equal(out.token_ids, logits.argmax(-1))


def test_top_k_of_one_equals_greedy():
    logits = random_logits(8, seed=11)
    params = [SamplingParams(temperature=1.5, top_k=1)] * 8
    assert torch.equal(Sampler().sample(logits, params).token_ids, logits.argmax(-1))


@pytest.mark.parametrize("top_p, support", [(0.45, {0}), (0.75, {0, 1}), (0.81, {0, 1, 2}),
                                            (0.97, {0, 1, 2, 3}), (1.0, {0, 1, 2, 3, 4})])
def test_top_p_keeps_the_smallest_set_reaching_its_mass(top_p, support):
    # masses 0.5, 0.3, 0.15, 0.04, 0.01, shuffled over the vocabulary
    order = [3, 0, 4, 1, 2]
    probs = [0.0] * 5
    for rank, token in enumerate(order):
        probs[token] = [0.5, 0.3, 0.15, 0.04, 0.01][rank]
    seen = draw_many(logits_of(probs), SamplingParams(top_p=top_p), 3000)
    assert set(seen) == {order[r] for r in support}


def test_top_p_is_exact_when_the_nucleus_is_wider_than_the_first_window():
    # A flat distribution over 1000 tokens: top_p=0.5 needs the 500 likeliest, more than the
    # 16-wide first topk window, so the window must grow.
    logits = torch.linspace(0, 1e-3, 1000).unsqueeze(0)  # token 999 likeliest, ties avoided
    seen = draw_many(logits, SamplingParams(top_p=0.5), 4000)
    out = Sampler(top_p_window=16).sample(logits.expand(4000, -1), [SamplingParams(top_p=0.5)] * 4000,
                                          [torch.Generator().manual_seed(2)] * 4000)
    for tokens in (set(seen), set(out.token_ids.tolist())):
        assert min(tokens) >= 500 and len(tokens) > 400


def test_top_p_applies_to_the_top_k_renormalised_mass():
    probs = [0.4, 0.3, 0.2, 0.1]
    # top-2 renormalises to 4/7, 3/7: top_p=0.5 keeps only token 0, 0.6 keeps both.
    assert set(draw_many(logits_of(probs), SamplingParams(top_k=2, top_p=0.5), 2000)) == {0}
    assert set(draw_many(logits_of(probs), SamplingParams(top_k=2, top_p=0.6), 2000)) == {0, 1}


def test_empirical_frequencies_match_the_distribution():
    probs = [0.1, 0.2, 0.3, 0.4]
    draws = 4000
    seen = draw_many(logits_of(probs), SamplingParams(), draws, seed=42)
    for token, p in enumerate(probs):
        sigma = math.sqrt(p * (1 - p) / draws)
        assert abs(seen[token] / draws - p) < 4 * sigma


def test_temperature_flattens_and_sharpens_as_softmax_of_logits_over_t():
    probs = torch.tensor([0.2, 0.8])
    for temperature in (0.5, 2.0):
        expected = torch.softmax(probs.log() / temperature, -1)[1].item()
        seen = draw_many(probs.log().unsqueeze(0), SamplingParams(temperature=temperature), 4000, seed=5)
        assert abs(seen[1] / 4000 - expected) < 4 * math.sqrt(expected * (1 - expected) / 4000)


def test_penalties_follow_the_openai_formula():
    logits = random_logits(3)
    counts = [Counter({4: 3, 7: 1}), torch.bincount(torch.tensor([2, 2, 9]), minlength=VOCAB), None]
    params = [SamplingParams(frequency_penalty=0.5, presence_penalty=1.5),
              SamplingParams(frequency_penalty=-1.0, presence_penalty=0.25),
              SamplingParams(frequency_penalty=2.0)]
    out = apply_penalties(logits, params, counts)
    expected = logits.clone()
    expected[0, 4] -= 3 * 0.5 + 1.5
    expected[0, 7] -= 1 * 0.5 + 1.5
    expected[1, 2] -= 2 * -1.0 + 0.25
    expected[1, 9] -= 1 * -1.0 + 0.25
    assert torch.allclose(out, expected)
    assert not torch.equal(out, logits)  # the caller's logits are untouched: a copy was penalised


def test_penalties_steer_greedy_away_from_repeated_tokens():
    logits = torch.tensor([[2.0, 1.9, 0.0]])
    params = [SamplingParams(temperature=0, presence_penalty=0.5)]
    assert Sampler().sample(logits, params, None, [Counter({0: 1})]).token_ids.item() == 1
    assert Sampler().sample(logits, params, None, [Counter()]).token_ids.item() == 0


def test_logprobs_are_the_raw_model_distribution():
    logits = random_logits(3, seed=8)
    params = [SamplingParams(logprobs=True, top_logprobs=5, temperature=0.7, presence_penalty=2.0),
              SamplingParams(logprobs=True, temperature=0),
              SamplingParams(seed=1)]
    out = Sampler().sample(logits, params, [make_generator(p) for p in params],
                           [Counter({0: 2}), None, None])
    raw = torch.log_softmax(logits, -1)
    assert torch.allclose(out.logprobs, raw.gather(1, out.token_ids.unsqueeze(1)).squeeze(1))
    assert out.top_logprobs.shape == out.top_logprob_ids.shape == (3, 5)
    assert torch.all(out.top_logprobs[:, :-1] >= out.top_logprobs[:, 1:])  # sorted, descending
    assert torch.allclose(out.top_logprobs, raw.gather(1, out.top_logprob_ids))
    assert torch.equal(out.top_logprob_ids[:, 0], logits.argmax(-1))


def test_inverse_cdf_never_picks_a_zero_weight_column():
    weights = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.5, 0.0]]).repeat(3, 1)
    uniforms = torch.tensor([0.0, 0.0, 0.5, 0.5, 1 - 1e-16, 1 - 1e-16], dtype=torch.float64)
    assert inverse_cdf(weights, uniforms).tolist() == [1, 0, 1, 2, 1, 2]


def test_inverse_cdf_crosses_blocks_and_the_ragged_tail_block_with_the_right_frequencies():
    # 2500 columns = two full 1024-blocks and a 452-column tail; weight on three columns only.
    draws = 6000
    weights = torch.zeros(draws, 2500)
    weights[:, [5, 1500, 2499]] = torch.tensor([0.2, 0.3, 0.5])
    uniforms = torch.rand(draws, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    seen = Counter(inverse_cdf(weights, uniforms).tolist())
    assert set(seen) == {5, 1500, 2499}
    for column, p in [(5, 0.2), (1500, 0.3), (2499, 0.5)]:
        assert abs(seen[column] / draws - p) < 4 * math.sqrt(p * (1 - p) / draws)


def test_sample_output_shapes_and_batch_mismatch():
    out = Sampler().sample(random_logits(2), [SamplingParams()] * 2)
    assert isinstance(out, SampleOutput) and out.token_ids.shape == (2,)
    with pytest.raises(ValueError, match="2 rows"):
        Sampler().sample(random_logits(2), [SamplingParams()])


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -0.1}, "temperature"), ({"temperature": 2.5}, "temperature"),
    ({"temperature": float("nan")}, "temperature"), ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.1}, "top_p"), ({"top_k": 0}, "top_k"), ({"frequency_penalty": 2.1}, "frequency_penalty"),
    ({"presence_penalty": -3}, "presence_penalty"), ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"top_logprobs": 2}, "logprobs=True"), ({"max_tokens": 0}, "max_tokens"), ({"stop": ("",)}, "stop"),
])
def test_out_of_range_params_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_params_accept_json_shaped_stops_and_stay_hashable():
    params = SamplingParams(stop="\n\n", stop_token_ids=[1, 2])
    assert params.stop == ("\n\n",) and params.stop_token_ids == (1, 2)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    hash(params)
