"""How much memory does loading a DeepSeek-V3.2 FP8 checkpoint take, dequantized vs FP8-resident?

Writes a random FP8 checkpoint of the `bench` preset (>= 100M parameters), then loads it twice, each
time in a fresh process, and reads the process's resident (VmRSS) and peak (VmHWM) memory from
/proc. Model memory is measured net of the process's baseline after `import torch`.

Questions answered:
* FP8-resident block-quantized weights vs the same weights in bf16 (goal <= 0.55x);
* the loader's peak vs the final resident size (goal <= 1.3x), in both modes;
* the whole model, FP8-resident vs dequantized.

Usage: python bench/memory.py [--preset bench] [--dir /tmp/ds-bench-memory]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(mode: str, folder: str) -> None:
    """Load once and print the measurements as JSON (runs in its own process)."""
    import torch

    from deepseek.model import Transformer
    from deepseek.model.fp8 import FP8
    from deepseek.model.layers import Linear

    torch.set_num_threads(1)
    base_rss = proc_status_kib("VmRSS")
    start = time.perf_counter()
    model = Transformer.from_pretrained(folder, fp8_resident=(mode == "fp8-resident"))
    load_s = time.perf_counter() - start
    rss, peak = proc_status_kib("VmRSS"), proc_status_kib("VmHWM")
    quantized = [m for m in model.modules() if isinstance(m, Linear) and m.quantized]
    q_bytes = sum(m.weight.numel() * m.weight.element_size()
                  + (m.weight_scale_inv.numel() * 4 if m.weight.dtype == FP8 else 0) for m in quantized)
    all_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({
        "mode": mode, "load_s": round(load_s, 2),
        "params": sum(p.numel() for p in model.parameters()),
        "quantized_params": sum(m.weight.numel() for m in quantized),
        "quantized_weight_bytes": q_bytes, "model_tensor_bytes": all_bytes,
        "baseline_rss_mib": base_rss / 1024, "rss_mib": rss / 1024, "peak_mib": peak / 1024,
        "model_rss_mib": (rss - base_rss) / 1024, "model_peak_mib": (peak - base_rss) / 1024,
    }))


def measure(mode: str, folder: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(folder)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ds-bench-memory"))
    parser.add_argument("--child", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)

    folder = args.dir / args.preset
    if not (folder / "config.json").exists():
        from deepseek.cli.init import init_checkpoint
        init_checkpoint(folder, args.preset, seed=0, shards=4)
    on_disk = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    bf16, fp8 = measure("dequantized", folder), measure("fp8-resident", folder)
    result = {
        "preset": args.preset, "params": bf16["params"], "checkpoint_mib": on_disk / 2**20,
        "dequantized": bf16, "fp8_resident": fp8,
        "quantized_weights_ratio_fp8_vs_bf16": fp8["quantized_weight_bytes"] / bf16["quantized_weight_bytes"],
        "whole_model_tensor_ratio": fp8["model_tensor_bytes"] / bf16["model_tensor_bytes"],
        "whole_model_rss_ratio": fp8["model_rss_mib"] / bf16["model_rss_mib"],
        "peak_over_resident_dequantized": bf16["model_peak_mib"] / bf16["model_rss_mib"],
        "peak_over_resident_fp8": fp8["model_peak_mib"] / fp8["model_rss_mib"],
    }
    print(json.dumps(result, indent=2))
    print()
    print("| mode | params | resident (MiB, net) | peak (MiB, net) | peak / resident | load (s) |")
    print("|---|---|---|---|---|---|")
    for r in (bf16, fp8):
        print(f"| {r['mode']} | {r['params'] / 1e6:.1f}M | {r['model_rss_mib']:.0f} | {r['model_peak_mib']:.0f} "
              f"| {r['model_peak_mib'] / r['model_rss_mib']:.3f} | {r['load_s']} |")
    print()
    print(f"FP8-resident quantized weights / bf16: {result['quantized_weights_ratio_fp8_vs_bf16']:.4f} (goal <= 0.55)")
    print(f"whole model FP8-resident / dequantized: tensors {result['whole_model_tensor_ratio']:.3f}, "
          f"RSS {result['whole_model_rss_ratio']:.3f}")


if __name__ == "__main__":
    main()
