"""CostTracker against hand-summed responses and the server's ledger; `deepseek usage` against the ledger."""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3

import pytest
from sdk_helpers import USER, ledger_rows

from deepseek import CostTracker, DeepSeek
from deepseek.cli import usage as usage_cli
from deepseek.pricing import DEFAULT_PRICES, cost_nano_usd


def test_tracker_totals_equal_the_hand_summed_responses_and_the_ledger(sdk_server, new_key):
    secret, key_id = new_key()
    client = DeepSeek(api_key=secret, base_url=sdk_server.url, max_retries=0)
    tracker = CostTracker()
    plan = [("alice", "search", "deepseek-chat"), ("alice", "chat", "deepseek-v3"),
            ("bob", "search", "deepseek-reasoner"), ("bob", "search", "deepseek-chat")]
    responses = []
    for user, feature, model in plan:
        r = client.chat.completions.create(model=model, messages=USER, max_tokens=3)
        responses.append((user, feature, r))
        tracker.record(r, user=user, feature=feature)

    def by_hand(keep) -> tuple[int, int]:
        picked = [r for u, f, r in responses if keep(u, f, r.model)]
        cost = sum(cost_nano_usd(DEFAULT_PRICES[r.model], r.usage.prompt_cache_hit_tokens,
                                 r.usage.prompt_cache_miss_tokens, r.usage.completion_tokens) for r in picked)
        return sum(r.usage.completion_tokens for r in picked), cost

    total = tracker.totals()
    assert (total.completion_tokens, total.cost_nano) == by_hand(lambda u, f, m: True)
    alice = tracker.totals(user="alice")
    assert (alice.completion_tokens, alice.cost_nano) == by_hand(lambda u, f, m: u == "alice")
    search = tracker.by("feature")["search"]
    assert (search.requests, search.cost_nano) == (3, by_hand(lambda u, f, m: f == "search")[1])
    assert set(tracker.by("model")) == {"deepseek-chat", "deepseek-v3", "deepseek-reasoner"}

    rows = ledger_rows(sdk_server.db, key_id)
    assert total.cost_nano == sum(r["cost_nano"] for r in rows) and total.requests == len(rows)
    assert total.prompt_tokens == sum(r["prompt_tokens"] for r in rows)
    assert total.reasoning_tokens == sum(r["reasoning_tokens"] for r in rows)


def usage_of(prompt, completion, hit=0) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_cache_hit_tokens": hit, "prompt_cache_miss_tokens": prompt - hit}


def test_thresholds_fire_once_per_scope_with_callback_or_log(caplog):
    tracker = CostTracker()
    fired = []
    tracker.add_threshold("0.001", fired.append, user="alice")
    tracker.add_threshold("0.002")                                   # no callback: a warning in the log
    one_k = usage_of(0, 1000)                                        # 1000 output tokens = $0.00042 on V3.2
    with caplog.at_level(logging.WARNING, logger="deepseek.client.costs"):
        for _ in range(2):
            tracker.record(usage=one_k, model="deepseek-chat", user="alice")
        assert fired == []
        tracker.record(usage=one_k, model="deepseek-chat", user="bob")     # bob's spend is not alice's
        assert fired == []
        tracker.record(usage=one_k, model="deepseek-chat", user="alice")   # alice: $0.00126
        assert len(fired) == 1 and fired[0].totals.cost_nano == 1_260_000 and "user=alice" in str(fired[0])
        for _ in range(3):
            tracker.record(usage=one_k, model="deepseek-chat", user="alice")
    assert len(fired) == 1
    assert [r.message for r in caplog.records if "threshold" in r.message] == \
        ["spend for all usage reached $0.002100 (threshold $0.002000)"]


def test_cache_hits_bill_at_the_cache_price_and_unknown_models_cost_nothing(caplog):
    tracker = CostTracker()
    c = tracker.record(usage=usage_of(1_000_000, 0, hit=1_000_000), model="deepseek-chat")
    assert c.cost_nano == 28_000_000                                 # $0.028 per 1M cached tokens
    with caplog.at_level(logging.WARNING):
        assert tracker.record(usage=usage_of(10, 10), model="my-finetune").cost_nano == 0
    assert tracker.unpriced == {"my-finetune"} and "my-finetune" in caplog.text
    with pytest.raises(ValueError):
        tracker.add_threshold(1, team="x")


def run_usage(db, *args) -> dict:
    p = argparse.ArgumentParser()
    usage_cli.add_arguments(p)
    return usage_cli.run(p.parse_args(["--db", str(db), *args]))


def test_usage_totals_equal_the_ledger(sdk_server, new_key, capsys):
    secret, _ = new_key()
    client = DeepSeek(api_key=secret, base_url=sdk_server.url, max_retries=0)
    for model in ("deepseek-chat", "deepseek-v3"):
        client.chat.completions.create(model=model, messages=USER, max_tokens=2)
    with sqlite3.connect(sdk_server.db) as c:
        ledger = c.execute("SELECT COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_nano)"
                           " FROM usage").fetchone()
    for by in ("key", "model", "day"):
        assert run_usage(sdk_server.db, "--by", by, "--json") == 0
        report = json.loads(capsys.readouterr().out)
        total = report["total"]
        assert (total["requests"], total["prompt_tokens"], total["completion_tokens"], total["cost_nano"]) == ledger
        assert sum(r["cost_nano"] for r in report["rows"]) == total["cost_nano"]
    run_usage(sdk_server.db, "--by", "model")
    table = capsys.readouterr().out
    assert "deepseek-v3" in table and table.splitlines()[-1].startswith("total")
    run_usage(sdk_server.db, "--since", "2999-01-01", "--json")
    assert json.loads(capsys.readouterr().out)["total"]["requests"] == 0


def test_usage_since_accepts_relative_and_iso_times():
    assert usage_cli.parse_since("2d", now=1_000_000) == 1_000_000 - 2 * 86400
    assert usage_cli.parse_since("90m", now=10_000) == 10_000 - 5400
    assert usage_cli.parse_since("1970-01-02") == 86400
    with pytest.raises(ValueError, match="7d"):
        usage_cli.parse_since("last week")


def test_usage_reports_a_missing_ledger(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ledger"):
        run_usage(tmp_path / "none.db")
    assert not (tmp_path / "none.db").exists()
