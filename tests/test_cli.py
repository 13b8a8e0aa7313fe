"""The `deepseek` console script, run as a user would run it."""

from __future__ import annotations

import subprocess
import sys


def deepseek(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "deepseek.cli.main", *map(str, args)],
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_init_convert_generate(tmp_path):
    ckpt = tmp_path / "tiny"
    deepseek("init", "--preset", "tiny", ckpt, "--shards", "2")
    for name in ("config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"):
        assert (ckpt / name).exists()
    deepseek("convert", "--to", "bf16", ckpt, tmp_path / "bf16")
    out = {}
    for mode in ("sparse", "dense"):
        result = deepseek("generate", "--model", tmp_path / "bf16", "--prompt", "def main():",
                          "--max-tokens", "8", "--attention", mode)
        out[mode] = result.stdout
        assert result.stdout.strip()
    assert out["sparse"] == out["dense"]  # a short context is below index_topk: same greedy text


def test_generate_reports_a_missing_model_clearly(tmp_path):
    result = deepseek("generate", "--model", tmp_path / "nothing", "--prompt", "x", check=False)
    assert result.returncode == 2 and "tokenizer.json" in result.stderr


def test_help_lists_the_subcommands():
    out = deepseek("--help").stdout
    for command in ("init", "convert", "generate"):
        assert command in out
