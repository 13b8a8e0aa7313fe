"""The training forward is the inference model's math, batched and differentiable."""

import pytest
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
