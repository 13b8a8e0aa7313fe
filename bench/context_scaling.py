"""How does the decode step time grow with context, sparse (DSA) vs dense (MLA), on the `bench` preset?

Method. Prefilling 64K tokens on this CPU would take many minutes, and the cost of a decode step
depends on the context length, not on its content. So for each context T we fill rows [0, T) of
every layer of a `PagedKVCache` directly with random values of realistic scale, and time
`model.step` for ONE new token at position T through a `PagedCacheView` (block table, slot mapping,
cache write and reads as in the engine), plus the fp32 LM head. The block table is one ascending
run of block ids, as a fresh engine's free pool hands out (--shuffle-blocks: a scattered one).
The scales are measured, not guessed: the standard deviation of each cached kind (KV latent after
RMSNorm and its FP8 round trip, rotated k_pe, indexer key after LayerNorm, Hadamard and FP8) per
layer, from a real prefill of 256 random tokens; each row is then drawn from N(0, that std), and the
indexer keys are FP8-rounded, as the model writes them, with their int8 sketch (on CPU). Each
point is the median of several steps after one warm-up step, sparse and dense steps alternating;
wall and CPU time are both reported (CPU time is the steadier one when other jobs share the cores).

Goals: sparse >= 3x faster than dense at 64K; sparse step time at 64K <= 2.5x its 1K time. A
breakdown of the sparse (and dense) step at the largest context says where the time goes:
manual timers around the cache reads, the indexer scan, the top-k and the attention core (the rest
is weights: projections, MoE, norms, LM head), and torch.profiler's top operators.

Usage: python bench/context_scaling.py [--contexts 1024 4096 ...] [--steps 5] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import NamedTuple

import torch

from common import checkpoint, emit, other_load, save_plot, timed, timed_parts

KINDS = ("latent", "k_pe", "index_k")


class Filled(NamedTuple):
    """A paged cache with rows written, and the block table of the one sequence that owns them."""

    kv: object          # deepseek.engine.cache.PagedKVCache
    blocks: list[int]


@torch.inference_mode()
def measured_scales(model, n: int = 256) -> dict[str, list[float]]:
    """Std of each cached kind, per layer, after a real dense prefill of `n` random tokens."""
    from deepseek.model import ForwardBatch

    cache = model.new_cache(1, n)
    tokens = torch.randint(20, model.config.vocab_size, (n,), generator=torch.Generator().manual_seed(0))
    model.step(tokens, ForwardBatch(starts=(0,), lengths=(n,), sparse=(False,), cache=cache))
    return {k: [t[0, :n].float().std().item() for t in getattr(cache, k)] for k in KINDS}


def filled_cache(model, max_context: int, block_size: int, scales: dict, shuffle: bool) -> Filled:
    """A paged cache whose rows [0, max_context) hold N(0, std) values in every layer and kind."""
    from deepseek.engine.cache import PagedKVCache
    from deepseek.model.fp8 import fake_quantize_activation
    from deepseek.model.indexer import store_sketch

    num_blocks = -(-(max_context + 1) // block_size)
    kv = PagedKVCache(model.config, model.num_cache_layers, num_blocks, block_size, model.dtype)
    # The sequence's block table: one ascending run (a fresh engine's free pool), or scattered.
    order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(2)) if shuffle else range(num_blocks)
    g = torch.Generator().manual_seed(1)
    for kind in KINDS:
        for layer, t in enumerate(getattr(kv, kind)):
            rows = t.view(-1, t.shape[-1])[:max_context]
            for start in range(0, max_context, 8192):   # fp32 noise in chunks keeps the temporary small
                chunk = torch.randn(rows[start:start + 8192].shape, generator=g) * scales[kind][layer]
                if kind == "index_k":                    # real indexer keys are FP8 values
                    chunk = fake_quantize_activation(chunk)
                    if kv.index_sketch is not None:      # ... and their int8 sketch goes with them
                        store_sketch(kv.index_sketch[layer], torch.arange(start, start + chunk.shape[0]), chunk)
                rows[start:start + chunk.shape[0]] = chunk
    return Filled(kv, [int(b) for b in order])


@torch.inference_mode()
def decode_step(model, cache, context: int, sparse: bool) -> None:
    """One engine-style decode step: the token at position `context` sees rows [0, context]."""
    from deepseek.model import ForwardBatch

    table = cache.blocks[:-(-(context + 1) // cache.kv.block_size)]
    batch = ForwardBatch(starts=(context,), lengths=(1,), sparse=(sparse,), cache=cache.kv.view([table]))
    model.logits(model.step(torch.tensor([7]), batch))


def step_ms(model, cache, context: int, steps: int) -> dict[str, float]:
    """Median wall and CPU ms of a sparse and a dense step, the two alternating so both see the same load."""
    runs = {key: [] for key in ("sparse_ms", "dense_ms", "sparse_cpu_ms", "dense_cpu_ms")}
    for mode in ("sparse", "dense"):
        decode_step(model, cache, context, mode == "sparse")        # warm-up
    for _ in range(steps):
        for mode in ("sparse", "dense"):
            wall, cpu = timed(lambda: decode_step(model, cache, context, mode == "sparse"))
            runs[f"{mode}_ms"].append(1000 * wall)
            runs[f"{mode}_cpu_ms"].append(1000 * cpu)
    return {"context": context, **{k: statistics.median(v) for k, v in runs.items()},
            "runs_ms": {k: [round(x, 2) for x in v] for k, v in runs.items()}}


def ratios(points: list[dict], suffix: str) -> dict[str, float]:
    """The two goal ratios, from the wall ("_ms") or CPU ("_cpu_ms") medians."""
    big, small = points[-1], points[0]
    return {"dense_over_sparse_at_max": big["dense" + suffix] / big["sparse" + suffix],
            "sparse_max_over_min": big["sparse" + suffix] / small["sparse" + suffix]}


def step_parts() -> list[tuple[object, str, str]]:
    """The parts of a decode step that depend on the context length. Labels "(inside ...)" are
    nested in another part: reported, not added up. Parts the code under test lacks are skipped."""
    import deepseek.model.indexer as indexer
    from deepseek.engine.cache import PagedCacheView, PagedKVCache
    from deepseek.model.mla import MLA

    return [(PagedKVCache, "view", "block table -> slots"), (PagedCacheView, "store", "cache write"),
            (PagedCacheView, "store_tokens", "cache write"),
            (PagedCacheView, "load", "cache read, all T rows (dense)"),
            (PagedCacheView, "load_index_keys", "indexer: key read, all T rows"),
            (PagedCacheView, "load_index_sketch", "indexer: int8 sketch read, all T rows"),
            (indexer.Indexer, "select", "indexer: select (queries, scan of all T keys, top-k)"),
            (indexer.Indexer, "scores", "(inside select) fp32 scan of all T keys"),
            (indexer, "screened_topk", "(inside select) screened scan + exact rescoring"),
            (indexer, "sketched_topk", "(inside select) int8 sketch scan + exact rescoring"),
            (indexer, "topk_positions", "(inside select) top-k with ties"),
            (PagedCacheView, "slots_of", "slots of the attended rows"),
            (MLA, "_absorbed", "attention core (absorbed MLA)")]


def breakdown(model, cache, context: int, sparse: bool, steps: int) -> dict:
    """Mean ms per step of each part at `context`; 'weights & rest' is the step minus the parts."""
    decode_step(model, cache, context, sparse)
    start = time.perf_counter()
    with timed_parts(step_parts()) as totals:
        for _ in range(steps):
            decode_step(model, cache, context, sparse)
    step = 1000 * (time.perf_counter() - start) / steps
    parts = {k: v / steps for k, v in totals.items() if v > 0}
    parts["weights & rest (projections, MoE, norms, LM head)"] = step - sum(
        v for k, v in parts.items() if not k.startswith("(inside"))
    return {"step_ms": step, "parts_ms": parts}


def top_ops(model, cache, context: int, sparse: bool, n: int = 10) -> list[dict]:
    """torch.profiler's operators with the most self CPU time in one decode step."""
    from torch.profiler import ProfilerActivity, profile

    decode_step(model, cache, context, sparse)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        decode_step(model, cache, context, sparse)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    return [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1000} for e in events]


def plot(points: list[dict], name: str) -> Path:
    def draw(ax):
        xs = [p["context"] for p in points]
        for mode, style, color in (("sparse", "o-", "tab:blue"), ("dense", "s--", "tab:orange")):
            ax.plot(xs, [p[f"{mode}_ms"] for p in points], style, color=color, label=f"{mode}, wall (median)")
            ax.plot(xs, [p[f"{mode}_cpu_ms"] for p in points], ":", color=color, alpha=0.6,
                    label=f"{mode}, CPU time (median)")
        base = points[0]["sparse_ms"]
        ax.axhline(2.5 * base, color="gray", ls=":", label=f"goal: 2.5x sparse at {points[0]['context']}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context tokens")
        ax.set_ylabel("decode step (ms), batch 1")
        ax.set_title("bench preset: one decode step vs context")
    return save_plot(name, draw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384, 32768, 65536])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--shuffle-blocks", action="store_true", help="a scattered block table, not one run")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ds-bench"))
    parser.add_argument("--quick", action="store_true", help="tiny preset, short contexts: a smoke test")
    args = parser.parse_args()
    from deepseek.engine.cache import PagedKVCache
    from deepseek.model import Transformer

    torch.set_num_threads(args.threads)
    preset, contexts, steps = (("tiny", [128, 512], 2) if args.quick
                               else ("bench", sorted(args.contexts), args.steps))
    model = Transformer.from_pretrained(checkpoint(args.dir / preset, preset), mtp=False)
    model.prepare_inference()         # as the engine runs it: weight layouts, packed products, kernels
    from deepseek.engine.engine import keep_freed_memory
    keep_freed_memory()               # and as its process allocates (LLM() and the server set it)
    scales = measured_scales(model)
    cache = filled_cache(model, contexts[-1], args.block_size, scales, args.shuffle_blocks)
    with other_load() as load:
        points = [step_ms(model, cache, t, steps) for t in contexts]
    big, small = points[-1], points[0]
    per_block = PagedKVCache.bytes_per_block(model.config, model.num_cache_layers, args.block_size, model.dtype)
    result = {
        "preset": preset, "params": sum(p.numel() for p in model.parameters()),
        "index_topk": model.config.index_topk, "index_n_heads": model.config.index_n_heads, "threads": args.threads,
        "block_size": args.block_size, "shuffled_blocks": args.shuffle_blocks, "steps_per_point": steps,
        "cache_mib": cache.kv.num_blocks * per_block / 2**20,
        "measured_scales": scales, "points": points, "other_load_cores": load["cores"],
        "wall": ratios(points, "_ms"), "cpu_time": ratios(points, "_cpu_ms"),
        "breakdown_at_max": {m: breakdown(model, cache, big["context"], m == "sparse", steps)
                             for m in ("sparse", "dense")},
        "top_ops_sparse_at_max": top_ops(model, cache, big["context"], True),
    }
    result["goals"] = {f"dense/sparse at {big['context']} >= 3":
                       {k: result[k]["dense_over_sparse_at_max"] >= 3 for k in ("wall", "cpu_time")},
                       f"sparse {big['context']} / {small['context']} <= 2.5":
                       {k: result[k]["sparse_max_over_min"] <= 2.5 for k in ("wall", "cpu_time")}}
    name = "context_scaling-quick" if args.quick else "context_scaling"
    result["plot"] = str(plot(points, name))
    rows = [[p["context"], f"{p['sparse_ms']:.1f}", f"{p['dense_ms']:.1f}", f"{p['sparse_cpu_ms']:.1f}",
             f"{p['dense_cpu_ms']:.1f}", f"{p['dense_ms'] / p['sparse_ms']:.2f}",
             f"{p['sparse_ms'] / small['sparse_ms']:.2f}"] for p in points]
    emit(name, result, ["context", "sparse (ms)", "dense (ms)", "sparse CPU (ms)", "dense CPU (ms)",
                        "dense / sparse", "sparse / sparse@min"], rows)
    for key in ("wall", "cpu_time"):
        print(f"\n{key}: " + ", ".join(f"{k} = {v:.2f}" for k, v in result[key].items()))
    for mode, b in result["breakdown_at_max"].items():
        parts = sorted(b["parts_ms"].items(), key=lambda item: -item[1])
        print(f"\n{mode} step at {big['context']}: {b['step_ms']:.1f} ms = "
              + ", ".join(f"{k} {v:.1f}" for k, v in parts))


if __name__ == "__main__":
    main()
