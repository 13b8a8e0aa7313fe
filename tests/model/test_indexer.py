"""The lightning indexer against a naive, loop-based implementation of spec §8.1."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from deepseek.model.rope import rope_cos_sin, yarn_inv_freq
from kernel_support import needs_int8_dot


def naive_fp8_quant(v: torch.Tensor) -> tuple[torch.Tensor, float]:
    """act_quant of one 128-vector with a ue8m0 (power-of-two) scale: (e4m3 values as float, scale)."""
    amax = max(float(v.abs().max()), 1e-4)
    scale = 2.0 ** math.ceil(math.log2(amax / 448.0))
    return (v / scale).clamp(-448, 448).to(torch.float8_e4m3fn).float(), scale


def sylvester(n: int) -> torch.Tensor:
    h = [[1.0]]
    while len(h) < n:
        h = [row + row for row in h] + [row + [-x for x in row] for row in h]
    return torch.tensor(h)


def rope_half(v: torch.Tensor, position: int, inv_freq: torch.Tensor) -> torch.Tensor:
    half = v.shape[0] // 2
    out = v.clone()
    for i in range(half):
        angle = float(torch.tensor(float(position)) * inv_freq[i])  # fp32 angle, like the reference
        c, s = math.cos(angle), math.sin(angle)
        out[i] = v[i] * c - v[i + half] * s
        out[i + half] = v[i] * s + v[i + half] * c
    return out


def naive_index_scores(indexer, x, qr, start, inv_freq, total):
    """I[s, t] = sk[t] · Σ_h ReLU(q8[s,h] · k8[t]) · w'[s,h], looping over tokens and heads."""
    hi, di, dr = indexer.n_heads, indexer.head_dim, indexer.rope_dim
    had = sylvester(di) / math.sqrt(di)

    def prepare(v, position):
        v = torch.cat((rope_half(v[:dr], position, inv_freq), v[dr:]))
        return naive_fp8_quant(v @ had)

    wk, wq = indexer.wk.weight.float(), indexer.wq_b.weight.float()
    keys = []
    for t in range(total):
        k = torch.nn.functional.layer_norm(x[t] @ wk.T, (di,), indexer.k_norm.weight, indexer.k_norm.bias, 1e-6)
        keys.append(prepare(k, t))
    scores = torch.full((total - start, total), float("-inf"))
    for s in range(start, total):
        w = (x[s].float() @ indexer.weights_proj.weight.float().T) * hi ** -0.5
        q_all = (qr[s] @ wq.T).view(hi, di)
        qs = [prepare(q_all[h], s) for h in range(hi)]
        for t in range(s + 1):
            k8, sk = keys[t]
            total_t = 0.0
            for h in range(hi):
                q8, sq = qs[h]
                logit = float(torch.dot(q8, k8))
                total_t += max(logit, 0.0) * float(w[h]) * sq * di ** -0.5
            scores[s - start, t] = sk * total_t
    return scores


def test_selected_sets_equal_the_naive_formula(tiny_model):
    torch.manual_seed(1)
    indexer = tiny_model.model.layers[2].self_attn.indexer
    cfg = tiny_model.config
    total, start = 150, 130            # 20 queries of a chunk that starts at position 130
    x = torch.randn(total, cfg.hidden_size)
    qr = torch.randn(total, cfg.q_lora_rank)
    inv_freq = yarn_inv_freq(cfg)
    cos, sin = rope_cos_sin(inv_freq, torch.arange(total))
    keys = indexer.keys(x, cos, sin)
    got = indexer.scores(x[start:], qr[start:], keys, start, cos[start:], sin[start:])
    expected = naive_index_scores(indexer, x, qr, start, inv_freq, total)
    finite = torch.isfinite(expected)
    assert torch.equal(finite, torch.isfinite(got))
    torch.testing.assert_close(got[finite], expected[finite], rtol=1e-4, atol=1e-5)

    selected = indexer.select(x[start:], qr[start:], keys, start, cos[start:], sin[start:])
    assert selected.shape == (total - start, cfg.index_topk)
    for row in range(total - start):
        # Best score first; exact ties go to the later position (see topk_positions).
        ranked = sorted(range(total), key=lambda t: (float(expected[row, t]), t), reverse=True)
        assert set(selected[row].tolist()) == set(ranked[:cfg.index_topk]), f"query {start + row}"


def test_relu_comes_before_the_head_weights(tiny_model):
    """With every head weight negative, scores are <= 0: ReLU(q·k) >= 0 times w < 0."""
    indexer = tiny_model.model.layers[1].self_attn.indexer
    cfg = tiny_model.config
    x = torch.randn(10, cfg.hidden_size)
    qr = torch.randn(10, cfg.q_lora_rank)
    cos, sin = rope_cos_sin(yarn_inv_freq(cfg), torch.arange(10))
    original = indexer.weights_proj.weight.clone()
    try:
        with torch.no_grad():
            indexer.weights_proj.weight.copy_(-original.abs())
        x_pos = x.abs()  # makes weights_proj(x) strictly negative
        scores = indexer.scores(x_pos, qr, indexer.keys(x_pos, cos, sin), 0, cos, sin)
    finally:
        with torch.no_grad():
            indexer.weights_proj.weight.copy_(original)
    assert (scores[torch.isfinite(scores)] <= 0).all()


def test_future_keys_are_never_selectable(tiny_model):
    indexer = tiny_model.model.layers[1].self_attn.indexer
    cfg = tiny_model.config
    x, qr = torch.randn(100, cfg.hidden_size), torch.randn(100, cfg.q_lora_rank)
    cos, sin = rope_cos_sin(yarn_inv_freq(cfg), torch.arange(100))
    scores = indexer.scores(x, qr, indexer.keys(x, cos, sin), 0, cos, sin)
    future = torch.arange(100)[None, :] > torch.arange(100)[:, None]
    assert torch.isneginf(scores[future]).all() and torch.isfinite(scores[~future]).all()


def _real_keys_and_queries(indexer, cfg, total, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(total, cfg.hidden_size, generator=g)
    qr = torch.randn(total, cfg.q_lora_rank, generator=g)
    cos, sin = rope_cos_sin(yarn_inv_freq(cfg), torch.arange(total))
    keys = indexer.keys(x, cos, sin).to(torch.bfloat16)
    q, w = indexer.queries(x[-1:], qr[-1:], cos[-1:], sin[-1:])
    return keys, q[0], w[0]


def test_bf16_keys_hold_the_fp8_values_exactly(tiny_model):
    indexer, cfg = tiny_model.model.layers[1].self_attn.indexer, tiny_model.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, cfg.hidden_size, generator=g)
    cos, sin = rope_cos_sin(yarn_inv_freq(cfg), torch.arange(50))
    keys = indexer.keys(x, cos, sin)
    assert torch.equal(keys.to(torch.bfloat16).float(), keys.float())


@pytest.mark.parametrize("length", [700, 2600])      # 2600 > 8·k: the block-maxima floor is used
def test_screened_decode_selection_equals_the_exact_one(tiny_model, length):
    """The bf16 scan with error bounds must return exactly the fp32 top-k, ties included."""
    from deepseek.model.indexer import exact_scores, screened_topk, topk_positions

    indexer, cfg = tiny_model.model.layers[2].self_attn.indexer, tiny_model.config
    k = cfg.index_topk
    for seed in range(12):
        keys, q, w = _real_keys_and_queries(indexer, cfg, length, seed)
        cases = [(q, w), (q, -w.abs()), (q, w * 0)]            # ordinary, all scores <= 0, all ties at 0
        dup = keys.clone()
        dup[::2] = keys[0]                                      # many identical keys: exact ties
        for qq, ww in cases:
            for kk in (keys, dup):
                exact = topk_positions(exact_scores(qq[None], ww[None], kk), k)[0]
                screened = screened_topk(qq, ww, kk, k, indexer.key_norm_bound())
                assert torch.equal(torch.sort(screened).values, torch.sort(exact).values), seed


@needs_int8_dot
@pytest.mark.parametrize("length", [700, 2600])
def test_sketched_decode_selection_equals_the_exact_one(tiny_model, length):
    """The int8-sketch scan with its error bounds returns exactly the fp32 top-k, ties included: on
    real (FP8) keys, on keys that are not FP8 values (every entry then has a rounding residual), on
    keys with wildly different norms, and on keys whose one huge entry leaves the others coarse."""
    from deepseek.model.indexer import exact_scores, sketch_keys, sketched_topk, topk_positions

    indexer, cfg = tiny_model.model.layers[2].self_attn.indexer, tiny_model.config
    k = cfg.index_topk
    for seed in range(8):
        keys, q, w = _real_keys_and_queries(indexer, cfg, length, seed)
        g = torch.Generator().manual_seed(seed)
        dup = keys.clone()
        dup[::2] = keys[0]
        plain = (keys.float() + 0.05 * torch.randn(keys.shape, generator=g)).to(torch.bfloat16)
        spread = (keys.float() * torch.exp2(torch.randint(-12, 4, (length, 1), generator=g))).to(torch.bfloat16)
        outlier = keys.clone()          # one shared huge entry: the sketch keeps ~3 bits of the rest
        outlier[:, 0] = 16 * float(keys.abs().max())
        for qq, ww in [(q, w), (q, -w.abs()), (q, w * 0)]:
            for kk in (keys, dup, plain, spread, outlier):
                exact = topk_positions(exact_scores(qq[None], ww[None], kk), k)[0]
                bound = max(indexer.key_norm_bound(), float(kk.float().norm(dim=1).max()))
                sketched = sketched_topk(qq, ww, sketch_keys(kk), k, bound)
                assert torch.equal(torch.sort(sketched).values, torch.sort(exact).values), seed


@needs_int8_dot
def test_sketch_bounds_hold_and_do_not_depend_on_where_the_keys_lie(tiny_model):
    """The kernel's bounds bracket every exact score, and are the same bits whether the keys lie in
    whole 16-slot groups (read in place) or in scattered blocks of 4 slots (copied into groups)."""
    from deepseek.model.indexer import (SketchedKeys, empty_key_sketch, exact_scores, sketch_keys,
                                        sketch_score_bounds, sketched_topk, store_sketch, topk_positions)

    indexer, cfg = tiny_model.model.layers[2].self_attn.indexer, tiny_model.config
    length, block = 301, 4
    keys, q, w = _real_keys_and_queries(indexer, cfg, length, 7)
    exact = exact_scores(q[None], w[None], keys)[0]
    table = torch.randperm(2 * length // block, generator=torch.Generator().manual_seed(1))[:-(-length // block)]
    slots = (table[:, None] * block + torch.arange(block)).flatten()[:length]
    scattered = empty_key_sketch(2 * length, cfg.index_head_dim, "cpu")
    store_sketch(scattered, slots, keys)
    stored = torch.zeros(2 * length, cfg.index_head_dim, dtype=torch.bfloat16)
    stored[slots] = keys
    there = SketchedKeys(scattered, slots, stored)
    grid = sketch_score_bounds(q, w, sketch_keys(keys), indexer.key_norm_bound())
    lower, upper = sketch_score_bounds(q, w, there, indexer.key_norm_bound())
    assert torch.equal(lower, grid[0]) and torch.equal(upper, grid[1])
    assert bool((lower <= exact).all()) and bool((exact <= upper).all())
    k = cfg.index_topk                                          # and the keys are rescored where they lie
    assert torch.equal(torch.sort(sketched_topk(q, w, there, k, indexer.key_norm_bound())).values,
                       torch.sort(topk_positions(exact[None], k)[0]).values)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 40), st.integers(0, 3000), st.integers(0, 2 ** 31), st.booleans())
def test_screen_candidates_are_the_keys_whose_upper_bound_reaches_the_floor(k, extra, seed, ties):
    """The native candidate screen against its torch statement: the k-th largest block maximum of
    the lower bounds as the floor (blocks of T // 8k, or every value), then upper >= floor."""
    from deepseek.model import kernels
    from deepseek.model.indexer import _kth_largest_floor

    if not kernels.available():
        pytest.skip("native kernels not built here")
    g = torch.Generator().manual_seed(seed)
    lower = torch.randn(k + extra, generator=g)
    if ties:
        lower = lower.round()
    bounds = torch.stack((lower, lower + torch.rand(k + extra, generator=g)))
    want = (bounds[1] >= _kth_largest_floor(bounds[0], k)).nonzero().squeeze(1)
    assert torch.equal(kernels.screen_candidates(bounds, k), want)


@needs_int8_dot
@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4, width=16), min_size=16, max_size=16), st.integers(-30, 30))
def test_a_key_sketch_stays_within_its_residual(values, exponent):
    from deepseek.model.indexer import sketch_rows

    key = (torch.tensor(values) * 2.0 ** exponent).to(torch.bfloat16)[None]
    rows, scale, residual = sketch_rows(key)
    assert rows.dtype == torch.int8 and int(rows.abs().max()) <= 127
    assert float(scale) == 2.0 ** round(math.log2(float(scale)))              # a power of two
    error = (key.double() - rows.double() * scale.double()[:, None]).norm(dim=1)
    assert bool((error <= residual.double()).all())
    if float(key.abs().max()) > 0:
        assert int(rows.abs().max()) >= 64                                   # the largest entry keeps 7 bits


@needs_int8_dot
def test_the_largest_bf16_mantissa_is_clamped_into_int8():
    from deepseek.model.indexer import sketch_rows

    key = torch.tensor([[2 - 2 ** -7, -(2 - 2 ** -7)] + [0.01] * 14], dtype=torch.bfloat16)  # 127.5 x scale
    rows, scale, residual = sketch_rows(key)
    assert rows[0, :2].tolist() == [127, -127] and float(scale) == 2 ** -6
    assert float((key.double() - rows.double() * scale.double()).norm()) <= float(residual)


@needs_int8_dot
def test_fp8_keys_lose_only_their_small_entries_in_the_sketch(tiny_model):
    from deepseek.model.indexer import sketch_rows

    indexer, cfg = tiny_model.model.layers[1].self_attn.indexer, tiny_model.config
    keys, _, _ = _real_keys_and_queries(indexer, cfg, 64, 0)
    rows, scale, _ = sketch_rows(keys)
    big = keys.float().abs() >= keys.float().abs().amax(dim=1, keepdim=True) / 8
    assert torch.equal((rows.float() * scale.float()[:, None])[big], keys.float()[big])


@needs_int8_dot
def test_decode_takes_the_screened_path_on_long_contexts(tiny_model):
    from deepseek.model.indexer import sketch_keys

    indexer, cfg = tiny_model.model.layers[1].self_attn.indexer, tiny_model.config
    keys, _, _ = _real_keys_and_queries(indexer, cfg, 400, 3)
    g = torch.Generator().manual_seed(5)
    x, qr = torch.randn(1, cfg.hidden_size, generator=g), torch.randn(1, cfg.q_lora_rank, generator=g)
    cos, sin = rope_cos_sin(yarn_inv_freq(cfg), torch.tensor([399]))
    fast = indexer.select(x, qr, keys, 399, cos, sin)                       # bf16 keys, T >= 4k: screened
    faster = indexer.select(x, qr, keys, 399, cos, sin, sketch_keys(keys))  # ... over the int8 sketch
    slow = indexer.select(x, qr, keys.float(), 399, cos, sin)               # fp32 keys: the exact scan
    assert torch.equal(torch.sort(fast[0]).values, torch.sort(slow[0]).values)
    assert torch.equal(torch.sort(faster[0]).values, torch.sort(slow[0]).values)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=3000), st.integers(1, 64), st.integers(1, 16))
def test_the_screen_floor_never_exceeds_the_kth_largest_value(values, k, spread):
    from deepseek.model.indexer import _kth_largest_floor

    t = torch.tensor(values)
    k = min(k, t.numel())
    assert _kth_largest_floor(t, k, spread) <= t.topk(k).values.min()
