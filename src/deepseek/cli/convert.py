"""`deepseek convert --to fp8|bf16 IN OUT`: re-encode a checkpoint, shard by shard."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", choices=["fp8", "bf16"], required=True)
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)


def run(args: argparse.Namespace) -> int:
    from deepseek.model.checkpoint import convert_checkpoint

    print(f"wrote {args.to} checkpoint to {convert_checkpoint(args.src, args.dst, args.to)}")
    return 0
