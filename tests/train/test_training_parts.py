"""Pieces of the recipe that are easy to get silently wrong: copy practice, weight decay groups,
tied embeddings through save/load/export, and the MTP layer's copies of the main model's tensors."""

import dataclasses

import torch
from hypothesis import given, settings, strategies as st
from safetensors.torch import load_file

from deepseek.train import corpus, loop
from deepseek.train.recipe import RECIPES, build_model, export, sync_mtp_copies, untie


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 4), length=st.integers(40, 300))
def test_copy_practice_only_repeats_earlier_tokens(seed, rows, length):
    windows = torch.arange(length).repeat(rows, 1)        # token value = its position: copies are visible
    out = corpus.repeat_spans(windows, 1.0, seed)
    assert out.shape == windows.shape
    assert (out <= windows).all()                         # every token comes from the same place or earlier
    assert (out != windows).any(dim=1).all()              # share 1.0: every window got a copied stretch
    assert torch.equal(out, corpus.repeat_spans(windows, 1.0, seed))      # deterministic
    assert torch.equal(corpus.repeat_spans(windows, 0.0, seed), windows)  # share 0: untouched


def test_weight_decay_pulls_matrices_only():
    model = build_model(RECIPES["smoke"])
    params = loop.trainable(model, "main")
    groups = loop.optimizer_for(params, 1e-3).param_groups
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert {id(p) for p in params} == {id(p) for g in groups for p in g["params"]}
    for p in params:
        assert (id(p) in decayed) == (p.dim() >= 2)


def test_tied_embeddings_train_as_one_tensor_and_export_as_two(tmp_path):
    recipe = dataclasses.replace(RECIPES["smoke"], tie_embeddings=True)
    model = build_model(recipe)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    stage = loop.Stage("dense", 2, 1e-2, "main", recipe.stages[0].mode, warmup=1)
    batches = torch.randint(20, 500, (2, 2, 33), generator=torch.Generator().manual_seed(0))
    loop.run_stage(model, stage, lambda step: batches[step], tmp_path, progress=False)
    assert model.lm_head.weight is model.model.embed_tokens.weight       # still one tensor after training
    again = build_model(recipe)
    loop.load_state(tmp_path / "dense.state", again)
    torch.testing.assert_close(again.lm_head.weight, model.model.embed_tokens.weight)

    from deepseek.tokenizer import write_tokenizer
    tokenizer = corpus.build_tokenizer(tmp_path, 512, 4096, seed=0, code_bytes=50_000, chat_examples=50)
    write_tokenizer(tokenizer, tmp_path, 4096)
    sync_mtp_copies(model)
    export(untie(model), recipe, tmp_path, tmp_path / "export")
    tensors = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    embed = tensors["model.embed_tokens.weight"]
    assert torch.equal(tensors["lm_head.weight"], embed)
    assert torch.equal(tensors["model.layers.2.embed_tokens.weight"], embed)     # the MTP layer's copy
    assert torch.equal(tensors["model.layers.2.shared_head.head.weight"], embed)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), length=st.integers(20, 400))
def test_copy_rows_mask_exactly_the_tokens_copying_predicts(seed, length):
    tokens, mask = corpus.copy_rows(3, length, 4096, seed)
    assert tokens.shape == mask.shape == (3, length)
    assert torch.equal(tokens, corpus.copy_rows(3, length, 4096, seed)[0])
    assert tokens.min() >= 3 and tokens.max() < 4096
    for row, m in zip(tokens.tolist(), mask.tolist()):
        pos = 0
        while pos < length:              # walk the (span, span) pieces through the mask's runs
            assert m[pos] == 0
            n = 1
            while pos + n < length and m[pos + n] == 0:
                n += 1
            # n = span length + 1 (the second copy's first token is not predictable); then the run of 1s
            span = n - 1
            run = 0
            while pos + n + run < length and m[pos + n + run] == 1:
                run += 1
            if pos + n < length:
                assert run == min(span - 1, length - pos - n)
                assert row[pos + span:pos + span + 1 + run] == row[pos:pos + 1 + run]
            pos += n + run


def test_pre_training_batches_carry_copy_rows_with_their_mask(tmp_path, monkeypatch):
    from deepseek.train import recipe as R
    recipe = dataclasses.replace(RECIPES["smoke"], copy_rows=1)
    seen = []
    real = R.run_stage

    def spy(model, stage, batches, work, **k):
        seen.append((stage.name, batches(0)))
        return real(model, stage, batches, work, **k)

    monkeypatch.setattr(R, "run_stage", spy)
    R.train(recipe, tmp_path, progress=False)
    batches = dict(seen)
    tokens, mask = batches["dense"]
    assert tokens.shape[0] == recipe.batch + 1 and mask[:recipe.batch].all() and not mask[-1].all()
    assert isinstance(batches["indexer_warmup"], torch.Tensor)         # copy rows only where the model learns text
    assert batches["sparse"][0].shape[0] == recipe.batch + 1
