"""Helpers for the SDK tests: the real server class, sample requests, the ledger, a stub HTTP server.

A module with its own name (not conftest) so tests can import from it: several conftest.py files
share the module name "conftest", so `from conftest import ...` depends on collection order.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _load_server_process():
    # tests/ is not a package, and tests/server may not be on sys.path: load the module by its path.
    path = Path(__file__).resolve().parent.parent / "server" / "server_process.py"
    spec = importlib.util.spec_from_file_location("_server_test_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


Server = _load_server_process().Server

USER = [{"role": "user", "content": "Say hello."}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}}, "required": ["city"],
                   "additionalProperties": False}}}


def ledger_rows(db: Path, key_id: str) -> list[dict]:
    """The ledger rows of one key. The server writes a row before the answer's last bytes, so a
    client holding a complete answer always finds its row."""
    with sqlite3.connect(db) as c:
        c.row_factory = sqlite3.Row
        return [dict(r) for r in c.execute("SELECT * FROM usage WHERE key_id = ? ORDER BY created_at", (key_id,))]


class Stub:
    """A scripted HTTP server: each POST/GET takes the next (status, headers, body) reply.

    Records every request's arrival time (monotonic), path and headers, to measure retry delays
    and check which Idempotency-Key each attempt carried.
    """

    def __init__(self, replies: list[tuple[int, dict, object]]):
        self.replies = list(replies)
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                stub.requests.append({"at": time.monotonic(), "path": self.path,
                                      "headers": {k.lower(): v for k, v in self.headers.items()},
                                      "body": json.loads(body) if body else None})
                status, headers, payload = stub.replies.pop(0) if stub.replies else (500, {}, {"error": {}})
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                headers = {"Content-Type": "application/json", **headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_GET = _reply

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def gaps(self) -> list[float]:
        times = [r["at"] for r in self.requests]
        return [b - a for a, b in zip(times, times[1:])]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(finish_reason: str = "stop", content: str = "ok", model: str = "deepseek-chat") -> dict:
    """A minimal chat.completion body as DeepSeek sends it."""
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": finish_reason,
                         "message": {"role": "assistant", "content": content, "reasoning_content": "hm"}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12,
                      "prompt_cache_hit_tokens": 4, "prompt_cache_miss_tokens": 6}}
