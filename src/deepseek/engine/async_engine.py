"""The asyncio face of the engine: `async for out in engine.stream(request)`.

The `LLMEngine` runs on one dedicated thread, so the HTTP event loop never blocks on model compute.
Callers talk to it through a command queue (add, abort); outputs come back through one asyncio
queue per request, delivered with `call_soon_threadsafe`. Leaving a stream early (the client went
away, or the task was cancelled) aborts the request and frees its cache blocks.

If a step raises, the engine is marked dead: every open stream gets the error and `healthy`
turns False (the server's /health then answers 503).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import AsyncIterator

from .engine import LLMEngine
from .request import Request, RequestOutput

log = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine thread stopped after an internal error; no request can run."""


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._commands: queue.Queue = queue.Queue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._error: BaseException | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="deepseek-engine", daemon=True)
        self._thread.start()

    @property
    def healthy(self) -> bool:
        return self._error is None and self._thread.is_alive()

    def validate(self, request: Request) -> None:
        """Raise ValueError now for a request that can never run (reads configuration only)."""
        self.engine.validate(request)

    async def stream(self, request: Request, heartbeat: float | None = None) -> AsyncIterator[RequestOutput | None]:
        """Yield the request's outputs until it finishes; yield None after `heartbeat` idle seconds."""
        if not self.healthy:
            raise EngineDeadError(f"the engine is not running: {self._error!r}")
        self.validate(request)
        outputs: asyncio.Queue = asyncio.Queue()
        self._streams[request.request_id] = (asyncio.get_running_loop(), outputs)
        self._commands.put(("add", request))
        finished = False
        try:
            while True:
                try:
                    out = await asyncio.wait_for(outputs.get(), heartbeat) if heartbeat else await outputs.get()
                except asyncio.TimeoutError:
                    yield None
                    continue
                if isinstance(out, BaseException):
                    finished = True
                    raise out
                finished = out.finished
                yield out
                if finished:
                    return
        finally:
            self._streams.pop(request.request_id, None)
            if not finished:
                self._commands.put(("abort", request.request_id))

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._commands.put(("wake", None))
        self._thread.join(timeout)

    # ----- the engine thread -----
    def _loop(self) -> None:
        try:
            while not self._stopping.is_set():
                self._drain(block=not self.engine.has_unfinished())
                if self.engine.has_unfinished():
                    for out in self.engine.step():
                        self._deliver(out.request_id, out)
        except BaseException as e:  # noqa: BLE001 - any failure kills the engine; tell every stream
            log.exception("engine step failed")
            self._error = e
            for request_id in list(self._streams):
                self._deliver(request_id, EngineDeadError(f"engine failed: {e!r}"))

    def _drain(self, block: bool) -> None:
        while True:
            try:
                kind, arg = self._commands.get(timeout=0.1) if block else self._commands.get_nowait()
            except queue.Empty:
                return
            block = False
            if kind == "add":
                try:
                    self.engine.add_request(arg)
                except ValueError as e:
                    self._deliver(arg.request_id, e)
            elif kind == "abort":
                self.engine.abort(arg)

    def _deliver(self, request_id: str, item) -> None:
        target = self._streams.get(request_id)
        if target is not None:
            loop, outputs = target
            loop.call_soon_threadsafe(outputs.put_nowait, item)
