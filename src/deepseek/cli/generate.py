"""`deepseek generate --model DIR --prompt TEXT`: greedy generation through the cache."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="checkpoint folder")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--attention", choices=["sparse", "dense"], default="sparse")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")


def run(args: argparse.Namespace) -> int:
    import torch

    from deepseek.model import Transformer
    from deepseek.model.generate import greedy_generate
    from deepseek.tokenizer import load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.model)
    model = Transformer.from_pretrained(args.model, attention=args.attention, mtp=False)
    prompt = [model.config.bos_token_id] + tokenizer.encode(args.prompt, add_special_tokens=False).ids
    ids, shown = [], ""
    for token in greedy_generate(model, prompt, args.max_tokens):
        ids.append(token)
        text = tokenizer.decode(ids, skip_special_tokens=False)
        if not text.endswith("\ufffd"):  # hold back a half-decoded UTF-8 character
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text
    sys.stdout.write("\n")
    return 0
