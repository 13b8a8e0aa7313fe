"""The benchmark scripts keep running (on the tiny preset; the figures themselves are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.slow
def test_memory_bench_runs_and_reports_both_modes(tmp_path):
    out = subprocess.run([sys.executable, str(BENCH / "memory.py"), "--preset", "tiny", "--dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    report = json.loads(out[:out.index("\n}\n") + 2])
    assert report["dequantized"]["mode"] == "dequantized" and report["fp8_resident"]["mode"] == "fp8-resident"
    assert 0.49 < report["quantized_weights_ratio_fp8_vs_bf16"] < 0.51  # tensor bytes: exact, not timing
    assert "| fp8-resident |" in out
