"""Fixtures: a real `deepseek serve` process on 127.0.0.1 with the tiny checkpoint, and the official client."""

from __future__ import annotations

import pytest
from openai import OpenAI
from server_process import Server


@pytest.fixture(scope="session")
def server(tiny_checkpoint, tmp_path_factory):
    """An open-mode server (no API keys)."""
    folder = tmp_path_factory.mktemp("server")
    s = Server(tiny_checkpoint, folder / "ledger.db", folder / "server.log")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def client(server) -> OpenAI:
    return server.client()
