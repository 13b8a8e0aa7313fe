"""`deepseek generate --model DIR --prompt TEXT`: generate through the engine, streaming to stdout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None,
                   help="checkpoint folder (default: the bundled model when it ships, else a tiny random one)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--attention", choices=["sparse", "dense"], default="sparse")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="compute dtype")


def run(args: argparse.Namespace) -> int:
    import torch

    from deepseek.engine.engine import LLMEngine
    from deepseek.engine.request import Request
    from deepseek.engine.sampler import SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    from deepseek.assets import default_model_dir

    if args.model is not None and not args.model.exists():
        raise FileNotFoundError(f"no checkpoint at {args.model} (tokenizer.json missing)")
    engine = LLMEngine.from_pretrained(args.model or default_model_dir(), dtype={"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype])
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                            max_tokens=args.max_tokens)
    bos = engine.model.config.bos_token_id
    prompt = (bos, *engine.tokenizer.encode(args.prompt, add_special_tokens=False).ids)
    engine.add_request(Request("cli", prompt, params, sparse=args.attention == "sparse"))
    while engine.has_unfinished():
        for out in engine.step():
            sys.stdout.write(out.text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
