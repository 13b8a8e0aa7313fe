"""`deepseek batch`: input order, per-item errors, interruption and resumption, summary vs ledger."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

from sdk_helpers import ledger_rows

from deepseek import AsyncDeepSeek
from deepseek.client.batch import read_done, read_items, run_batch


def write_input(path, n: int, max_tokens: int = 3, extra_lines=()):
    lines = [json.dumps({"custom_id": f"q{i}", "body": {
        "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": max_tokens,
        "temperature": 0}}) for i in range(n)]
    path.write_text("\n".join([*lines, *extra_lines]) + "\n")


def run_cli(server, key, *args, **popen):
    env = {**os.environ, "DEEPSEEK_API_KEY": key, "DEEPSEEK_BASE_URL": server.url}
    return subprocess.Popen([sys.executable, "-m", "deepseek.cli.batch", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_batch_interrupted_and_resumed_has_every_item_once_in_order(sdk_server, new_key, tmp_path):
    key, _ = new_key()
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    n = 120     # far more than can finish between the 4th line and the interrupt, however fast the server
    write_input(src, n, max_tokens=40)
    args = (src, "-o", out, "--concurrency", "3", "--model", "deepseek-chat")
    first = run_cli(sdk_server, key, *args)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 4):
        time.sleep(0.01)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 130 and "resume" in err
    done_before = len(read_done(out))
    assert 4 <= done_before < n

    with open(out, "a") as f:                         # as if a kill had cut the last write short
        f.write('{"index": 99, "custom_id": "q9')
    second = run_cli(sdk_server, key, *args)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert f"({done_before} already done)" in err and f"{n} succeeded, 0 failed" in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(n))
    assert [r["custom_id"] for r in records] == [f"q{i}" for i in range(n)]
    assert all(r["error"] is None and r["response"]["object"] == "chat.completion" for r in records)


def test_item_errors_are_recorded_and_the_summary_matches_the_ledger(sdk_server, new_key, tmp_path):
    key, key_id = new_key()
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    bad_model = json.dumps({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})
    write_input(src, 5, extra_lines=["{not json", bad_model, json.dumps({"messages": "nope"})])

    async def main():
        async with AsyncDeepSeek(api_key=key, base_url=sdk_server.url, max_retries=0) as client:
            return await run_batch(client, read_items(src, "deepseek-chat"), out, concurrency=4)

    summary = asyncio.run(main())
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(8))
    errors = {r["index"]: r["error"] for r in records if r["error"]}
    assert set(errors) == {5, 6, 7}
    assert errors[5]["message"].startswith("invalid JSON") and errors[6]["status"] == 400
    assert (summary.succeeded, summary.failed, summary.skipped) == (5, 3, 0)
    rows = ledger_rows(sdk_server.db, key_id)
    totals = summary.tracker.totals()
    assert totals.requests == len(rows) == 5
    assert totals.cost_nano == sum(r["cost_nano"] for r in rows)
    assert totals.completion_tokens == sum(r["completion_tokens"] for r in rows)

    again = asyncio.run(main())                       # everything is in OUT already: nothing is sent
    assert again.skipped == 8 and len(ledger_rows(sdk_server.db, key_id)) == 5


def test_batch_help_names_the_options():
    out = subprocess.run([sys.executable, "-m", "deepseek.cli.batch", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for option in ("--concurrency", "--model", "-o", "--base-url", "--prices"):
        assert option in out
