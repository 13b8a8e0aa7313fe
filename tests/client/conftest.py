"""Fixtures for the SDK and its tools: a real keyed server, per-test keys, a client, a stub server.

The real server is `tests/server/server_process.py`'s `Server` (a `deepseek serve` process on 127.0.0.1
with the tiny random checkpoint). It runs with API keys so that each test can take a fresh key and
read exactly its own rows back from the ledger, whatever else ran before it.
"""

from __future__ import annotations

import time

import pytest
from sdk_helpers import Server, Stub

from deepseek.server.accounts import Accounts


@pytest.fixture(scope="session")
def sdk_server(tiny_checkpoint, tmp_path_factory):
    """One keyed server for the client tests; `server.key` is a key with no limits."""
    folder = tmp_path_factory.mktemp("sdk_server")
    db = folder / "ledger.db"
    with Accounts(db) as accounts:
        _, secret = accounts.create_key("sdk")
    server = Server(tiny_checkpoint, db, folder / "server.log")
    server.key = secret
    yield server
    server.stop()


@pytest.fixture
def new_key(sdk_server, request):
    """A fresh key on the shared server: `(secret, key_id)`; `budget=` in USD limits it."""
    def make(budget: str | None = None, name: str | None = None):
        name = name or f"{request.node.name[:40]}-{time.monotonic_ns()}"
        with Accounts(sdk_server.db) as accounts:
            info, secret = accounts.create_key(name, budget_usd=budget)
        return secret, info.key_id
    return make


@pytest.fixture
def sdk(sdk_server):
    """A `DeepSeek` client on the shared server, without retries."""
    from deepseek import DeepSeek

    with DeepSeek(api_key=sdk_server.key, base_url=sdk_server.url, max_retries=0, timeout=60) as client:
        yield client


@pytest.fixture
def stub():
    made = []

    def make(replies):
        made.append(Stub(replies))
        return made[-1]

    yield make
    for s in made:
        s.close()
