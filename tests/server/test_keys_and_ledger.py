"""A server with API keys: 401, 402, 429 + Retry-After, the ledger, per-key cache salts, disconnects."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from server_process import Server

# uvicorn re-raises the SIGTERM it handled after its graceful shutdown, so -15 is a clean exit too.
CLEAN_EXIT = (0, -signal.SIGTERM)
# Requests that must still be running when a test acts are greedy: sampling could end them early on an EOS.
LONG = [{"role": "system", "content": "You answer briefly and precisely. " * 6},
        {"role": "user", "content": "What is sparse attention?"}]


def create_key(db, name, *args) -> str:
    out = subprocess.run([sys.executable, "-m", "deepseek.cli.main", "keys", "create", "--name", name,
                          "--db", str(db), *args], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def keyed(tiny_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("keyed")
    db = folder / "ledger.db"
    keys = {"main": create_key(db, "main"), "other": create_key(db, "other"),
            "poor": create_key(db, "poor", "--budget", "0.000001"),
            "slow": create_key(db, "slow", "--rpm", "2"),
            "single": create_key(db, "single", "--concurrency", "1")}
    server = Server(tiny_checkpoint, db, folder / "server.log")
    server.keys = keys
    yield server
    assert server.stop() in CLEAN_EXIT


def chat(server, key, **kwargs):
    return server.client(api_key=key).chat.completions.create(
        model="deepseek-chat", messages=kwargs.pop("messages", LONG), max_tokens=kwargs.pop("max_tokens", 4),
        **kwargs)


def test_missing_or_wrong_key_is_401(keyed):
    r = httpx.post(keyed.url + "/chat/completions", json={"model": "deepseek-chat", "messages": LONG})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        chat(keyed, "sk-not-a-real-key")
    with pytest.raises(openai.AuthenticationError):
        keyed.client(api_key="sk-wrong").models.list()
    assert chat(keyed, keyed.keys["main"]).choices


def test_spent_budget_is_402(keyed):
    chat(keyed, keyed.keys["poor"])          # a positive balance admits one request, which overshoots
    with pytest.raises(openai.APIStatusError) as err:
        chat(keyed, keyed.keys["poor"])
    assert err.value.status_code == 402
    balance = httpx.get(keyed.url + "/user/balance",
                        headers={"Authorization": f"Bearer {keyed.keys['poor']}"}).json()
    assert balance["is_available"] is False and balance["balance_infos"][0]["total_balance"].startswith("-")


def test_rate_limit_is_429_with_retry_after(keyed):
    chat(keyed, keyed.keys["slow"])
    chat(keyed, keyed.keys["slow"])
    with pytest.raises(openai.RateLimitError) as err:
        chat(keyed, keyed.keys["slow"])
    assert int(err.value.response.headers["retry-after"]) >= 1


def test_concurrency_limit_is_429_with_retry_after(keyed):
    client = keyed.client(api_key=keyed.keys["single"])
    stream = client.chat.completions.create(model="deepseek-chat", messages=LONG, max_tokens=400, stream=True, temperature=0)
    next(iter(stream))                        # the first request is now in flight
    try:
        with pytest.raises(openai.RateLimitError) as err:
            chat(keyed, keyed.keys["single"])
        assert int(err.value.response.headers["retry-after"]) >= 1
    finally:
        stream.close()


def test_prefix_cache_is_salted_per_key(keyed):
    first = chat(keyed, keyed.keys["main"], messages=LONG[:1] + [{"role": "user", "content": "salted?"}])
    again = chat(keyed, keyed.keys["main"], messages=LONG[:1] + [{"role": "user", "content": "salted?"}])
    other = chat(keyed, keyed.keys["other"], messages=LONG[:1] + [{"role": "user", "content": "salted?"}])
    assert again.usage.prompt_cache_hit_tokens > 0
    assert other.usage.prompt_cache_hit_tokens == 0 and first.usage.prompt_tokens == other.usage.prompt_tokens


def ledger_rows(db, key_name):
    with sqlite3.connect(db) as c:
        key_id = c.execute("SELECT key_id FROM accounts WHERE name = ?", (key_name,)).fetchone()[0]
        return c.execute("SELECT request_id, status, prompt_tokens, cache_hit_tokens, completion_tokens FROM usage"
                         " WHERE key_id = ?", (key_id,)).fetchall()


def test_ledger_totals_equal_the_usage_clients_saw(keyed):
    key = create_key(keyed.db, "ledger")
    client = keyed.client(api_key=key)
    seen = []
    for i in range(3):
        r = chat(keyed, key, max_tokens=3 + i)
        seen.append((r.id, r.usage.prompt_tokens, r.usage.prompt_cache_hit_tokens, r.usage.completion_tokens))
    stream = client.chat.completions.create(model="deepseek-reasoner", messages=LONG, max_tokens=5, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    u = chunks[-1].usage
    seen.append((chunks[0].id, u.prompt_tokens, u.prompt_cache_hit_tokens, u.completion_tokens))
    aborted = client.chat.completions.create(model="deepseek-chat", messages=LONG, max_tokens=500, stream=True, temperature=0)
    aborted_id = next(iter(aborted)).id
    aborted.close()
    with pytest.raises(openai.UnprocessableEntityError):
        chat(keyed, key, temperature=5)        # errored: no generation, no row
    time.sleep(1.0)
    rows = ledger_rows(keyed.db, "ledger")
    ok = {r[0]: r[2:] for r in rows if r[1] == "ok"}
    assert ok == {rid: (p, h, c) for rid, p, h, c in seen}
    assert [r[1] for r in rows if r[0] == aborted_id] == ["aborted"]
    assert len(rows) == len(seen) + 1


def test_disconnect_mid_stream_returns_blocks_and_running_to_baseline(keyed):
    before = keyed.metrics()
    client = keyed.client(api_key=keyed.keys["main"])
    streams = [client.chat.completions.create(model="deepseek-chat", messages=LONG, max_tokens=600, stream=True, temperature=0)
               for _ in range(3)]
    for s in streams:
        next(iter(s))
    during = keyed.metrics()
    assert during["deepseek_requests_running"] >= 1
    assert during["deepseek_kv_cache_free_blocks"] < before["deepseek_kv_cache_free_blocks"]
    for s in streams:
        s.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        after = keyed.metrics()
        if after["deepseek_requests_running"] == 0 and \
                after["deepseek_kv_cache_free_blocks"] == before["deepseek_kv_cache_free_blocks"]:
            break
        time.sleep(0.2)
    assert after["deepseek_requests_running"] == 0 and after["deepseek_requests_waiting"] == 0
    assert after["deepseek_kv_cache_free_blocks"] == before["deepseek_kv_cache_free_blocks"]


def test_sigterm_drains_a_request_in_flight(tiny_checkpoint, tmp_path):
    server = Server(tiny_checkpoint, tmp_path / "db.sqlite", tmp_path / "log.txt")
    result = {}

    def call():
        # Greedy, so the run is the same every time (sampling could end early on an EOS).
        result["r"] = server.client().chat.completions.create(model="deepseek-chat", messages=LONG, max_tokens=150,
                                                              temperature=0)

    t = threading.Thread(target=call)
    t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.metrics()["deepseek_requests_running"] < 1:
        time.sleep(0.05)
    assert server.stop() in CLEAN_EXIT
    t.join(60)
    assert result["r"].usage.completion_tokens == 150     # the request in flight was finished first


def test_a_retried_request_with_an_idempotency_key_is_generated_and_charged_once(keyed):
    key = create_key(keyed.db, "idem")
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "tool-result-7"}
    body = {"model": "deepseek-chat", "messages": LONG, "max_tokens": 5}
    first = httpx.post(keyed.url + "/chat/completions", json=body, headers=headers, timeout=60)
    again = httpx.post(keyed.url + "/chat/completions", json=body, headers=headers, timeout=60)
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert again.json() == first.json()
    other = httpx.post(keyed.url + "/chat/completions", json=body, timeout=60,
                       headers={**headers, "Idempotency-Key": "tool-result-8"})
    assert other.json()["id"] != first.json()["id"]
    time.sleep(0.5)
    assert len(ledger_rows(keyed.db, "idem")) == 2         # two generations, not three
