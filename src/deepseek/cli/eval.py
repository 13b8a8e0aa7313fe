"""`deepseek eval --model DIR`: perplexity (dense, sparse, FP8 vs bf16), indexer coverage, tool calls,
JSON answers and code, all on held-out data (deepseek/train/evaluate.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None, help="checkpoint folder (default: the bundled model)")
    p.add_argument("--bf16-twin", type=Path, default=None,
                   help="the bf16 export of the same weights, to measure what FP8 costs")
    p.add_argument("--windows", type=int, default=16, help="held-out windows per kind of text")
    p.add_argument("--tool-calls", type=int, default=200)
    p.add_argument("--json", type=int, default=100)
    p.add_argument("--code", type=int, default=100)
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 windows, 8 of each generation test")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--output", type=Path, default=None, help="also write the figures here (JSON)")


def run(args: argparse.Namespace) -> int:
    import torch

    from deepseek.assets import default_model_dir
    from deepseek.train.evaluate import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    counts = {"tool_call": args.tool_calls, "json": args.json, "code": args.code}
    windows = args.windows
    if args.quick:
        counts, windows = {k: 8 for k in counts}, 2
    figures = evaluate(args.model or default_model_dir(), args.bf16_twin, windows=windows, counts=counts)
    text = json.dumps(figures, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    return 0
