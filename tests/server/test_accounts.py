"""API keys, the usage ledger and the idempotency store, on a real SQLite file."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepseek.server.accounts import Accounts, UsageRow

DAY = 86400.0
T0 = datetime(2026, 3, 1, 12, tzinfo=timezone.utc).timestamp()


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def accounts(tmp_path, clock):
    with Accounts(tmp_path / "deepseek.db", clock=clock) as a:
        yield a


def usage(request_id, key_id=None, model="deepseek-chat", hit=0, miss=10, out=5, reasoning=0, cost=100,
          status="ok", created_at=None):
    return UsageRow(request_id, key_id, model, hit + miss, hit, miss, out, reasoning, cost, status, created_at)


# --- keys --------------------------------------------------------------------------------------

def test_secrets_are_stored_only_as_hashes(tmp_path, clock):
    path = tmp_path / "deepseek.db"
    with Accounts(path, clock=clock) as a:
        _, secret = a.create_key("alice")
        _, rotated = a.rotate("alice")
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir())   # the db and its WAL
    for s in (secret, rotated):
        assert s.encode() not in on_disk and s[3:].encode() not in on_disk
        assert hashlib.sha256(s.encode()).digest() in on_disk


def test_secrets_look_like_deepseek_keys_and_never_repeat(accounts):
    secrets = [accounts.create_key(f"k{i}")[1] for i in range(20)]
    assert all(s.startswith("sk-") and len(s) == 51 for s in secrets)
    assert len(set(secrets)) == 20


def test_a_secret_authenticates_its_key_and_nothing_else_does(accounts):
    info, secret = accounts.create_key("alice", budget_usd="5", rpm=60, concurrency=2)
    other, _ = accounts.create_key("bob")
    found = accounts.authenticate(secret)
    assert found == info and found.key_id != other.key_id
    assert (found.rpm, found.concurrency, found.budget_nano) == (60, 2, 5 * 10**9)
    for wrong in (secret[:-1] + ("0" if secret[-1] != "0" else "1"), secret + "0", secret.upper(), "", None, 42):
        assert accounts.authenticate(wrong) is None


def test_each_key_has_a_stable_id_and_its_own_cache_salt(accounts):
    a, secret = accounts.create_key("a")
    b, _ = accounts.create_key("b")
    assert len(a.cache_salt) == 16 and a.cache_salt != b.cache_salt
    assert accounts.authenticate(secret).cache_salt == a.cache_salt
    assert "cache_salt" not in repr(a)


def test_revoked_keys_are_refused_and_their_name_can_be_issued_again(accounts):
    info, secret = accounts.create_key("alice")
    with pytest.raises(ValueError, match="already exists"):
        accounts.create_key("alice")
    revoked = accounts.revoke("alice")
    assert revoked.key_id == info.key_id and revoked.status(accounts.clock()) == "revoked"
    assert accounts.authenticate(secret) is None
    with pytest.raises(ValueError, match="no live key"):
        accounts.revoke("alice")
    again, new_secret = accounts.create_key("alice")
    assert again.key_id != info.key_id and accounts.authenticate(new_secret) == again
    assert [k.status(accounts.clock()) for k in accounts.list_keys()] == ["revoked", "active"]


def test_keys_expire_after_their_lifetime(accounts, clock):
    _, secret = accounts.create_key("short", expires_in_days=1)
    _, forever = accounts.create_key("forever", expires_in_days=None)
    clock.advance(DAY - 1)
    assert accounts.authenticate(secret) is not None
    clock.advance(1)
    assert accounts.authenticate(secret) is None
    assert accounts.list_keys()[0].status(clock()) == "expired"
    clock.advance(10_000 * DAY)
    assert accounts.authenticate(forever) is not None


def test_rotation_keeps_the_old_secret_working_through_the_grace_period(accounts, clock):
    info, old = accounts.create_key("alice", budget_usd=1)
    accounts.record_usage(usage("r1", info.key_id, cost=10**8))
    rotated, new = accounts.rotate("alice", grace_seconds=3600)
    assert rotated.key_id == info.key_id and rotated.cache_salt == info.cache_salt
    assert rotated.prefix == new[:7] != old[:7]
    clock.advance(3599)
    assert accounts.authenticate(old) == accounts.authenticate(new) == rotated
    clock.advance(1)
    assert accounts.authenticate(old) is None and accounts.authenticate(new) == rotated
    assert accounts.spent_nano(info.key_id) == 10**8          # same account, same ledger
    assert rotated.expires_at == T0 + 90 * DAY                # the new secret gets a full lifetime


def test_rotation_never_extends_a_secret_that_expires_sooner(accounts, clock):
    _, old = accounts.create_key("alice", expires_in_days=1)
    clock.advance(DAY - 60)
    accounts.rotate("alice", grace_seconds=DAY)
    clock.advance(60)
    assert accounts.authenticate(old) is None


def test_rotating_or_revoking_an_unknown_key_is_an_error(accounts):
    for action in (accounts.rotate, accounts.revoke):
        with pytest.raises(ValueError):
            action("nobody")


def test_the_server_authenticates_once_any_key_was_ever_created(accounts):
    assert not accounts.has_keys()
    accounts.create_key("alice")
    accounts.revoke("alice")
    assert accounts.has_keys()   # revoking the last key locks the server; it never reopens


@pytest.mark.parametrize("kwargs", [{"name": ""}, {"name": "a", "rpm": 0}, {"name": "a", "concurrency": -1},
                                    {"name": "a", "budget_usd": "-1"}, {"name": "a", "expires_in_days": 0}])
def test_invalid_key_settings_are_refused(accounts, kwargs):
    with pytest.raises(ValueError):
        accounts.create_key(**kwargs)


# --- ledger and balance --------------------------------------------------------------------------

def test_spending_draws_down_the_balance_floored_to_cents(accounts):
    info, _ = accounts.create_key("alice", budget_usd="1.00")
    assert accounts.balance(info.key_id) == {"is_available": True, "balance_infos": [{
        "currency": "USD", "total_balance": "1.00", "granted_balance": "1.00", "topped_up_balance": "0.00"}]}
    for i in range(2):
        accounts.record_usage(usage(f"r{i}", info.key_id, cost=333_000_000))
    body = accounts.balance(info.key_id)
    assert body["is_available"] and body["balance_infos"][0]["total_balance"] == "0.33"   # 0.334 left
    accounts.record_usage(usage("r2", info.key_id, cost=400_000_000))   # an in-flight request overshoots
    body = accounts.balance(info.key_id)
    assert not body["is_available"] and not accounts.has_balance(info.key_id)
    assert body["balance_infos"][0]["total_balance"] == "-0.07"
    assert accounts.spent_nano(info.key_id) == 1_066_000_000


def test_without_a_budget_the_balance_is_unlimited(accounts):
    info, _ = accounts.create_key("alice")
    accounts.record_usage(usage("r", info.key_id, cost=10**12))
    for key_id in (info.key_id, None):
        body = accounts.balance(key_id)
        assert body["is_available"] and accounts.has_balance(key_id)
        assert float(body["balance_infos"][0]["total_balance"]) == float("inf")


def test_a_repeated_request_id_is_billed_once(accounts):
    info, _ = accounts.create_key("alice")
    assert accounts.record_usage(usage("same", info.key_id, cost=7))
    assert not accounts.record_usage(usage("same", info.key_id, cost=7))
    assert accounts.spent_nano(info.key_id) == 7 and accounts.totals().requests == 1


@pytest.mark.parametrize("bad", [dict(prompt_tokens=3), dict(reasoning_tokens=6), dict(cost_nano=-1),
                                 dict(status="done"), dict(completion_tokens=1.5)])
def test_inconsistent_usage_rows_are_refused(bad):
    fields = dict(request_id="r", key_id=None, model="m", prompt_tokens=10, cache_hit_tokens=4,
                  cache_miss_tokens=6, completion_tokens=5, reasoning_tokens=2, cost_nano=1)
    UsageRow(**fields)
    with pytest.raises(ValueError):
        UsageRow(**{**fields, **bad})


def test_a_recorded_row_is_on_disk_when_record_returns(tmp_path, clock):
    writer = Accounts(tmp_path / "db", clock=clock)
    writer.record_usage(usage("r", cost=5))
    with Accounts(tmp_path / "db", clock=clock) as reader:     # another connection, like another process
        assert reader.totals().cost_nano == 5
    writer.close()


rows = st.lists(st.tuples(st.sampled_from([None, 0, 1, 2]), st.sampled_from(["deepseek-chat", "deepseek-v3"]),
                          st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**5),
                          st.integers(0, 10**12), st.sampled_from(["ok", "aborted", "error"])), max_size=25)


@settings(max_examples=25, deadline=None)
@given(rows)
def test_ledger_totals_equal_the_sum_of_the_recorded_rows(rows):
    with tempfile.TemporaryDirectory() as d, Accounts(Path(d) / "db") as accounts:
        keys = [accounts.create_key(f"k{i}")[0].key_id for i in range(3)]
        recorded = []
        for n, (k, model, hit, miss, out, cost, status) in enumerate(rows):
            row = usage(f"r{n}", None if k is None else keys[k], model, hit, miss, out, out // 2, cost, status)
            accounts.record_usage(row)
            recorded.append(row)
        t = accounts.totals()
        assert t.requests == len(recorded)
        assert t.prompt_tokens == sum(r.prompt_tokens for r in recorded)
        assert t.cache_hit_tokens == sum(r.cache_hit_tokens for r in recorded)
        assert t.completion_tokens == sum(r.completion_tokens for r in recorded)
        assert t.reasoning_tokens == sum(r.reasoning_tokens for r in recorded)
        assert t.cost_nano == sum(r.cost_nano for r in recorded)
        for key_id in (*keys, None):
            assert accounts.spent_nano(key_id) == sum(r.cost_nano for r in recorded if r.key_id == key_id)
        for by in ("key", "model", "day"):
            assert sum(g.cost_nano for g in accounts.usage_report(by)) == t.cost_nano
        accounts.check_integrity()


def test_usage_report_groups_by_key_model_and_utc_day(accounts, clock):
    alice, _ = accounts.create_key("alice")
    bob, _ = accounts.create_key("bob")
    accounts.record_usage(usage("1", alice.key_id, "deepseek-chat", hit=3, miss=7, cost=10))
    accounts.record_usage(usage("2", bob.key_id, "deepseek-reasoner", out=9, reasoning=4, cost=20))
    clock.advance(DAY)
    accounts.record_usage(usage("3", alice.key_id, "deepseek-reasoner", cost=30))
    accounts.record_usage(usage("4", None, "deepseek-chat", cost=40, status="aborted"))

    by_key = {r.group: r for r in accounts.usage_report("key")}
    assert {g: r.cost_nano for g, r in by_key.items()} == {"alice": 40, "bob": 20, "(open)": 40}
    assert (by_key["alice"].requests, by_key["alice"].prompt_tokens, by_key["alice"].cache_hit_tokens) == (2, 20, 3)
    assert by_key["bob"].reasoning_tokens == 4 and by_key["bob"].completion_tokens == 9
    assert {r.group: r.requests for r in accounts.usage_report("model")} == \
        {"deepseek-chat": 2, "deepseek-reasoner": 2}
    assert [(r.group, r.cost_nano) for r in accounts.usage_report("day")] == [("2026-03-01", 30), ("2026-03-02", 70)]
    since = datetime(2026, 3, 2)                               # naive: read as UTC
    assert [(r.group, r.cost_nano) for r in accounts.usage_report("key", since)] == [("(open)", 40), ("alice", 30)]
    assert by_key["alice"].cost_usd == "0.000000"
    with pytest.raises(ValueError):
        accounts.usage_report("user")


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "db"
    main = Accounts(path)
    keys = [main.create_key(f"k{i}")[0].key_id for i in range(4)]
    other = Accounts(path)          # a second handle on the file, like `deepseek keys` beside the server
    errors = []

    def write(t: int):
        try:
            handle = main if t % 2 else other
            for i in range(40):
                handle.record_usage(usage(f"{t}-{i}", keys[t % 4], cost=t * 1000 + i))
                handle.authenticate("sk-nothing")
        except Exception as e:          # surfaces in the main thread's assertion below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert main.totals().requests == 8 * 40
    assert main.totals().cost_nano == sum(t * 1000 + i for t in range(8) for i in range(40))
    for k, key_id in enumerate(keys):
        assert main.spent_nano(key_id) == sum(t * 1000 + i for t in (k, k + 4) for i in range(40))
    main.check_integrity()
    main.close()
    other.close()


# --- idempotency ---------------------------------------------------------------------------------

def test_idempotent_responses_live_for_their_ttl_and_the_first_one_wins(accounts, clock):
    alice, _ = accounts.create_key("alice")
    assert accounts.get_idempotent(alice.key_id, "k1") is None
    assert accounts.put_idempotent(alice.key_id, "k1", '{"id": 1}', ttl_seconds=60) == '{"id": 1}'
    assert accounts.put_idempotent(alice.key_id, "k1", '{"id": 2}', ttl_seconds=60) == '{"id": 1}'
    assert accounts.get_idempotent(alice.key_id, "k1") == '{"id": 1}'
    assert accounts.get_idempotent(None, "k1") is None             # keys are per account
    accounts.put_idempotent(None, "k1", '{"open": true}')
    assert accounts.get_idempotent(None, "k1") == '{"open": true}'
    clock.advance(60)
    assert accounts.get_idempotent(alice.key_id, "k1") is None
    assert accounts.put_idempotent(alice.key_id, "k1", '{"id": 3}') == '{"id": 3}'


# --- the `deepseek keys` command -----------------------------------------------------------------

def keys_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "deepseek.cli.keys", *map(str, args)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def test_keys_cli_creates_lists_rotates_and_revokes(tmp_path):
    db = tmp_path / "keys.db"
    made = keys_cli("create", "--name", "ci", "--budget", "2.50", "--rpm", "30", "--db", db)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("sk-") and "shown only once" in made.stderr
    with Accounts(db) as a:
        info = a.authenticate(secret)
        assert (info.name, info.budget_nano, info.rpm) == ("ci", 2_500_000_000, 30)

    listing = keys_cli("list", "--db", db).stdout
    assert "ci" in listing and secret[:7] in listing and secret not in listing and "active" in listing

    rotated = keys_cli("rotate", "ci", "--grace-hours", "0", "--db", db)
    new_secret = rotated.stdout.strip()
    with Accounts(db) as a:
        assert a.authenticate(secret) is None and a.authenticate(new_secret).key_id == info.key_id

    assert keys_cli("revoke", "ci", "--db", db).returncode == 0
    with Accounts(db) as a:
        assert a.authenticate(new_secret) is None
    failed = keys_cli("revoke", "ci", "--db", db)
    assert failed.returncode == 2 and "no live key" in failed.stderr


def test_keys_cli_finds_its_database_through_deepseek_db(tmp_path):
    db = tmp_path / "nested" / "env.db"
    assert keys_cli("create", "--name", "env", "--expires-days", "0", env={"DEEPSEEK_DB": str(db)}).returncode == 0
    assert "never" in keys_cli("list", env={"DEEPSEEK_DB": str(db)}).stdout
