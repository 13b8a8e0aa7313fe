"""The whole recipe, at smoke scale: stages run, resume, export a loadable FP8 checkpoint, evaluate."""

import json
import re

import pytest
import torch

from deepseek.model import Transformer
from deepseek.train import loop
from deepseek.train.recipe import RECIPES, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("smoke")
    return work, train(RECIPES["smoke"], work, progress=False)


def test_every_stage_runs_and_plots_its_losses(trained):
    work, summary = trained
    assert list(summary["stages"]) == ["dense", "indexer_warmup", "sparse", "sft", "mtp"]
    for name, stage in summary["stages"].items():
        assert stage["last"]["step"] == stage["steps"] - 1
        assert (work / f"{name}.png").stat().st_size > 0
    assert "copy_heads" in summary["stages"]["dense"]["last"]      # the copying circuit is taught
    assert "index_kl" in summary["stages"]["indexer_warmup"]["last"]
    assert "index_kl" in summary["stages"]["sparse"]["last"]
    assert 0 < summary["stages"]["sparse"]["last"]["topk_mass"] <= 1      # attention kept on the top-k
    assert "index_kl" in summary["stages"]["sft"]["last"]


def test_dense_stage_lowers_the_loss(trained):
    dense = trained[1]["stages"]["dense"]["last"]["lm"]
    assert dense < torch.log(torch.tensor(512.0)).item()        # below a uniform guess


def test_the_fp8_export_loads_in_the_official_format(trained):
    work, summary = trained
    folder = summary["export"]["fp8"]
    config = json.loads((work / "export" / "config.json").read_text())
    assert config["quantization_config"]["fmt"] == "e4m3"
    model = Transformer.from_pretrained(folder, dtype=torch.float32)
    from safetensors import safe_open
    with safe_open(str(work / "export" / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.layers.0.self_attn.q_a_proj.weight").dtype == torch.float8_e4m3fn
        assert "model.layers.2.self_attn.indexer.wk.weight" in f.keys()     # the MTP layer's indexer
    assert model.config.index_topk == 16


def test_a_rerun_resumes_finished_stages_without_training(trained, monkeypatch):
    work, summary = trained
    import deepseek.train.recipe as recipe
    monkeypatch.setattr(recipe, "run_stage", lambda *a, **k: pytest.fail("a finished stage ran again"))
    again = train(RECIPES["smoke"], work, progress=False)
    assert again["stages"]["dense"]["last"] == summary["stages"]["dense"]["last"]


def test_an_interrupted_stage_resumes_from_its_last_save(tmp_path):
    from deepseek.train.recipe import build_model
    recipe = RECIPES["smoke"]
    stage = loop.Stage("dense", 4, 1e-3, "main", recipe.stages[0].mode, warmup=1)
    batches = torch.randint(20, 500, (4, 2, 33), generator=torch.Generator().manual_seed(0))
    straight = build_model(recipe)
    loop.run_stage(straight, stage, lambda step: batches[step], tmp_path / "a", save_every=2, progress=False)

    def interrupted(step):
        if step == 3:
            raise KeyboardInterrupt
        return batches[step]

    with pytest.raises(KeyboardInterrupt):
        loop.run_stage(build_model(recipe), stage, interrupted, tmp_path / "b", save_every=2, progress=False)
    resumed = build_model(recipe)       # a fresh process: weights and AdamW moments come from the file
    log = loop.run_stage(resumed, stage, lambda step: batches[step], tmp_path / "b", save_every=2, progress=False)
    assert [r["step"] for r in log] == [0, 1, 2, 3]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_eval_reports_every_figure(trained, tmp_path):
    from deepseek.cli.main import main
    work, summary = trained
    out = tmp_path / "figures.json"
    assert main(["eval", "--model", summary["export"]["fp8"], "--bf16-twin", summary["export"]["bf16"],
                 "--quick", "--output", str(out)]) == 0
    figures = json.loads(out.read_text())
    language = figures["language"]
    for kind in ("code", "chat"):
        assert language[kind]["ppl_dense"] > 1 and "fp8_over_bf16" in language[kind]
    assert 0 < language["coverage"]["mean"] <= 1
    assert language["copying"]["loss_first"] > 0 and language["copying"]["loss_repeat"] > 0
    assert set(figures["generation"]) == {"tool_call", "tool_call_unconstrained", "json", "code"}
    generation = figures["generation"]
    assert generation["tool_call"]["constrained"] and not generation["tool_call_unconstrained"]["constrained"]


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory):
    from deepseek.train import corpus

    return corpus.build_tokenizer(tmp_path_factory.mktemp("bpe"), 1024, 4096, seed=0, code_bytes=200_000,
                                  chat_examples=500)


def test_post_training_windows_hold_whole_conversations_and_mask_only_replies(small_tokenizer):
    from deepseek.tokenizer import BOS, EOS
    from deepseek.train import corpus

    tokenizer = small_tokenizer
    eos = tokenizer.token_to_id(EOS)
    tokens, mask = corpus.build_sft_windows(tokenizer, "train", 6, 1025, seed=3, eos_id=eos)
    assert tokens.shape == mask.shape == (6, 1025)
    for row, m in zip(tokens.tolist(), mask.tolist()):
        text = tokenizer.decode(row, skip_special_tokens=False)
        assert text.startswith(BOS)                                # a window opens with a conversation
        replies = tokenizer.decode([t for t, keep in zip(row, m) if keep], skip_special_tokens=False)
        assert replies.count(EOS) == text.count(BOS)               # one reply per conversation
        assert "<｜User｜>" not in replies and "## Tools" not in replies


def test_post_training_weighs_the_first_token_of_each_copied_item_more(small_tokenizer):
    from deepseek.tokenizer import BOS, EOS
    from deepseek.train import corpus

    tokenizer = small_tokenizer
    bos = tokenizer.token_to_id(BOS)
    tokens, weights = corpus.build_sft_windows(tokenizer, "train", 8, 1025, 3, tokenizer.token_to_id(EOS), 0.5)
    assert set(weights.unique().tolist()) == {0, 1, corpus.COPY_WEIGHT}
    heavy = (weights == corpus.COPY_WEIGHT).nonzero().tolist()
    calls = 0
    for row, at in heavy:
        window = tokens[row].tolist()
        start = max(i for i in range(at) if window[i] == bos)             # the conversation's first token
        before = tokenizer.decode(window[start:at], skip_special_tokens=False)
        first = tokenizer.decode([window[at]], skip_special_tokens=False).lstrip(' "=>')
        # a reply token that copies: it writes what the conversation's prompt already spelled
        assert weights[row, at - 1] > 0 or before.endswith("<｜Assistant｜>")
        assert first and first in before.split("<｜Assistant｜>")[0], (first, before[-200:])
        calls += "invoke name=" in before[-16:]
    replies = tokenizer.decode(tokens[weights > 0].tolist(), skip_special_tokens=False)
    assert calls == replies.count("invoke name=") > 0                     # every called function's name
    assert len(heavy) > 2 * calls                                         # and the values and keys


def _sft_windows(tokenizer, invented: float) -> torch.Tensor:
    from deepseek.tokenizer import EOS
    from deepseek.train import corpus

    return corpus.build_sft_windows(tokenizer, "train", 12, 1025, 3, tokenizer.token_to_id(EOS), invented)[0]


def _pretraining_windows(tokenizer, invented: float) -> torch.Tensor:
    from deepseek.train import corpus

    mixture = corpus.Mixture(tokens=12 * 1025, code_share=0.0, seed=3, chat_weights=(("tool_call", 1.0),),
                             invented=invented)
    return corpus.build_windows(tokenizer, "train", mixture, 1025)


@pytest.mark.parametrize("windows", [_sft_windows, _pretraining_windows], ids=["sft", "pretraining"])
def test_training_windows_call_made_up_tools_when_the_recipe_asks(small_tokenizer, windows):
    from deepseek.train.synthetic import tools

    tokenizer = small_tokenizer
    known = {tool.name for split in ("train", "heldout") for tool in tools(split)}

    def called(invented: float) -> set[str]:
        tokens = windows(tokenizer, invented)
        return set(re.findall(r'invoke name="(\w+)"', tokenizer.decode(tokens.flatten().tolist(), skip_special_tokens=False)))

    made_up, recalled = called(0.5), called(0.0)
    assert made_up - known and recalled and not recalled - known
