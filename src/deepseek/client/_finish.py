"""What to do with `finish_reason == "insufficient_system_resource"` (api.md A7).

DeepSeek ends an answer that way when its backend ran out of resources mid-generation; the text
is partial and should not be taken as a normal `stop` (LiteLLM's known pitfall). The client's
`on_insufficient_resource` option picks one of:

- "retry" (default): ask again, up to `max_retries` times, with the client's backoff, and raise
  `InsufficientSystemResourceError` if every attempt ends that way;
- "raise": raise at once;
- "return": hand the partial answer back, as the plain openai client does.

A stream cannot be re-run transparently once chunks reached the caller, so a stream is never
retried: with "retry" or "raise" its iteration raises after the last chunk (so the usage chunk
is still seen). Each re-run gets a fresh `Idempotency-Key`: it is a new generation, not a replay.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from openai import AsyncStream, Stream
from openai._streaming import extract_stream_chunk_type

from ._constants import INSUFFICIENT_SYSTEM_RESOURCE
from .errors import InsufficientSystemResourceError

Policy = Literal["retry", "raise", "return"]
POLICIES = ("retry", "raise", "return")

_T = TypeVar("_T")


def ran_out(response: Any) -> bool:
    """True if any choice of a completion (or chunk) finished for lack of system resources."""
    return any(getattr(c, "finish_reason", None) == INSUFFICIENT_SYSTEM_RESOURCE
               for c in getattr(response, "choices", None) or ())


class CheckedStream(Stream[_T]):
    def __stream__(self):
        seen = False
        for chunk in super().__stream__():
            seen = seen or ran_out(chunk)
            yield chunk
        if seen:
            raise InsufficientSystemResourceError(None)


class CheckedAsyncStream(AsyncStream[_T]):
    async def __stream__(self):
        seen = False
        async for chunk in super().__stream__():
            seen = seen or ran_out(chunk)
            yield chunk
        if seen:
            raise InsufficientSystemResourceError(None)


def checked_stream_cls(stream_cls: type) -> type:
    """`Stream[X]` -> `CheckedStream[X]` (and the async twin), keeping the chunk type."""
    chunk = extract_stream_chunk_type(stream_cls)
    origin = getattr(stream_cls, "__origin__", stream_cls)
    return (CheckedAsyncStream if issubclass(origin, AsyncStream) else CheckedStream)[chunk]
