"""What every generating route does around a `Run`: admission, SSE framing, disconnects, the ledger."""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing

from fastapi import Request
from fastapi.responses import StreamingResponse

from .. import auth
from ..errors import APIError
from ..generation import Run
from ..state import ServerState

RETRY_AFTER_OVERLOADED = "2"


def admit(state: ServerState, key):
    """Refuse work the server cannot take now (503), then take a concurrency slot (429)."""
    engine = state.engine
    if not engine.healthy:
        raise APIError(503, "The inference engine is not running.", headers={"Retry-After": "10"})
    if engine.engine.num_waiting >= state.settings.max_waiting:
        raise APIError(503, "Server Overloaded: too many queued requests. Retry shortly.",
                       headers={"Retry-After": RETRY_AFTER_OVERLOADED})
    return auth.acquire_slot(state, key)


def sse_frame(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def run_to_end(state: ServerState, run: Run, slot, request: Request) -> None:
    """Consume a run for a non-streaming response; a client that goes away aborts it."""
    async def consume():
        async with aclosing(run.deltas()) as deltas:
            async for _ in deltas:
                pass

    task = asyncio.create_task(consume())
    status = "aborted"
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.25)
            if not task.done() and await request.is_disconnected():
                task.cancel()
        await task
        status = "ok"
    finally:
        if not task.done():
            task.cancel()
        slot.release()
        auth.record(state, run, status)


def stream_response(state: ServerState, run: Run, slot, chunks) -> StreamingResponse:
    """Stream SSE text from `chunks`; a None item marks the point to write the ledger row (before
    the last bytes). A client disconnect closes the generator, which aborts the engine request."""
    async def body():
        recorded = False
        try:
            async with aclosing(chunks) as pieces:
                async for piece in pieces:
                    if piece is None:
                        auth.record(state, run, "ok")
                        recorded = True
                        continue
                    yield piece
        finally:
            slot.release()
            if not recorded:
                auth.record(state, run, "aborted")

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
