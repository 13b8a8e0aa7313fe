"""`deepseek eval`: the acceptance figures of a trained checkpoint, on held-out data only.

* perplexity of held-out code and chat windows: dense, sparse (index_topk = context/8), and the
  bf16 twin of the FP8 export (all computed in fp32, so only the weights differ);
* indexer coverage: the share of each head's dense attention mass that falls on the indexer's top-k,
  averaged over layers, heads and the queries that see more than k keys (earlier ones are trivially 1);
* in-context copying: the loss on a held-out stretch of code when it comes a second time, against
  its first time (a model that can copy from its context predicts the repeat almost free);
* generation (greedy, through the engine in bf16 with sparse attention, as `deepseek serve` runs):
  tool calls on held-out schemas and phrasings, JSON answers, and held-out function bodies that parse.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from deepseek.model import Transformer
from deepseek.tokenizer import load_tokenizer

from . import corpus, data
from . import forward as fw


@torch.inference_mode()
def perplexity(model: Transformer, windows: torch.Tensor, mode: fw.Mode, batch: int = 4) -> float:
    """exp(mean next-token loss) over windows [N, S+1]."""
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        w = windows[i:i + batch]
        logits = fw.logits(model, w[:, :-1], mode)
        total += float(fw.cross_entropy(logits, w[:, 1:])) * w[:, 1:].numel()
        count += w[:, 1:].numel()
    return math.exp(total / count)


@torch.inference_mode()
def coverage(model: Transformer, windows: torch.Tensor, index_topk: int, batch: int = 4) -> dict:
    """Mean share of dense attention mass on the indexer's top-k, overall and per layer."""
    per_layer = []
    for i in range(0, len(windows), batch):
        aux = fw.Aux()
        fw.hidden_states(model, windows[i:i + batch, :-1], fw.Mode(coverage=True, index_topk=index_topk), aux)
        per_layer.append(torch.stack(aux.coverage))
    layers = torch.stack(per_layer).mean(0)
    return {"mean": float(layers.mean()), "per_layer": [round(float(x), 4) for x in layers]}


@torch.inference_mode()
def copying(model: Transformer, windows: torch.Tensor, span: int = 128, skip: int = 8) -> dict:
    """Mean loss on stretches of `span` tokens of held-out text, first and second time in a row
    (the first `skip` tokens of each copy left out: no copy can predict where a repeat begins)."""
    stretch = windows[:, :span]
    tokens = torch.cat((stretch, stretch), 1)
    logits = fw.logits(model, tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(),
                                             reduction="none").view(len(tokens), -1)
    first, again = loss[:, skip - 1:span - 1].mean(), loss[:, span + skip - 1:].mean()
    return {"span": span, "loss_first": float(first), "loss_repeat": float(again)}


def load(folder: Path) -> Transformer:
    return Transformer.from_pretrained(folder, dtype=torch.float32)


def language_figures(model: Transformer, twin: Transformer | None, held: dict[str, torch.Tensor],
                     context: int) -> dict:
    """Perplexities (dense / sparse / bf16 twin) per kind of text, their ratios, and indexer coverage."""
    k = context // 8
    out = {"context": context, "index_topk_eval": k}
    for kind, windows in held.items():
        dense = perplexity(model, windows, fw.Mode())
        sparse = perplexity(model, windows, fw.Mode(sparse=True, index_topk=k))
        row = {"tokens": windows[:, 1:].numel(), "ppl_dense": dense, "ppl_sparse": sparse,
               "sparse_over_dense": sparse / dense}
        if twin is not None:
            row["ppl_bf16_dense"] = perplexity(twin, windows, fw.Mode())
            row["fp8_over_bf16"] = dense / row["ppl_bf16_dense"]
        out[kind] = row
    out["coverage"] = coverage(model, torch.cat(list(held.values())), k)
    if "code" in held:
        out["copying"] = copying(model, held["code"])
    return out


def generation_figures(folder: Path, counts: dict[str, int], seed: int) -> dict:
    from deepseek.engine.llm import LLM

    from . import generation_eval as gen

    llm = LLM(folder, attention="sparse", dtype=torch.bfloat16)    # as `deepseek serve` runs it
    out = {}
    if counts.get("tool_call"):
        examples = data.examples("tool_call", counts["tool_call"], "heldout", seed)
        out["tool_call"] = gen.tool_call_accuracy(llm, examples)     # as served: calls held to the schemas
        out["tool_call_unconstrained"] = gen.tool_call_accuracy(llm, examples, constrained=False)
    if counts.get("json"):
        out["json"] = gen.json_accuracy(llm, data.examples("json", counts["json"], "heldout", seed))
    if counts.get("code"):
        out["code"] = gen.code_parse_rate(llm, data.function_headers("heldout", counts["code"], seed))
    return out


def evaluate(folder: Path, twin: Path | None = None, windows: int = 16, context: int | None = None,
             counts: dict[str, int] | None = None, seed: int = 1) -> dict:
    """Every figure for the checkpoint at `folder` (FP8 or bf16); `twin`: its bf16 export, if any."""
    model = load(folder)
    context = context or model.config.rope_scaling.original_max_position_embeddings
    tokenizer = load_tokenizer(folder)
    held = {kind: corpus.heldout_windows(tokenizer, kind, windows, context + 1, seed) for kind in ("code", "chat")}
    figures = {"checkpoint": str(folder),
               "language": language_figures(model, load(twin) if twin else None, held, context)}
    counts = {"tool_call": 200, "json": 100, "code": 100} if counts is None else counts
    figures["generation"] = generation_figures(folder, counts, seed)
    return figures
