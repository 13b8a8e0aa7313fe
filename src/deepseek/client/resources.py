"""The namespaces DeepSeek adds to openai's: `client.user` and DeepSeek's `client.beta`.

`client.user.balance()` is `GET /user/balance`. `client.beta` is a copy of the client pointed at
DeepSeek's beta base URL (`https://api.deepseek.com/beta`), sharing the connection pool:
`client.beta.chat.completions.create(...)` for chat prefix completion and strict tools,
`client.beta.completions.create(prompt=..., suffix=...)` for FIM. It replaces openai's own `beta`
namespace (assistants, realtime), which DeepSeek does not serve.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from openai import NotGiven, not_given
from openai._base_client import make_request_options
from openai._resource import AsyncAPIResource, SyncAPIResource

from .types import Balance

if TYPE_CHECKING:
    from openai.resources import AsyncCompletions, Completions
    from openai.resources.chat import AsyncChat, Chat


def beta_base_url(base_url: Any) -> str:
    """`https://api.deepseek.com[/v1]` -> `https://api.deepseek.com/beta` (idempotent)."""
    url = str(base_url).rstrip("/")
    if url.endswith("/beta"):
        return url
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url + "/beta"


class User(SyncAPIResource):
    def balance(self, *, extra_headers=None, extra_query=None,
                timeout: float | None | NotGiven = not_given) -> Balance:
        """The account's (or key's) balance: `is_available` and one entry per currency."""
        options = make_request_options(extra_headers=extra_headers, extra_query=extra_query, timeout=timeout)
        return self._get("/user/balance", options=options, cast_to=Balance)


class AsyncUser(AsyncAPIResource):
    async def balance(self, *, extra_headers=None, extra_query=None,
                      timeout: float | None | NotGiven = not_given) -> Balance:
        options = make_request_options(extra_headers=extra_headers, extra_query=extra_query, timeout=timeout)
        return await self._get("/user/balance", options=options, cast_to=Balance)


class Beta:
    """Chat prefix completion and strict tools (`chat`), and FIM (`completions`)."""

    def __init__(self, client) -> None:
        self._client = client.with_options(base_url=beta_base_url(client.base_url))

    @property
    def chat(self) -> Chat:
        return self._client.chat

    @property
    def completions(self) -> Completions:
        return self._client.completions


class AsyncBeta(Beta):
    @property
    def chat(self) -> AsyncChat:          # type: ignore[override]
        return self._client.chat

    @property
    def completions(self) -> AsyncCompletions:   # type: ignore[override]
        return self._client.completions
