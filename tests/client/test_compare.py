"""`deepseek compare`: dense vs sparse on the same weights; report, log, failures, totals vs ledger."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from sdk_helpers import ledger_rows

from deepseek.cli import compare as compare_cli
from deepseek.client.compare import read_prompts, similarity


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text('What is sparse attention?\n\n{"prompt": "Name a prime number"}\n'
                    '{"id": "terse", "messages": [{"role": "system", "content": "Be terse."},'
                    ' {"role": "user", "content": "Hello"}]}\n')
    return path


def compare(monkeypatch, server, key, *args) -> int:
    monkeypatch.setenv("DEEPSEEK_API_KEY", key)
    monkeypatch.setenv("DEEPSEEK_BASE_URL", server.url)
    return compare_cli.main([*map(str, args), "--max-tokens", "5"])


def test_compare_writes_report_and_log_and_its_totals_match_the_ledger(sdk_server, new_key, prompts, tmp_path,
                                                                       monkeypatch, capsys):
    key, key_id = new_key()
    report, log = tmp_path / "out" / "report.md", tmp_path / "log.jsonl"
    assert compare(monkeypatch, sdk_server, key, "--models", "deepseek-v3", "deepseek-v3.2", "--prompts", prompts,
                   "--report", report, "--log", log) == 0
    table = capsys.readouterr().out
    assert "similarity" in table and "latency A/B" in table and "Name a prime number" in table

    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["prompt"] for e in entries] == ["What is sparse attention?", "Name a prime number", "terse"]
    for e in entries:
        assert set(e["results"]) == {"deepseek-v3", "deepseek-v3.2"} and 0 <= e["similarity"] <= 1
        sparse = e["results"]["deepseek-v3.2"]["response"]["usage"]["sparse_attention"]["mode"]
        dense = e["results"]["deepseek-v3"]["response"]["usage"]["sparse_attention"]["mode"]
        assert (dense, sparse) == ("dense", "sparse")

    md = report.read_text()
    assert "mean similarity" in md and "latency ratio B/A" in md and "cost ratio B/A" in md
    assert "](report.png)" in md and (report.parent / "report.png").stat().st_size > 1000

    logged = defaultdict(lambda: [0, 0, 0])           # model -> requests, completion tokens, cost
    for e in entries:
        for model, side in e["results"].items():
            usage = side["response"]["usage"]
            logged[model][0] += 1
            logged[model][1] += usage["completion_tokens"]
            logged[model][2] += side["cost_nano"]
    ledger = defaultdict(lambda: [0, 0, 0])
    for row in ledger_rows(sdk_server.db, key_id):
        ledger[row["model"]][0] += 1
        ledger[row["model"]][1] += row["completion_tokens"]
        ledger[row["model"]][2] += row["cost_nano"]
    assert logged == ledger and set(ledger) == {"deepseek-v3", "deepseek-v3.2"}


def test_a_failing_side_is_recorded_not_fatal(sdk_server, new_key, prompts, tmp_path, monkeypatch, capsys):
    key, _ = new_key()
    report = tmp_path / "report.md"
    assert compare(monkeypatch, sdk_server, key, "--models", "deepseek-chat", "no-such-model",
                   "--prompts", prompts, "--report", report, "--max-retries", "0") == 0
    assert capsys.readouterr().out.count("error") >= 3
    entries = [json.loads(line) for line in (tmp_path / "report.jsonl").read_text().splitlines()]
    assert all(e["results"]["no-such-model"]["error"]["status"] == 400 for e in entries)
    assert all(e["results"]["deepseek-chat"]["response"] for e in entries)
    assert all(e["similarity"] is None for e in entries)
    assert "no-such-model`: 0 ok, 3 failed" in report.read_text()


def test_report_without_matplotlib_says_the_plot_was_skipped(monkeypatch, tmp_path):
    import sys

    from deepseek.client.compare import Answer, Prompt, Row, summarize
    from deepseek.client.compare_report import write_report

    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib -> ImportError
    row = Row(Prompt(0, "p", []), {"a": Answer("a", 0.1, "x y"), "b": Answer("b", 0.2, "x z")})
    write_report([row], summarize([row], ("a", "b")), tmp_path / "r.md", None)
    assert "Plot skipped: matplotlib is not installed" in (tmp_path / "r.md").read_text()
    assert not (tmp_path / "r.png").exists()


def test_similarity_and_prompt_file_formats(prompts):
    assert similarity("a b c", "a b c") == 1.0 and similarity("a b", "c d") == 0.0
    assert similarity("", "") == 1.0 and 0 < similarity("the cat sat", "the dog sat") < 1
    parsed = read_prompts(prompts)
    assert [p.label for p in parsed] == ["What is sparse attention?", "Name a prime number", "terse"]
    assert parsed[2].messages[0]["role"] == "system"
