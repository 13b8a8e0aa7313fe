"""`DeepSeek` and `AsyncDeepSeek`: the official openai clients, configured for DeepSeek.

HTTP, SSE, streaming, timeouts and the retry loop are openai's. What changes is small and sits in
the hooks openai's base client already has:

- the key comes from `api_key=` or `DEEPSEEK_API_KEY` (missing or empty: `MissingAPIKeyError`),
  the base URL from `base_url=`, `DEEPSEEK_BASE_URL` or `https://api.deepseek.com`;
- `_calculate_retry_timeout`: DeepSeek's backoff (`retries.Backoff`), server hints first;
- `_idempotency_header`: an `Idempotency-Key` per logical POST, reused by its retries;
- `_make_status_error`: 402 becomes `InsufficientBalanceError`;
- `_process_response_data`: responses are built as the typed subclasses in `types`;
- `request`: the `insufficient_system_resource` policy (see `_finish`);
- `user` and `beta` namespaces (see `resources`);
- `default_headers` / `user_agent`: no OpenAI account headers; says `deepseek-python/<version>`.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import uuid
from typing import Any

from openai import AsyncOpenAI, OpenAI
from openai import __version__ as openai_version
from openai._compat import cached_property
from openai._constants import MAX_RETRY_AFTER_DELAY

from deepseek import __version__ as deepseek_version

from . import _finish
from ._constants import (API_KEY_ENV, BASE_URL_ENV, DEFAULT_BASE_URL, DEFAULT_MAX_RETRIES,
                         IDEMPOTENCY_HEADER)
from .errors import InsufficientBalanceError, InsufficientSystemResourceError, MissingAPIKeyError
from .resources import AsyncBeta, AsyncUser, Beta, User
from .retries import Backoff
from .types import RESPONSE_TYPES, alias_reasoning

# Headers openai's client derives from OPENAI_ORG_ID / OPENAI_PROJECT_ID; they mean nothing to
# DeepSeek and would leak an OpenAI account's identifiers to another provider.
_OPENAI_ONLY_HEADERS = ("OpenAI-Organization", "OpenAI-Project")


def resolve_settings(api_key: Any, base_url: Any) -> tuple[Any, Any]:
    """(api key, base URL) from the arguments, else the environment, else the default URL."""
    if api_key is None:
        api_key = os.environ.get(API_KEY_ENV)
    if not callable(api_key) and not (api_key or "").strip():
        raise MissingAPIKeyError()
    if base_url is None:
        base_url = os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    return api_key, base_url


class _DeepSeekHooks:
    """The overrides shared by the sync and async clients (mixed in before openai's class)."""

    _backoff: Backoff
    _on_insufficient_resource: _finish.Policy

    def _configure(self, backoff: Backoff | None, on_insufficient_resource: _finish.Policy) -> None:
        if on_insufficient_resource not in _finish.POLICIES:
            raise ValueError(f"on_insufficient_resource must be one of {_finish.POLICIES}, "
                             f"got {on_insufficient_resource!r}")
        self._backoff = backoff or Backoff()
        self._on_insufficient_resource = on_insufficient_resource
        self._idempotency_header = IDEMPOTENCY_HEADER

    def _extra_copy_kwargs(self, kwargs: dict) -> dict:
        """Carry our own options through openai's `copy()` / `with_options()`."""
        extra = {"backoff": kwargs.pop("backoff", None) or self._backoff,
                 "on_insufficient_resource": kwargs.pop("on_insufficient_resource", None)
                 or self._on_insufficient_resource}
        return {**extra, **kwargs.pop("_extra_kwargs", {})}

    @property
    def default_headers(self) -> dict:
        headers = dict(super().default_headers)
        for name in _OPENAI_ONLY_HEADERS:
            headers.pop(name, None)
        return headers

    @property
    def user_agent(self) -> str:
        return f"deepseek-python/{deepseek_version} openai-python/{openai_version}"

    def _idempotency_key(self) -> str:
        return f"ds-{uuid.uuid4().hex}"

    def _calculate_retry_timeout(self, remaining_retries: int, options, response_headers=None) -> float:
        retry_after = self._parse_retry_after_header(response_headers)
        if retry_after is not None and math.isfinite(retry_after) and 0 < retry_after <= MAX_RETRY_AFTER_DELAY:
            return retry_after
        retries_taken = options.get_max_retries(self.max_retries) - remaining_retries
        return self._backoff.delay(retries_taken)

    def _make_status_error(self, err_msg: str, *, body: object, response):
        if response.status_code == 402:
            data = body.get("error", body) if isinstance(body, dict) else body
            return InsufficientBalanceError(err_msg, response=response, body=data)
        return super()._make_status_error(err_msg, body=body, response=response)

    def _process_response_data(self, *, data: object, cast_to: type, response):
        typed = RESPONSE_TYPES.get(cast_to)
        if typed is not None:
            cast_to, data = typed, alias_reasoning(data)
        return super()._process_response_data(data=data, cast_to=cast_to, response=response)

    def _resource_retry(self, result: Any, options, attempts: int) -> bool:
        """After a completed non-streaming call: True to ask again, False to return `result`."""
        if self._on_insufficient_resource == "return" or not _finish.ran_out(result):
            return False
        pinned = any(k.lower() == IDEMPOTENCY_HEADER.lower() for k in (options.headers or {}))
        # A caller-pinned Idempotency-Key would only replay the same partial answer.
        if (self._on_insufficient_resource == "raise" or pinned
                or attempts > options.get_max_retries(self.max_retries)):
            raise InsufficientSystemResourceError(result, attempts)
        return True


class DeepSeek(_DeepSeekHooks, OpenAI):
    """Synchronous DeepSeek client: `DeepSeek(api_key=..., base_url=...)` or from the environment.

    Everything of `openai.OpenAI` works (`chat.completions.create`, `models.list`, streaming,
    `with_raw_response`, `with_options`, ...), plus `user.balance()` and DeepSeek's `beta`.
    """

    def __init__(self, *, api_key: Any = None, base_url: Any = None, max_retries: int = DEFAULT_MAX_RETRIES,
                 backoff: Backoff | None = None, on_insufficient_resource: _finish.Policy = "retry",
                 **openai_options: Any) -> None:
        api_key, base_url = resolve_settings(api_key, base_url)
        super().__init__(api_key=api_key, base_url=base_url, max_retries=max_retries, **openai_options)
        self._configure(backoff, on_insufficient_resource)

    @cached_property
    def user(self) -> User:
        return User(self)

    @cached_property
    def beta(self) -> Beta:  # type: ignore[override]
        return Beta(self)

    def copy(self, **kwargs: Any) -> DeepSeek:  # type: ignore[override]
        return super().copy(_extra_kwargs=self._extra_copy_kwargs(kwargs), **kwargs)

    with_options = copy

    def request(self, cast_to, options, *, stream: bool = False, stream_cls=None):
        if stream:
            if stream_cls is not None and self._on_insufficient_resource != "return":
                stream_cls = _finish.checked_stream_cls(stream_cls)
            return super().request(cast_to, options, stream=True, stream_cls=stream_cls)
        attempts = 0
        while True:
            result = super().request(cast_to, options, stream=False, stream_cls=stream_cls)
            attempts += 1
            if not self._resource_retry(result, options, attempts):
                return result
            time.sleep(self._backoff.delay(attempts - 1))


class AsyncDeepSeek(_DeepSeekHooks, AsyncOpenAI):
    """Asynchronous DeepSeek client; `async with AsyncDeepSeek() as client:` closes its connections."""

    def __init__(self, *, api_key: Any = None, base_url: Any = None, max_retries: int = DEFAULT_MAX_RETRIES,
                 backoff: Backoff | None = None, on_insufficient_resource: _finish.Policy = "retry",
                 **openai_options: Any) -> None:
        api_key, base_url = resolve_settings(api_key, base_url)
        super().__init__(api_key=api_key, base_url=base_url, max_retries=max_retries, **openai_options)
        self._configure(backoff, on_insufficient_resource)

    @cached_property
    def user(self) -> AsyncUser:
        return AsyncUser(self)

    @cached_property
    def beta(self) -> AsyncBeta:  # type: ignore[override]
        return AsyncBeta(self)

    def copy(self, **kwargs: Any) -> AsyncDeepSeek:  # type: ignore[override]
        return super().copy(_extra_kwargs=self._extra_copy_kwargs(kwargs), **kwargs)

    with_options = copy

    async def request(self, cast_to, options, *, stream: bool = False, stream_cls=None):
        if stream:
            if stream_cls is not None and self._on_insufficient_resource != "return":
                stream_cls = _finish.checked_stream_cls(stream_cls)
            return await super().request(cast_to, options, stream=True, stream_cls=stream_cls)
        attempts = 0
        while True:
            result = await super().request(cast_to, options, stream=False, stream_cls=stream_cls)
            attempts += 1
            if not self._resource_retry(result, options, attempts):
                return result
            await asyncio.sleep(self._backoff.delay(attempts - 1))
