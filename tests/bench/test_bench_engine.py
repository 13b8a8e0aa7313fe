"""The engine benchmarks (throughput, context scaling, prefix cache) run in `--quick` mode and report
every figure they promise. Structure only: timings are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run_quick(script: str, tmp_path: Path) -> tuple[dict, str]:
    out = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    report = json.loads(out[:out.index("\n}\n") + 2])
    return report, out


@pytest.mark.slow
def test_throughput_bench_compares_both_modes_with_hf(tmp_path):
    report, out = run_quick("throughput.py", tmp_path)
    assert {"sanity", "results", "summary", "goals", "plot"} <= report.keys()
    assert {r["impl"] for r in report["results"]} == {"ours-dense", "ours-sparse", "hf-v3"}
    assert {"tok_s", "best_s", "threads", "batch"} <= report["results"][0].keys()
    assert {"dense_vs_hf_batch1", "sparse_vs_hf_batch1"} <= next(iter(report["summary"].values())).keys()
    # The weight mapping is exact up to round-off when our FP8 latent round trip is off: not a timing.
    assert report["sanity"]["fp32_no_latent_fp8"]["max_abs_diff"] < 1e-3
    assert Path(report["plot"]).exists() and "| ours-dense |" in out


@pytest.mark.slow
def test_context_scaling_bench_reports_sparse_dense_and_a_breakdown(tmp_path):
    report, out = run_quick("context_scaling.py", tmp_path)
    assert {"points", "wall", "cpu_time", "breakdown_at_max", "top_ops_sparse_at_max", "measured_scales",
            "other_load_cores", "goals", "plot"} <= report.keys()
    assert {"dense_over_sparse_at_max", "sparse_max_over_min"} <= report["wall"].keys()
    assert {"context", "sparse_ms", "dense_ms", "sparse_cpu_ms", "dense_cpu_ms"} <= report["points"][0].keys()
    # Which parts are timed follows the code under test; the remainder is always reported.
    sparse = report["breakdown_at_max"]["sparse"]["parts_ms"]
    assert len(sparse) >= 2 and any(k.startswith("weights & rest") for k in sparse)
    assert Path(report["plot"]).exists() and "| context |" in out


@pytest.mark.slow
def test_prefix_cache_bench_reports_cold_and_warm_ttft(tmp_path):
    report, out = run_quick("prefix_cache.py", tmp_path)
    assert {"cold", "warm", "cold_ttft_s", "warm_ttft_s_median", "speedup", "goals", "plot"} <= report.keys()
    assert report["cold"]["cached_prompt_tokens"] == 0
    # Block accounting, not timing: the warm request reuses every full block of the shared prefix.
    assert all(w["cached_prompt_tokens"] == report["prefix_tokens"] for w in report["warm"])
    assert Path(report["plot"]).exists() and "| cold |" in out
