"""`deepseek train --recipe nano`: train the default model from scratch, resumably (deepseek/train/)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from deepseek.train.recipe import RECIPES

    p.add_argument("--recipe", choices=list(RECIPES), default="nano")
    p.add_argument("--work-dir", type=Path, default=Path("runs/nano"),
                   help="tokenizer, token streams, stage states and loss plots; rerun to resume")
    p.add_argument("--out", type=Path, default=None, help="the FP8 export (default: WORK_DIR/export)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--device", default="cpu", help="where to train: cpu, cuda, cuda:1, ...")


def run(args: argparse.Namespace) -> int:
    import torch

    from deepseek.engine.engine import keep_freed_memory
    from deepseek.train.recipe import RECIPES, train

    if args.threads:
        torch.set_num_threads(args.threads)
    # Keep activations' memory between steps (glibc): on 2 cores a dense nano step took 6.6 s
    # without this, 3.1 s with it (README, "The default model").
    keep_freed_memory(block=1 << 30, keep=(1 << 31) - 1)
    summary = train(RECIPES[args.recipe], args.work_dir, args.out, device=args.device)
    print(json.dumps(summary, indent=2))
    return 0
