"""The training forward is the inference model's math, batched and differentiable."""

import pytest
from hypothesis import given, settings, strategies as st
import torch

from deepseek.model import ModelConfig, Transformer
from deepseek.model.checkpoint import init_random_weights
from deepseek.model.presets import preset_config
from deepseek.train import forward as fw


@pytest.fixture(scope="module")
def model():
    return init_random_weights(Transformer(ModelConfig.from_dict(preset_config("tiny")), dtype=torch.float32), 0)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(20, 1000, (2, 80), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("attention", ["dense", "sparse"])
def test_training_logits_equal_the_inference_forward(model, tokens, attention):
    # 80 tokens > index_topk 64, so sparse attention really drops keys here.
    with torch.no_grad():
        reference = model(tokens, attention=attention)
        ours = fw.logits(model, tokens, fw.Mode(sparse=attention == "sparse"))
    torch.testing.assert_close(ours, reference, atol=1e-3, rtol=0)


def test_probability_path_equals_the_fused_dense_path(model, tokens):
    with torch.no_grad():
        fused = fw.logits(model, tokens, fw.Mode())
        explicit = fw.logits(model, tokens, fw.Mode(coverage=True))
    torch.testing.assert_close(explicit, fused, atol=1e-3, rtol=0)


def test_indexer_loss_reaches_only_the_indexer(model, tokens):
    aux = fw.Aux()
    fw.logits(model, tokens, fw.Mode(sparse=True, index_loss="sparse"), aux)
    assert len(aux.index_kl) == model.config.num_hidden_layers
    kl = torch.stack(aux.index_kl).sum()
    assert kl.item() >= 0
    indexer = model.model.layers[1].self_attn.indexer.wk.weight
    main = model.model.layers[1].self_attn.q_a_proj.weight
    g_indexer, g_main = torch.autograd.grad(kl, [indexer, main], allow_unused=True)
    assert g_indexer is not None and g_indexer.abs().sum() > 0
    assert g_main is None                       # the indexer's inputs are detached


def test_coverage_is_a_share_and_full_when_k_covers_everything(model, tokens):
    aux = fw.Aux()
    with torch.no_grad():
        fw.logits(model, tokens, fw.Mode(coverage=True, index_topk=16), aux)
    assert all(0 < float(c) <= 1 + 1e-6 for c in aux.coverage)
    aux = fw.Aux()
    with torch.no_grad():
        fw.logits(model, tokens, fw.Mode(coverage=True, index_topk=80), aux)
    assert all(abs(float(c) - 1) < 1e-5 for c in aux.coverage)


def test_concentration_is_minus_log_coverage_and_trains_only_the_main_attention(model, tokens, monkeypatch):
    monkeypatch.setattr(fw, "CONCENTRATION_STRIDE", 1)     # every query, as coverage reads them
    aux, seen = fw.Aux(), fw.Aux()
    fw.logits(model, tokens, fw.Mode(sparse=True, index_loss="sparse", concentrate=0.5, index_topk=16), aux)
    with torch.no_grad():
        fw.logits(model, tokens, fw.Mode(coverage=True, index_topk=16), seen)
    assert len(aux.concentration) == model.config.num_hidden_layers
    for outside, covered in zip(aux.concentration, seen.coverage):
        # -log of the mean mass (coverage) <= mean of -log mass (Jensen); both are 0 at full coverage
        assert outside.item() >= -float(covered.log()) - 1e-5
    indexer = model.model.layers[1].self_attn.indexer.wk.weight
    main = model.model.layers[1].self_attn.q_a_proj.weight
    g_indexer, g_main = torch.autograd.grad(aux.concentration[1], [indexer, main], allow_unused=True)
    assert g_indexer is None and g_main.abs().sum() > 0
    with pytest.raises(ValueError, match="concentrate"):
        fw.Mode(concentrate=0.5)


def test_fp8_round_trip_passes_gradients_straight_through():
    x = torch.randn(3, 128, requires_grad=True)
    y = fw.ste_fp8(x, "ue8m0")
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(g, torch.ones_like(x))
    assert not torch.equal(y.detach(), x.detach())      # the forward value is the FP8 one


def test_training_works_after_inference_mode_use_in_the_same_process(model, tokens):
    # The Hadamard matrix is cached; made first under inference_mode it must still serve autograd.
    from deepseek.model.indexer import hadamard_matrix

    hadamard_matrix.cache_clear()
    with torch.inference_mode():
        model(tokens, attention="sparse")
    aux = fw.Aux()
    fw.logits(model, tokens, fw.Mode(sparse=True, index_loss="sparse"), aux)
    torch.stack(aux.index_kl).sum().backward()
    model.zero_grad(set_to_none=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5), min_size=12, max_size=12), min_size=1, max_size=3))
def test_induction_targets_are_the_positions_after_earlier_occurrences(rows):
    tokens = torch.tensor(rows)
    targets = fw.induction_targets(tokens)
    for b, row in enumerate(rows):
        for s in range(len(row)):
            expected = {t + 1 for t in range(s) if row[t] == row[s]}
            assert set(targets[b, s].nonzero().flatten().tolist()) == expected


def test_copy_heads_record_head_zero_and_leave_the_logits_alone(model, tokens):
    aux = fw.Aux()
    with torch.no_grad():
        fused = fw.logits(model, tokens, fw.Mode())
        probed = fw.logits(model, tokens, fw.Mode(copy_heads=(0, 1)), aux)
    torch.testing.assert_close(probed, fused, atol=1e-3, rtol=0)
    assert set(aux.copy_heads) == {"previous", "induction"}
    for logp in aux.copy_heads.values():
        assert logp.shape == (2, 80, 80)
        torch.testing.assert_close(logp.exp().sum(-1), torch.ones(2, 80))
        assert torch.isneginf(logp[:, 0, 1:]).all()         # causal: the first query sees itself only


def test_copy_head_loss_is_zero_for_a_perfect_circuit_and_trains_the_first_layers(model):
    tokens = torch.tensor([[5, 6, 7, 5, 6, 9, 5, 6]])
    s_len = tokens.shape[1]
    previous = torch.full((1, s_len, s_len), float("-inf"))
    previous[0, 0, 0] = 0
    previous[0, torch.arange(1, s_len), torch.arange(s_len - 1)] = 0           # all mass on s - 1
    induction = torch.where(fw.induction_targets(tokens), 0.0, -30.0)
    induction = induction.log_softmax(-1)
    perfect = fw.Aux(copy_heads={"previous": previous, "induction": induction})
    assert fw.copy_head_loss(perfect, tokens).item() < 1e-6
    flat = torch.full((1, s_len, s_len), -torch.log(torch.tensor(8.0)).item())
    assert fw.copy_head_loss(fw.Aux(copy_heads={"previous": flat, "induction": flat}), tokens).item() > 3

    aux = fw.Aux()
    real = torch.randint(20, 60, (2, 40), generator=torch.Generator().manual_seed(1))   # repeats plenty
    fw.logits(model, real, fw.Mode(copy_heads=(0, 1)), aux)
    loss = fw.copy_head_loss(aux, real)
    layers = model.model.layers
    g0, g1, g2 = torch.autograd.grad(loss, [layers[0].self_attn.q_b_proj.weight, layers[1].self_attn.q_b_proj.weight,
                                            layers[2].self_attn.q_b_proj.weight], allow_unused=True)
    assert g0.abs().sum() > 0 and g1.abs().sum() > 0
    assert g2 is None                       # only the two supervised layers (and what feeds them) learn


def test_copy_heads_need_dense_attention_and_two_layers():
    with pytest.raises(ValueError):
        fw.Mode(sparse=True, copy_heads=(0, 1))
    with pytest.raises(ValueError):
        fw.Mode(copy_heads=(1, 1))
