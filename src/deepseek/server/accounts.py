"""API keys, the usage ledger and the idempotency store, in one SQLite file.

Storage: SQLite in WAL mode with `synchronous=FULL`, so a write that has returned survives a crash or
power loss, and readers (authenticating every request) never wait for the ledger's writer.

Secrets: `sk-` + 48 random hex characters (192 bits). Only SHA-256(secret) is stored, plus its
first 7 characters so `keys list` can tell secrets apart. A slow or keyed hash would add nothing:
it defends low-entropy passwords against guessing, and 192 random bits cannot be guessed.
`authenticate` finds the row by hash and re-checks it with `hmac.compare_digest`; the index lookup
can only leak timing about SHA-256 outputs, which an attacker cannot steer towards a real key.

Threads: one SQLite connection per thread (`threading.local`), opened on first use and closed by
`close()`. Every write is one `BEGIN IMMEDIATE` transaction, so concurrent writers (threads, or a
`deepseek keys` process next to the server) queue on SQLite's lock (busy timeout 30 s) instead of
failing half-way. Reads need no lock: WAL gives each statement a consistent snapshot.

Accounts: a key is an account (`key_id`, budget, limits, cache salt, ledger history). An account
holds one or more secrets; `rotate` adds one and shortens the old ones to a grace period.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as random_secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import astuple, dataclass, field
from datetime import datetime, timezone
from decimal import ROUND_FLOOR
from pathlib import Path
from typing import Callable, Iterator, Literal

from deepseek.pricing import Amount, format_usd, usd_to_nano

STATUSES = ("ok", "aborted", "error")
UNLIMITED = "Infinity"   # balance strings when there is no budget; float("Infinity") parses everywhere
_DAY = 86400.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    key_id      TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    budget_nano INTEGER,                    -- NULL: no budget
    spent_nano  INTEGER NOT NULL DEFAULT 0, -- = SUM(usage.cost_nano), kept in the same transaction
    rpm         INTEGER,
    concurrency INTEGER,
    lifetime_s  REAL,                       -- lifetime of each new secret; NULL: never expires
    cache_salt  BLOB NOT NULL,
    created_at  REAL NOT NULL,
    revoked_at  REAL
);
-- Names are unique among live keys only, so a revoked name can be issued again.
CREATE UNIQUE INDEX IF NOT EXISTS accounts_live_name ON accounts(name) WHERE revoked_at IS NULL;
CREATE TABLE IF NOT EXISTS secrets (
    secret_hash BLOB PRIMARY KEY,           -- SHA-256 of the secret; the secret is never stored
    key_id      TEXT NOT NULL REFERENCES accounts(key_id),
    prefix      TEXT NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL
);
CREATE INDEX IF NOT EXISTS secrets_by_key ON secrets(key_id);
CREATE TABLE IF NOT EXISTS usage (
    request_id        TEXT PRIMARY KEY,     -- one row per request: a repeated write cannot bill twice
    key_id            TEXT,                 -- NULL in open mode
    model             TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    cache_hit_tokens  INTEGER NOT NULL,
    cache_miss_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    reasoning_tokens  INTEGER NOT NULL,
    cost_nano         INTEGER NOT NULL,
    status            TEXT NOT NULL,
    created_at        REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_by_key ON usage(key_id, created_at);
CREATE INDEX IF NOT EXISTS usage_by_time ON usage(created_at);
CREATE TABLE IF NOT EXISTS idempotency (
    key_id     TEXT NOT NULL,               -- '' in open mode (NULLs never conflict in a key)
    idem_key   TEXT NOT NULL,
    response   TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (key_id, idem_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_by_expiry ON idempotency(expires_at);
"""

# An account with its newest secret (rowid order, so equal timestamps still have one newest).
_KEY_SELECT = """
SELECT a.key_id, a.name, a.budget_nano, a.rpm, a.concurrency, a.created_at, s.expires_at,
       a.revoked_at, s.prefix, a.cache_salt
FROM accounts a JOIN secrets s ON s.rowid = (SELECT MAX(rowid) FROM secrets WHERE key_id = a.key_id)
"""
_SUMS = """COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(cache_hit_tokens), 0),
    COALESCE(SUM(cache_miss_tokens), 0), COALESCE(SUM(completion_tokens), 0),
    COALESCE(SUM(reasoning_tokens), 0), COALESCE(SUM(cost_nano), 0)"""
# by -> (label, grouping expression); "key" groups by key_id so a re-issued name stays apart.
_GROUPS = {
    "key": ("COALESCE(a.name, u.key_id, '(open)')", "u.key_id"),
    "model": ("u.model", "u.model"),
    "day": ("strftime('%Y-%m-%d', u.created_at, 'unixepoch')",) * 2,   # UTC days
}


@dataclass(frozen=True)
class KeyInfo:
    """An account as the server sees it. `expires_at` is its newest secret's expiry (None: never)."""

    key_id: str
    name: str
    budget_nano: int | None
    rpm: int | None
    concurrency: int | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    prefix: str
    cache_salt: bytes = field(repr=False)   # mixed into prefix-cache block hashes (engine/blocks.py)

    def status(self, now: float) -> Literal["active", "expired", "revoked"]:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at is not None and self.expires_at <= now else "active"


@dataclass(frozen=True)
class UsageRow:
    """One request in the ledger. prompt = cache hit + cache miss; reasoning is part of completion."""

    request_id: str
    key_id: str | None
    model: str
    prompt_tokens: int
    cache_hit_tokens: int
    cache_miss_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cost_nano: int
    status: str = "ok"
    created_at: float | None = None     # epoch seconds; None: the ledger's clock at record time

    def __post_init__(self):
        counts = astuple(self)[3:9]
        if any(not isinstance(n, int) or n < 0 for n in counts):
            raise ValueError(f"token counts and cost must be non-negative integers: {self}")
        if self.cache_hit_tokens + self.cache_miss_tokens != self.prompt_tokens:
            raise ValueError(f"cache hit + miss tokens must equal prompt tokens: {self}")
        if self.reasoning_tokens > self.completion_tokens:
            raise ValueError(f"reasoning tokens are part of completion tokens: {self}")
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")


@dataclass(frozen=True)
class ReportRow:
    """Totals for one group of ledger rows (a key's name, a model id, a UTC day, or "total")."""

    group: str
    requests: int
    prompt_tokens: int
    cache_hit_tokens: int
    cache_miss_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cost_nano: int

    @property
    def cost_usd(self) -> str:
        return format_usd(self.cost_nano, places=6)


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _epoch(when: datetime | float) -> float:
    if isinstance(when, datetime):
        # Naive datetimes are UTC, like the "day" grouping.
        return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
    return float(when)


def _optional_positive(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value <= 0):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")


class Accounts:
    """Keys, ledger and idempotency store over one SQLite file; safe to share between threads."""

    def __init__(self, db_path: str | Path, clock: Callable[[], float] = time.time):
        self.path = Path(db_path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self._local = threading.local()
        self._lock = threading.Lock()           # guards _conns only
        self._conns: list[sqlite3.Connection] = []
        conn = self._conn()
        conn.execute("PRAGMA journal_mode = WAL")  # persistent: recorded in the file itself
        conn.executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN ourselves. check_same_thread=False only so that
            # close() may close every thread's connection; each is otherwise used by its own thread.
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA synchronous = FULL")   # WAL + NORMAL may lose the last commits
            with self._lock:
                self._conns.append(conn)
            self._local.conn = conn
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front: a deferred transaction that later upgrades from
        # read to write can fail with SQLITE_BUSY without waiting for the busy timeout.
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:   # some errors (disk full) have already rolled back
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._local = threading.local()

    def __enter__(self) -> Accounts:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- keys ---------------------------------------------------------------------------------

    def create_key(self, name: str, budget_usd: Amount | None = None, rpm: int | None = None,
                   concurrency: int | None = None, expires_in_days: float | None = 90) -> tuple[KeyInfo, str]:
        """A new account and its first secret. The secret is returned once and never stored."""
        if not name or not name.strip():
            raise ValueError("a key needs a non-empty name")
        _optional_positive("rpm", rpm)
        _optional_positive("concurrency", concurrency)
        if expires_in_days is not None and expires_in_days <= 0:
            raise ValueError(f"expires_in_days must be positive or None, got {expires_in_days}")
        budget = None if budget_usd is None else usd_to_nano(budget_usd)
        if budget is not None and budget < 0:
            raise ValueError(f"budget must be >= 0, got {budget_usd}")
        key_id, now = "key_" + random_secrets.token_hex(8), self.clock()
        lifetime = None if expires_in_days is None else expires_in_days * _DAY
        with self._write() as c:
            try:
                c.execute("INSERT INTO accounts (key_id, name, budget_nano, rpm, concurrency, lifetime_s,"
                          " cache_salt, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          (key_id, name, budget, rpm, concurrency, lifetime,
                           random_secrets.token_bytes(16), now))
            except sqlite3.IntegrityError:
                raise ValueError(f"a live key named {name!r} already exists") from None
            secret = self._add_secret(c, key_id, now, lifetime)
        return self.get_key(key_id), secret

    def _add_secret(self, c: sqlite3.Connection, key_id: str, now: float, lifetime: float | None) -> str:
        secret = "sk-" + random_secrets.token_hex(24)
        expires = None if lifetime is None else now + lifetime
        c.execute("INSERT INTO secrets (secret_hash, key_id, prefix, created_at, expires_at)"
                  " VALUES (?, ?, ?, ?, ?)", (_hash(secret), key_id, secret[:7], now, expires))
        return secret

    def get_key(self, key_id: str) -> KeyInfo | None:
        row = self._conn().execute(_KEY_SELECT + " WHERE a.key_id = ?", (key_id,)).fetchone()
        return None if row is None else KeyInfo(*row)

    def list_keys(self) -> list[KeyInfo]:
        """Every account ever created, revoked and expired ones included, oldest first."""
        return [KeyInfo(*r) for r in self._conn().execute(_KEY_SELECT + " ORDER BY a.created_at, a.rowid")]

    def authenticate(self, secret: str) -> KeyInfo | None:
        """The live, unexpired account this secret belongs to, else None."""
        if not isinstance(secret, str) or not secret:
            return None
        digest = _hash(secret)
        row = self._conn().execute(
            "SELECT s.secret_hash, s.expires_at, a.key_id, a.revoked_at FROM secrets s"
            " JOIN accounts a ON a.key_id = s.key_id WHERE s.secret_hash = ?", (digest,)).fetchone()
        if row is None or not hmac.compare_digest(row[0], digest):
            return None
        expires_at, key_id, revoked_at = row[1:]
        if revoked_at is not None or (expires_at is not None and expires_at <= self.clock()):
            return None
        return self.get_key(key_id)

    def revoke(self, name: str) -> KeyInfo:
        """Revoke the live key `name` and all its secrets at once."""
        with self._write() as c:
            # fetchall: a RETURNING statement left half-read would block the COMMIT.
            rows = c.execute("UPDATE accounts SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL"
                             " RETURNING key_id", (self.clock(), name)).fetchall()
        if not rows:
            raise ValueError(f"no live key named {name!r}")
        return self.get_key(rows[0][0])

    def rotate(self, name: str, grace_seconds: float = _DAY) -> tuple[KeyInfo, str]:
        """A new secret for the same account; older secrets stop working `grace_seconds` from now."""
        if grace_seconds < 0:
            raise ValueError(f"grace_seconds must be >= 0, got {grace_seconds}")
        now = self.clock()
        with self._write() as c:
            row = c.execute("SELECT key_id, lifetime_s FROM accounts WHERE name = ? AND revoked_at IS NULL",
                            (name,)).fetchone()
            if row is None:
                raise ValueError(f"no live key named {name!r}")
            key_id, lifetime = row
            cutoff = now + grace_seconds   # never extends a secret that already expires sooner
            c.execute("UPDATE secrets SET expires_at = ? WHERE key_id = ?"
                      " AND (expires_at IS NULL OR expires_at > ?)", (cutoff, key_id, cutoff))
            secret = self._add_secret(c, key_id, now, lifetime)
        return self.get_key(key_id), secret

    def has_keys(self) -> bool:
        """Whether the server must authenticate: any key was ever created.

        Revoked and expired keys count on purpose: revoking the last key must lock the server,
        not silently switch it to open local mode.
        """
        return self._conn().execute("SELECT 1 FROM accounts LIMIT 1").fetchone() is not None

    # --- ledger -------------------------------------------------------------------------------

    def record_usage(self, row: UsageRow) -> bool:
        """Append one request; durable on return. False (and no charge) if request_id is known."""
        created = self.clock() if row.created_at is None else row.created_at
        values = astuple(row)[:10] + (created,)
        with self._write() as c:
            inserted = c.execute("INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                                 " ON CONFLICT(request_id) DO NOTHING", values).rowcount
            if inserted and row.key_id is not None:
                c.execute("UPDATE accounts SET spent_nano = spent_nano + ? WHERE key_id = ?",
                          (row.cost_nano, row.key_id))
        return bool(inserted)

    def spent_nano(self, key_id: str | None) -> int:
        """Total cost recorded for a key (None: open-mode requests), in nano-dollars."""
        if key_id is None:
            return self._conn().execute(
                "SELECT COALESCE(SUM(cost_nano), 0) FROM usage WHERE key_id IS NULL").fetchone()[0]
        row = self._conn().execute("SELECT spent_nano FROM accounts WHERE key_id = ?", (key_id,)).fetchone()
        return 0 if row is None else row[0]

    def remaining_nano(self, key_id: str | None) -> int | None:
        """Budget left in nano-dollars (negative when a request overshot it); None: no budget."""
        if key_id is None:
            return None
        row = self._conn().execute("SELECT budget_nano, spent_nano FROM accounts WHERE key_id = ?",
                                   (key_id,)).fetchone()
        return None if row is None or row[0] is None else row[0] - row[1]

    def has_balance(self, key_id: str | None) -> bool:
        """Whether a new request may start (402 otherwise). In-flight requests may overshoot."""
        remaining = self.remaining_nano(key_id)
        return remaining is None or remaining > 0

    def balance(self, key_id: str | None) -> dict:
        """The /user/balance body. A budget is an operator grant: it all shows as granted_balance.

        Amounts are floored to cents (never show money that is not there) and go negative when the
        last request overshot. Without a budget (or in open mode) the amounts read "Infinity".
        """
        remaining = self.remaining_nano(key_id)
        if remaining is None:
            info = {"total_balance": UNLIMITED, "granted_balance": UNLIMITED}
        else:
            left = format_usd(remaining, rounding=ROUND_FLOOR)
            info = {"total_balance": left, "granted_balance": left}
        return {"is_available": remaining is None or remaining > 0,
                "balance_infos": [{"currency": "USD", **info, "topped_up_balance": "0.00"}]}

    def usage_report(self, by: Literal["key", "model", "day"] = "key",
                     since: datetime | float | None = None) -> list[ReportRow]:
        """Ledger totals per key name, model id or UTC day (YYYY-MM-DD), sorted by group."""
        if by not in _GROUPS:
            raise ValueError(f"by must be one of {sorted(_GROUPS)}, got {by!r}")
        label, group = _GROUPS[by]
        rows = self._conn().execute(
            f"SELECT {label}, {_SUMS} FROM usage u LEFT JOIN accounts a ON a.key_id = u.key_id"
            f" WHERE u.created_at >= ? GROUP BY {group} ORDER BY 1",
            (float("-inf") if since is None else _epoch(since),))
        return [ReportRow(*r) for r in rows]

    def totals(self) -> ReportRow:
        """Totals over the whole ledger."""
        return ReportRow("total", *self._conn().execute(f"SELECT {_SUMS} FROM usage").fetchone())

    def check_integrity(self) -> None:
        """Raise AssertionError unless every account's running spend equals the sum of its rows."""
        bad = self._conn().execute(
            "SELECT a.name, a.spent_nano, COALESCE(SUM(u.cost_nano), 0) AS s FROM accounts a"
            " LEFT JOIN usage u ON u.key_id = a.key_id GROUP BY a.key_id HAVING a.spent_nano != s").fetchall()
        if bad:
            raise AssertionError(f"ledger out of step (name, running, summed): {bad}")

    # --- idempotency --------------------------------------------------------------------------

    def get_idempotent(self, key_id: str | None, idem_key: str) -> str | None:
        """The response JSON stored for this (key, Idempotency-Key) if still live."""
        row = self._conn().execute(
            "SELECT response FROM idempotency WHERE key_id = ? AND idem_key = ? AND expires_at > ?",
            (key_id or "", idem_key, self.clock())).fetchone()
        return None if row is None else row[0]

    def put_idempotent(self, key_id: str | None, idem_key: str, response_json: str,
                       ttl_seconds: float = _DAY) -> str:
        """Store a response unless a live one exists; return the one now stored (first wins)."""
        now = self.clock()
        with self._write() as c:
            c.execute("DELETE FROM idempotency WHERE expires_at <= ?", (now,))   # prune as we go
            c.execute("INSERT INTO idempotency VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                      (key_id or "", idem_key, response_json, now + ttl_seconds))
            return c.execute("SELECT response FROM idempotency WHERE key_id = ? AND idem_key = ?",
                             (key_id or "", idem_key)).fetchone()[0]
