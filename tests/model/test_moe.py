"""DeepSeekMoE routing against a plain per-token loop of spec §9.3, and expert dispatch."""

from __future__ import annotations

import math

import pytest
import torch

from deepseek.model import ModelConfig
from deepseek.model.moe import Gate, MoE, grouped_experts
from deepseek.model.presets import preset_config


def route_one_token(x, weight, bias, n_group, topk_group, top_k, scale):
    """Spec §9.3 written as a loop over plain Python floats, for one token."""
    n_experts = weight.shape[0]
    s = [1 / (1 + math.exp(-float(torch.dot(x.double(), weight[e].double())))) for e in range(n_experts)]
    b = [s[e] + float(bias[e]) for e in range(n_experts)]
    per_group = n_experts // n_group
    group_score = []
    for g in range(n_group):
        members = sorted((b[e] for e in range(g * per_group, (g + 1) * per_group)), reverse=True)
        group_score.append(members[0] + members[1])
    kept = sorted(range(n_group), key=lambda g: group_score[g], reverse=True)[:topk_group]
    candidates = [e for g in kept for e in range(g * per_group, (g + 1) * per_group)]
    chosen = sorted(candidates, key=lambda e: b[e], reverse=True)[:top_k]
    total = sum(s[e] for e in chosen)
    return {e: s[e] / total * scale for e in chosen}


def _gate(n_experts, n_group, topk_group, top_k, dim=64, seed=0):
    raw = {**preset_config("tiny"), "n_routed_experts": n_experts, "n_group": n_group,
           "topk_group": topk_group, "num_experts_per_tok": top_k, "hidden_size": dim}
    gate = Gate(ModelConfig.from_dict(raw)).requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    gate.weight.copy_(torch.randn(gate.weight.shape, generator=g) * 0.1)
    # A bias as large as the score spread, so it really changes which experts win.
    gate.e_score_correction_bias.copy_(torch.randn(n_experts, generator=g) * 0.2)
    return gate


@pytest.mark.parametrize("n_experts, n_group, topk_group, top_k", [
    (256, 8, 4, 8),   # the 671B router
    (8, 2, 1, 2),     # the tiny config
    (16, 1, 1, 4),    # no group limit
])
def test_router_matches_the_per_token_loop(n_experts, n_group, topk_group, top_k):
    gate = _gate(n_experts, n_group, topk_group, top_k)
    x = torch.randn(40, 64)
    weights, ids = gate(x)
    for n in range(x.shape[0]):
        expected = route_one_token(x[n], gate.weight, gate.e_score_correction_bias,
                                   n_group, topk_group, top_k, 2.5)
        got = dict(zip(ids[n].tolist(), weights[n].tolist()))
        assert set(got) == set(expected), f"token {n}"
        for e in expected:
            assert got[e] == pytest.approx(expected[e], abs=1e-6)


def test_bias_steers_selection_but_not_the_weights():
    gate = _gate(8, 2, 1, 2)
    x = torch.randn(30, 64)
    with torch.no_grad():
        gate.e_score_correction_bias.zero_()
        gate.e_score_correction_bias[5] = 10.0   # expert 5 now always wins selection
    weights, ids = gate(x)
    assert (ids == 5).any(dim=1).all()
    scores = torch.sigmoid(x @ gate.weight.T)
    expected = scores.gather(1, ids)
    torch.testing.assert_close(weights, expected / expected.sum(1, keepdim=True) * 2.5)


def test_group_limit_keeps_experts_inside_the_best_groups():
    gate = _gate(256, 8, 4, 8)
    _, ids = gate(torch.randn(50, 64))
    groups_used = (ids // 32).tolist()
    assert all(len(set(g)) <= 4 for g in groups_used)


def test_moe_equals_the_sum_over_each_tokens_experts(tiny_model):
    moe = tiny_model.model.layers[1].mlp
    assert isinstance(moe, MoE)
    x = torch.randn(12, tiny_model.config.hidden_size)
    weights, ids = moe.gate(x)
    expected = torch.stack([
        sum(weights[n, j] * moe.experts[ids[n, j]](x[n:n + 1])[0] for j in range(ids.shape[1]))
        + moe.shared_experts(x[n:n + 1])[0]
        for n in range(x.shape[0])])
    torch.testing.assert_close(moe(x), expected, atol=1e-5, rtol=1e-5)


def fresh_moe(config, seed=0):
    """A MoE of its own (engines pack the shared tiny model's experts), weights N(0, 0.05)."""
    moe = MoE(config, torch.float32).requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    for p in moe.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return moe


def test_each_expert_sees_only_its_routed_tokens(tiny_config):
    moe = fresh_moe(tiny_config)
    x = torch.randn(20, tiny_config.hidden_size)
    _, ids = moe.gate(x)
    seen = {}
    hooks = [expert.register_forward_hook(lambda m, inp, out, e=e: seen.__setitem__(e, inp[0].shape[0]))
             for e, expert in enumerate(moe.experts)]
    try:
        moe(x)
    finally:
        for h in hooks:
            h.remove()
    expected = {e: int((ids == e).sum()) for e in range(len(moe.experts)) if (ids == e).any()}
    assert seen == expected


@pytest.mark.parametrize("tokens", [1, 3, 40])
def test_packed_experts_give_the_looped_sum_in_the_same_memory(tiny_config, tokens):
    moe = fresh_moe(tiny_config, seed=tokens)
    x = torch.randn(tokens, tiny_config.hidden_size)
    looped = moe(x)
    weights = {n: p.clone() for n, p in moe.named_parameters()}
    assert moe.pack()
    gate_up, down = moe.packed
    assert moe.pack() and moe.packed[0] is gate_up      # every engine calls it: once is enough
    for n, p in moe.named_parameters():       # same values, now views of the two stacks
        assert torch.equal(p, weights[n]), n
        if ".experts." in n:
            stack = down if "down_proj" in n else gate_up
            assert p.untyped_storage().data_ptr() == stack.untyped_storage().data_ptr(), n
    # Same expert order per token, so only the GEMM kernels' rounding may differ.
    torch.testing.assert_close(moe(x), looped, atol=1e-6, rtol=1e-6)


def test_prepare_inference_lays_every_weight_out_column_major_and_keeps_the_model(tiny_config):
    """`Transformer.prepare_inference` (every engine calls it): the same values, each CPU weight
    column-major (packed experts as views of their stacks), and the same logits up to GEMM rounding."""
    from deepseek.model import Transformer
    from deepseek.model.checkpoint import init_random_weights
    from deepseek.model.layers import Linear

    model = init_random_weights(Transformer(tiny_config, dtype=torch.float32), seed=0).eval().requires_grad_(False)
    before = {n: p.clone() for n, p in model.named_parameters()}
    prompt = torch.randint(0, 1024, (1, 40), generator=torch.Generator().manual_seed(0))
    logits = model(prompt)
    model.prepare_inference()
    model.prepare_inference()                              # again is harmless
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    assert all(m.weight.stride(0) == 1 for m in linears)
    gate_up, down = model.model.layers[1].mlp.packed
    expert = model.model.layers[1].mlp.experts[3]
    assert expert.down_proj.weight.untyped_storage().data_ptr() == down.untyped_storage().data_ptr()
    torch.testing.assert_close(model(prompt), logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 5, 40])
def test_the_native_expert_kernel_gives_the_grouped_sum_and_batch_invariant_rows(tiny_config, dtype, tokens):
    """Decode-sized batches of packed CPU experts run `kernels.moe_experts` in one call (no grad)."""
    from deepseek.model import kernels

    if not kernels.available():
        pytest.skip("the native kernels do not build here")
    moe = fresh_moe(tiny_config, seed=tokens).to(dtype)
    assert moe.pack() and moe.native
    x = torch.randn(tokens, tiny_config.hidden_size, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.inference_mode():     # (the router too: without grad its scores run the kernel)
        weights, ids = moe.gate(x)
        native = kernels.moe_experts(x, weights, ids, *moe.packed)
        grouped = grouped_experts(x, weights, ids, *moe.packed)
        # Only silu's exp may differ from torch's in the last bit, and rounding after it.
        torch.testing.assert_close(native, grouped, atol=1e-3 if dtype == torch.bfloat16 else 1e-6, rtol=0)
        for n in range(tokens):        # alone, a token gets bitwise its row of the batch
            assert torch.equal(kernels.moe_experts(x[n:n + 1], weights[n:n + 1], ids[n:n + 1], *moe.packed),
                               native[n:n + 1])
        assert torch.equal(moe(x).float(), (native + moe.shared_experts(x).float()).to(dtype).float())


def test_bf16_experts_packed_for_pair_products_run_natively_at_any_batch(tiny_config):
    """A prefill chunk past NATIVE_MAX_TOKENS: the packed experts' one call, with the bits of the
    column-major experts' pair products."""
    from deepseek.model import kernels
    from deepseek.model.moe import NATIVE_MAX_TOKENS

    if not kernels.bf16_dot():
        pytest.skip("no bf16 pair products here")
    moe = fresh_moe(tiny_config, seed=3).to(torch.bfloat16)
    assert moe.pack() and moe.pairs is not None
    x = torch.randn(NATIVE_MAX_TOKENS + 44, tiny_config.hidden_size,
                    generator=torch.Generator().manual_seed(2)).bfloat16()
    with torch.inference_mode():
        weights, ids = moe.gate(x)
        packed = kernels.moe_experts(x, weights, ids, *moe.pairs)
        assert torch.equal(packed, kernels.moe_experts(x, weights, ids, *moe.packed))
        assert torch.equal(moe(x), (packed + moe.shared_experts(x).float()).bfloat16())
