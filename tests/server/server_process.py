"""The server process the HTTP tests run against: a real `deepseek serve` on 127.0.0.1.

A module with a name of its own (not conftest): several conftest.py files share that module name, so
`from conftest import ...` would depend on collection order.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from openai import OpenAI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One server process; `url` is its root, `v1` the OpenAI base URL."""

    def __init__(self, model: Path, db: Path, log: Path, env: dict | None = None, args: tuple = ()):
        self.port = int((env or {}).get("AIP_HTTP_PORT", 0)) or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.v1 = self.url + "/v1"
        self.db = db
        self.log = log
        cmd = [sys.executable, "-m", "deepseek.cli.main", "serve", "--model", str(model), "--port", str(self.port),
               "--db", str(db), "--threads", "1", *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
        self._wait_healthy()

    def _wait_healthy(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server did not become healthy: {self.log.read_text()[-3000:]}")

    def client(self, api_key: str = "sk-local", **kwargs) -> OpenAI:
        return OpenAI(base_url=self.v1, api_key=api_key, max_retries=0, timeout=60, **kwargs)

    def beta(self, api_key: str = "sk-local") -> OpenAI:
        return OpenAI(base_url=self.url + "/beta", api_key=api_key, max_retries=0, timeout=60)

    def metrics(self) -> dict[str, float]:
        out = {}
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
