"""Idempotent retries: one generation and one charge per (API key, Idempotency-Key).

A non-streaming request that carries an `Idempotency-Key` header has its successful JSON answer
stored (SQLite, 24 h). A repeat from the same key gets the stored body back with
`Idempotent-Replayed: true`; no generation runs and nothing is charged again. A duplicate that
arrives while the first is still generating waits for it instead of starting a second run.
Errors are not stored: a request that failed may be retried for real.
"""

from __future__ import annotations

import asyncio
import json
from typing import Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response

HEADER = "idempotency-key"
TTL_SECONDS = 24 * 3600


class Idempotency:
    def __init__(self, accounts):
        self.accounts = accounts
        self._in_flight: dict[tuple, asyncio.Future] = {}

    async def respond(self, request: Request, key, produce: Callable[[], Awaitable[dict]]) -> Response:
        idem = request.headers.get(HEADER)
        if not idem or self.accounts is None:
            return _json(json.dumps(await produce(), ensure_ascii=False), replayed=False)
        slot = (key.key_id if key is not None else None, idem)
        stored = self.accounts.get_idempotent(*slot)
        if stored is not None:
            return _json(stored, replayed=True)
        running = self._in_flight.get(slot)
        if running is not None:
            return _json(await asyncio.shield(running), replayed=True)
        future = asyncio.get_running_loop().create_future()
        self._in_flight[slot] = future
        try:
            text = json.dumps(await produce(), ensure_ascii=False)
            text = self.accounts.put_idempotent(*slot, text, ttl_seconds=TTL_SECONDS)
            future.set_result(text)
            return _json(text, replayed=False)
        except BaseException as e:
            future.set_exception(e)
            future.exception()            # mark retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._in_flight[slot]


def _json(text: str, replayed: bool) -> Response:
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    return Response(text, media_type="application/json", headers=headers)
