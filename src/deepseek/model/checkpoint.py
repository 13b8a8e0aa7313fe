"""Write checkpoints in the official format: config.json, (sharded) safetensors, FP8 or bf16.

Used by `deepseek init` (random weights for tests and demos), `deepseek convert`, and the trainer's
export. FP8 checkpoints store every block-quantized linear as e4m3 plus `weight_scale_inv`
(spec §10); embeddings, heads, norms, the router and `weights_proj` stay bf16 (the router bias fp32).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .config import ModelConfig
from .fp8 import FP8, dequantize_weight, quantize_weight
from .layers import LayerNorm, Linear, RMSNorm
from .loader import Checkpoint
from .moe import Gate
from .presets import FP8_QUANTIZATION_CONFIG
from .transformer import Transformer


def quantized_weight_names(config: ModelConfig) -> set[str]:
    """Names of the weights the official format stores as block FP8, for this config."""
    with torch.device("meta"):
        model = Transformer(config, attention="dense" if not config.has_indexer else "sparse")
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, Linear) and m.quantized}


@torch.no_grad()
def init_random_weights(model: Transformer, seed: int = 0) -> Transformer:
    """Deterministic random weights: N(0, initializer_range) matrices, unit norms, a small router bias."""
    g = torch.Generator().manual_seed(seed)
    std = model.config.initializer_range

    def normal(p: torch.Tensor, scale: float) -> None:
        p.copy_(torch.randn(p.shape, generator=g) * scale)

    for module in model.modules():
        if isinstance(module, (RMSNorm, LayerNorm)):
            module.weight.fill_(1.0)
            if isinstance(module, LayerNorm):
                normal(module.bias, 0.02)
        elif isinstance(module, Gate):
            normal(module.weight, std)
            normal(module.e_score_correction_bias, 0.05)
        elif isinstance(module, (Linear, nn.Embedding)):
            normal(module.weight, std)
    for mtp in model.mtp_layers:  # the checkpoint's copies are believed identical (spec §11)
        mtp.embed_tokens.weight.copy_(model.model.embed_tokens.weight)
        mtp.shared_head.head.weight.copy_(model.lm_head.weight)
    return model


def export_tensors(model: Transformer, fp8: bool) -> dict[str, torch.Tensor]:
    """The model's tensors under their checkpoint names, in the official dtypes."""
    q = model.config.quantization_config
    scale_fmt = q.scale_fmt if q is not None else "ue8m0"
    linears = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, Linear)}
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        if name.endswith("weight_scale_inv"):
            continue
        lin = linears.get(name)
        if lin is not None and lin.quantized:
            w = lin.weight
            if fp8:
                if w.dtype == FP8:
                    out[name], out[f"{name}_scale_inv"] = w, lin.weight_scale_inv.float()
                else:
                    out[name], out[f"{name}_scale_inv"] = quantize_weight(w, scale_fmt)
            else:
                out[name] = lin.dequantized_weight(torch.bfloat16)
        elif name.endswith("e_score_correction_bias"):
            out[name] = p.float()
        else:
            out[name] = p.to(torch.bfloat16)
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def write_config(config_dict: dict, out_dir: Path, fp8: bool) -> None:
    d = dict(config_dict)
    if fp8 and not d.get("quantization_config"):
        d["quantization_config"] = dict(FP8_QUANTIZATION_CONFIG)
    elif not fp8:
        d.pop("quantization_config", None)
    d["torch_dtype"] = "bfloat16"
    (out_dir / "config.json").write_text(json.dumps(d, indent=2) + "\n")
    (out_dir / "generation_config.json").write_text(json.dumps({
        "do_sample": True, "temperature": 1.0, "top_p": 0.95,
        "bos_token_id": d.get("bos_token_id", 0), "eos_token_id": d.get("eos_token_id", 1)}, indent=2) + "\n")


def write_safetensors(tensors: dict[str, torch.Tensor], out_dir: Path, shards: int = 1) -> None:
    """One `model.safetensors`, or `shards` files of about equal size plus the index json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if shards <= 1:
        save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        return
    names = list(tensors)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    per_shard, groups, size = total / shards, [[] for _ in range(shards)], 0
    for name in names:
        idx = min(int(size // per_shard), shards - 1) if per_shard else 0
        groups[idx].append(name)
        size += tensors[name].numel() * tensors[name].element_size()
    weight_map = {}
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in group}, str(out_dir / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in group})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def save_checkpoint(model: Transformer, out_dir: str | Path, fp8: bool = True, shards: int = 1,
                    config_dict: dict | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_config(config_dict or model.config.to_dict(), out_dir, fp8)
    write_safetensors(export_tensors(model, fp8), out_dir, shards)
    return out_dir


def convert_checkpoint(src: str | Path, dst: str | Path, to: str) -> Path:
    """Re-encode a checkpoint as `fp8` or `bf16`, one input shard at a time (keeps the sharding)."""
    if to not in ("fp8", "bf16"):
        raise ValueError(f"--to must be fp8 or bf16, got {to!r}")
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    raw = json.loads((src / "config.json").read_text())
    config = ModelConfig.from_dict(raw)
    scale_fmt = config.quantization_config.scale_fmt if config.quantization_config else "ue8m0"
    quantizable = quantized_weight_names(config)
    weight_map, total = {}, 0
    with Checkpoint(src) as ckpt:
        for fname, f in ckpt.files.items():
            out: dict[str, torch.Tensor] = {}
            for name in f.entries:
                if name.endswith("_scale_inv"):
                    continue
                t = f.read(name)
                if t.dtype == FP8:
                    s = ckpt.read(f"{name}_scale_inv")
                    if to == "fp8":
                        out[name], out[f"{name}_scale_inv"] = t, s
                    else:
                        out[name] = dequantize_weight(t, s.float(), torch.bfloat16)
                elif to == "fp8" and name in quantizable:
                    out[name], out[f"{name}_scale_inv"] = quantize_weight(t, scale_fmt)
                else:
                    out[name] = t
            save_file(out, str(dst / fname), metadata={"format": "pt"})
            weight_map.update({n: fname for n in out})
            total += sum(t.numel() * t.element_size() for t in out.values())
    if (src / "model.safetensors.index.json").exists():
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    write_config(raw, dst, to == "fp8")
    for extra in ("tokenizer.json", "tokenizer_config.json"):
        if (src / extra).exists():
            (dst / extra).write_bytes((src / extra).read_bytes())
    return dst
