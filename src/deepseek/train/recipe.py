"""The V3.2 training recipe at laptop scale: `deepseek train --recipe nano` (spec §8.6).

1. **dense**: pre-training with dense attention; the indexers and the MTP layer are not used yet.
   The first heads of layers 0 and 1 are also taught a copying circuit (a previous-token head and an
   induction head, `forward.copy_head_loss`), which this narrow model does not form unaided.
2. **indexer_warmup**: the main model frozen; each layer's indexer learns the KL divergence to its
   main attention (summed over heads, L1-normalised), over every visible key.
3. **sparse**: top-k attention on. The model keeps learning the next token; the indexer learns the
   KL restricted to the keys it selected, from detached inputs, so the two losses train disjoint parts.
   The main model also learns to keep its dense attention on the selected keys (`Mode.concentrate`):
   at 1/8 of its context this small model's first layers spread their attention too widely for any
   top-k to hold 90% of it.
   **sft**: post-training, still sparse: most of each batch (`sft_chat_share`) is whole
   conversations (tool calls, tool answers, JSON, Q&A, thinking) with the loss counted on the
   assistant's replies alone, the rest pre-training text (without it the model forgot how to write
   code and answered everything with a DSML call). In half the tool and JSON conversations the tool
   names, argument values or JSON keys are made up (`sft_invented`), so they can only be copied,
   not recalled, and each reply token that starts a copied item weighs `corpus.COPY_WEIGHT` in the loss.
4. **mtp**: the main model frozen (running sparse); the MTP layer learns token t+2, and its own
   indexer the dense KL.
5. **export**: the official checkpoint format, FP8 block-quantized weights, plus a bf16 copy that the
   evaluation compares against.

Every stage resumes where it stopped. Windows are read in a fixed order, and each stage reads the
windows after the previous stage's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from deepseek.model import ModelConfig, Transformer
from deepseek.model.checkpoint import init_random_weights, save_checkpoint
from deepseek.model.layers import Linear
from deepseek.model.moe import MoE, Gate
from deepseek.model.presets import preset_config

from . import corpus
from .forward import Mode
from .loop import Stage, is_finished, load_state, plot_losses, run_stage


@dataclass(frozen=True)
class Recipe:
    name: str
    preset: str
    context: int             # training window, tokens
    batch: int               # windows per step
    stages: tuple[Stage, ...]
    code_share: float = 0.3
    seed: int = 0
    overrides: tuple = ()    # (key, value) pairs applied to the preset's config.json
    # "hf": N(0, initializer_range) everywhere, as HF initialises V3. "scaled": every matrix
    # N(0, 1/fan_in), so attention logits start near unit spread in this narrow model (at 0.02 they
    # start 10x flatter, and the first layers' attention never left uniform in 1400 steps).
    init: str = "hf"
    # Share of pre-training windows in which a few stretches repeat earlier ones (teaches copying).
    copy_share: float = 0.0
    # Rows of pure copy practice (`corpus.copy_rows`) added to each batch of the stages that train
    # the main model on pre-training text (dense, sparse).
    copy_rows: int = 0
    chat_weights: tuple = ()     # (kind, weight) pairs of the pre-training conversations
    # Train with lm_head tied to the embedding (the checkpoint still stores both). Untied, this
    # narrow model did not learn even a fixed-distance copy task over its 4096-token vocabulary in
    # 400 steps; tied, it solved it in 200.
    tie_embeddings: bool = False
    sft_chat_share: float = 0.5  # share of each post-training batch that is conversations
    # Share of post-training tool and JSON conversations whose tool names and JSON keys are made up
    # (`data.examples`): a name seen in training can be recalled, a made-up one only copied. From the
    # same sparse checkpoint, post-training with 0.5 against none: held-out tool calls to the right
    # function 9/200 against 0/200, JSON answers with the asked keys 30% against 22%.
    sft_invented: float = 0.0
    # The same share for the pre-training conversations.
    pretrain_invented: float = 0.0

    def config(self) -> dict:
        return {**preset_config(self.preset), **dict(self.overrides)}

    @property
    def sft_text_rows(self) -> int:
        """Rows of pre-training text in each post-training batch (the rest are conversations)."""
        return self.batch - round(self.batch * self.sft_chat_share)

    @property
    def tokens(self) -> int:
        """Pre-training tokens the stages read (post-training reads windows of its own)."""
        return sum(s.steps for s in self.stages if not s.sft) * self.batch * (self.context + 1)


def _stages(dense: int, warmup: int, sparse: int, sft: int, mtp: int, lr: float) -> tuple[Stage, ...]:
    return (Stage("dense", dense, lr, "main", Mode(copy_heads=(0, 1)), warmup=max(1, min(100, dense // 10))),
            Stage("indexer_warmup", warmup, 1e-3, "indexer", Mode(index_loss="dense"), warmup=10),
            Stage("sparse", sparse, lr / 5, "all", Mode(sparse=True, index_loss="sparse", concentrate=1.0), warmup=10),
            Stage("sft", sft, lr / 2, "all", Mode(sparse=True, index_loss="sparse", concentrate=1.0), warmup=10,
                  sft=True),
            Stage("mtp", mtp, 1e-3, "mtp", Mode(index_loss="dense"), warmup=10))


# Pre-training conversations lean to tool use, the skill the default model is most wanted for.
TOOL_HEAVY = (("tool_call", 0.45), ("tool_answer", 0.2), ("json", 0.15), ("qa", 0.1), ("thinking", 0.1))
_TRAINING = dict(init="scaled", tie_embeddings=True, copy_share=0.5, sft_chat_share=0.75, chat_weights=TOOL_HEAVY,
                 sft_invented=0.5)

RECIPES = {
    # Sized by measurement on 2 CPU cores, median seconds per step at 1024 tokens (session 14's run,
    # the shipped weights): dense 3.12 (4 text rows and 2 copy rows, with the copy heads), indexer
    # warm-up 2.37, sparse 5.48 (with concentration), post-training 3.13, MTP 1.61: 110 minutes.
    # The copy rows: after 400 dense steps, with them and the copy heads the loss on a held-out
    # stretch of code repeated at once was 19% below its first time; with the heads alone 6.5%,
    # with neither 6.0%.
    "nano": Recipe("nano", "nano", context=1024, batch=4, stages=_stages(1200, 120, 200, 400, 120, 3e-3),
                   copy_rows=2, **_TRAINING),
    # The same pipeline in seconds, for tests: a smaller model, short windows, a few steps per stage.
    "smoke": Recipe("smoke", "nano", context=128, batch=2, stages=_stages(6, 3, 3, 3, 3, 2e-3),
                    overrides=(("vocab_size", 512), ("index_topk", 16), ("num_hidden_layers", 2)), **_TRAINING),
}


def build_model(recipe: Recipe) -> Transformer:
    model = init_random_weights(Transformer(ModelConfig.from_dict(recipe.config()), dtype=torch.float32),
                                recipe.seed)
    if recipe.init == "scaled":
        _scale_init(model)
    if recipe.tie_embeddings:
        with torch.no_grad():   # a unit-norm row per token: logits start at unit spread
            model.model.embed_tokens.weight.mul_(model.config.hidden_size ** -0.5 / model.model.embed_tokens.weight.std())
        model.lm_head.weight = model.model.embed_tokens.weight
    sync_mtp_copies(model)
    for m in model.modules():
        if isinstance(m, MoE):
            m.gate.e_score_correction_bias.data.zero_()     # balancing starts from no preference
    return model


@torch.no_grad()
def _scale_init(model: Transformer) -> None:
    """Rescale the N(0, initializer_range) draws to std fan_in^-0.5 (embeddings: 1); projections that
    write into the residual stream get a further 1/sqrt(2·layers), so the stream starts embedding-led."""
    base = model.config.initializer_range
    residual = (2 * model.config.num_hidden_layers) ** -0.5
    for name, m in model.named_modules():
        if isinstance(m, Linear):
            target = m.in_features ** -0.5 * (residual if name.endswith(("o_proj", "down_proj")) else 1.0)
            m.weight.mul_(target / base)
        elif isinstance(m, Gate):
            m.weight.mul_(m.weight.shape[1] ** -0.5 / base)
    model.model.embed_tokens.weight.mul_(1.0 / base)


@torch.no_grad()
def sync_mtp_copies(model: Transformer) -> None:
    """The MTP layer's embedding and head are copies of the main model's (spec §11): refresh them."""
    for mtp in model.mtp_layers:
        mtp.embed_tokens.weight.copy_(model.model.embed_tokens.weight)
        mtp.shared_head.head.weight.copy_(model.lm_head.weight)


def untie(model: Transformer) -> Transformer:
    """Give lm_head its own tensor again (equal values), as the checkpoint format stores it."""
    if model.lm_head.weight is model.model.embed_tokens.weight:
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone(), requires_grad=False)
    return model


def train(recipe: Recipe, work: Path, out: Path | None = None, progress: bool = True,
          device: str = "cpu") -> dict:
    """Run (or resume) every stage on `device`, then export. Returns a summary with the paths written."""
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = corpus.build_tokenizer(work, recipe.config()["vocab_size"],
                                       recipe.config()["max_position_embeddings"], recipe.seed)
    mixture = corpus.Mixture(tokens=recipe.tokens, code_share=recipe.code_share, seed=recipe.seed,
                             chat_weights=recipe.chat_weights, invented=recipe.pretrain_invented)
    windows = corpus.cached_tensors(work / "train_windows.safetensors", lambda: {"tokens": corpus.build_windows(
        tokenizer, "train", mixture, recipe.context + 1)})["tokens"].long()
    sft = sft_windows(recipe, tokenizer, work)
    model = build_model(recipe).to(device)
    summary, offset = {"recipe": recipe.name, "stages": {}}, 0
    for stage in recipe.stages:
        first = offset

        def batches(step: int, first=first, stage=stage):
            i = (first + step * recipe.batch) % (len(windows) - recipe.batch + 1)
            if not stage.sft:
                text = corpus.repeat_spans(windows[i:i + recipe.batch], recipe.copy_share, recipe.seed + i)
                if not recipe.copy_rows or stage.trains not in ("main", "all"):
                    return text
                copies, mask = corpus.copy_rows(recipe.copy_rows, text.shape[1], recipe.config()["vocab_size"],
                                                recipe.seed + 7919 * (first + step))
                return torch.cat((text, copies)), torch.cat((torch.ones_like(text, dtype=torch.uint8), mask))
            # Conversations (loss on replies) mixed with pre-training text (loss everywhere), so
            # post-training does not make the model forget how to write code.
            text, chats = recipe.sft_text_rows, recipe.batch - recipe.sft_text_rows
            j = step * chats % (len(sft[0]) - recipe.batch + 1)
            tokens = torch.cat((sft[0][j:j + chats].long(), windows[i:i + text]))
            mask = torch.cat((sft[1][j:j + chats], torch.ones_like(windows[i:i + text], dtype=torch.uint8)))
            return tokens, mask

        if is_finished(work, stage):
            _, log = load_state(work / f"{stage.name}.state", model)
        else:
            if stage.trains == "mtp":     # the main model is final now: the MTP layer reads its copies
                sync_mtp_copies(model)
            log = run_stage(model, stage, batches, work, progress=progress)
        offset += stage.steps * (recipe.sft_text_rows if stage.sft else recipe.batch)
        plot = plot_losses(log, work / f"{stage.name}.png", f"{recipe.name}: {stage.name}")
        summary["stages"][stage.name] = {"steps": stage.steps, "last": log[-1] if log else None,
                                         "seconds": round(sum(r["seconds"] for r in log), 1),
                                         "plot": str(plot) if plot else None}
    summary.update(export(untie(model.cpu()), recipe, work, out or work / "export"))
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def sft_windows(recipe: Recipe, tokenizer, work: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The post-training windows and their loss weights (`corpus.build_sft_windows`), made once."""
    steps = sum(s.steps for s in recipe.stages if s.sft)

    def make() -> dict[str, torch.Tensor]:
        tokens, mask = corpus.build_sft_windows(tokenizer, "train", max(1, steps * recipe.batch),
                                                recipe.context + 1, recipe.seed + 10_000,
                                                recipe.config()["eos_token_id"], recipe.sft_invented)
        return {"tokens": tokens, "mask": mask}

    tensors = corpus.cached_tensors(work / "sft_windows.safetensors", make)
    return tensors["tokens"], tensors["mask"]


def export(model: Transformer, recipe: Recipe, work: Path, out: Path) -> dict:
    """The FP8 checkpoint at `out` (config, safetensors, tokenizer) and a bf16 twin in `work/bf16`."""
    from deepseek.tokenizer import load_tokenizer, write_tokenizer

    config = recipe.config()
    paths = {}
    for folder, fp8 in ((out, True), (work / "bf16", False)):
        save_checkpoint(model, folder, fp8=fp8, config_dict=config)
        write_tokenizer(load_tokenizer(work), folder, config["max_position_embeddings"])
        paths["fp8" if fp8 else "bf16"] = str(folder)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return {"export": paths, "export_bytes": size}

