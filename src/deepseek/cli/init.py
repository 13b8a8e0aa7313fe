"""`deepseek init --preset tiny OUT_DIR`: a random checkpoint in the official format, with a tokenizer."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from deepseek.model.presets import PRESETS

    p.add_argument("out_dir", type=Path)
    p.add_argument("--preset", default="tiny", choices=[k for k in PRESETS if k != "671b"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shards", type=int, default=1, help="number of safetensors files")
    p.add_argument("--dtype", choices=["fp8", "bf16"], default="fp8", help="weight format on disk")


def run(args: argparse.Namespace) -> int:
    out = init_checkpoint(args.out_dir, args.preset, args.seed, args.shards, args.dtype == "fp8")
    print(f"wrote {args.preset} checkpoint to {out}")
    return 0


def init_checkpoint(out_dir: Path, preset: str = "tiny", seed: int = 0, shards: int = 1,
                    fp8: bool = True) -> Path:
    import torch

    from deepseek.model import ModelConfig, Transformer
    from deepseek.model.checkpoint import init_random_weights, save_checkpoint
    from deepseek.model.presets import preset_config
    from deepseek.tokenizer import sample_corpus, train_byte_bpe, write_tokenizer

    raw = preset_config(preset)
    config = ModelConfig.from_dict(raw)
    model = init_random_weights(Transformer(config, dtype=torch.float32), seed)
    save_checkpoint(model, out_dir, fp8=fp8, shards=shards, config_dict=raw)
    write_tokenizer(train_byte_bpe(sample_corpus(), config.vocab_size), Path(out_dir),
                    config.max_position_embeddings)
    return Path(out_dir)
