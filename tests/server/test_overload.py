"""A full server: queued streams get `: keep-alive` comments; a full queue answers 503 + Retry-After."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from server_process import Server

BODY = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture(scope="module")
def busy(tiny_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("busy")
    server = Server(tiny_checkpoint, folder / "db.sqlite", folder / "log.txt",
                    args=("--max-num-seqs", "1", "--max-waiting", "1", "--keepalive-seconds", "0.1"))
    yield server
    server.stop()


def test_queued_stream_gets_keepalives_and_a_full_queue_gets_503(busy):
    ahead_started = threading.Event()

    def hog():
        with httpx.stream("POST", busy.url + "/chat/completions", json={**BODY, "max_tokens": 400, "temperature": 0},   # greedy: no early EOS
                          timeout=120) as r:
            for _ in r.iter_lines():
                ahead_started.set()

    t = threading.Thread(target=hog)
    t.start()
    assert ahead_started.wait(30)
    lines, overloaded = [], {}

    def queued():
        with httpx.stream("POST", busy.url + "/chat/completions", json={**BODY, "max_tokens": 2},
                          timeout=120) as r:
            lines.extend(r.iter_lines())

    q = threading.Thread(target=queued)
    q.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and busy.metrics()["deepseek_requests_waiting"] < 1:
        time.sleep(0.05)
    r = httpx.post(busy.url + "/chat/completions", json={**BODY, "stream": False, "max_tokens": 2}, timeout=30)
    overloaded["status"], overloaded["retry"] = r.status_code, r.headers.get("retry-after")
    t.join(120)
    q.join(120)
    assert overloaded == {"status": 503, "retry": "2"}
    assert ": keep-alive" in lines and [line for line in lines if line][-1] == "data: [DONE]"
