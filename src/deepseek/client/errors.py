"""The SDK's errors: openai's classes plus what DeepSeek adds.

Every openai error keeps working (`except openai.RateLimitError` still catches a 429); DeepSeek's
additions subclass them, so code written for the openai client needs no change:

- `MissingAPIKeyError`: no key was given; the message names `DEEPSEEK_API_KEY` and how to set it.
- `InsufficientBalanceError` (402): the account or key has no balance left. Never retried.
- `InsufficientSystemResourceError`: a 200 answer whose `finish_reason` was
  `insufficient_system_resource` (the backend gave up mid-generation); carries the partial answer.
"""

from __future__ import annotations

from typing import Any

from openai import (APIConnectionError, APIError, APIStatusError, APITimeoutError, AuthenticationError,
                    BadRequestError, ConflictError, InternalServerError, NotFoundError, OpenAIError,
                    PermissionDeniedError, RateLimitError, UnprocessableEntityError)

from ._constants import API_KEY_ENV

__all__ = [
    "DeepSeekError", "MissingAPIKeyError", "InsufficientBalanceError", "InsufficientSystemResourceError",
    "OpenAIError", "APIError", "APIStatusError", "APIConnectionError", "APITimeoutError", "BadRequestError",
    "AuthenticationError", "PermissionDeniedError", "NotFoundError", "ConflictError",
    "UnprocessableEntityError", "RateLimitError", "InternalServerError",
]


class DeepSeekError(OpenAIError):
    """Base of the errors this SDK adds (itself an `openai.OpenAIError`)."""


class MissingAPIKeyError(DeepSeekError):
    def __init__(self) -> None:
        super().__init__(
            f"No DeepSeek API key: pass api_key=... to the client or set the {API_KEY_ENV} environment "
            f"variable, e.g. `export {API_KEY_ENV}=sk-...` (any non-empty value works for a local "
            f"`deepseek serve` without keys).")


class InsufficientBalanceError(APIStatusError):
    """HTTP 402: the balance (or the key's budget) is used up. Top up; retrying cannot help."""


class InsufficientSystemResourceError(DeepSeekError):
    """The server stopped generating for lack of resources; `response` is the partial answer."""

    def __init__(self, response: Any, attempts: int = 1) -> None:
        self.response = response
        self.attempts = attempts
        super().__init__(f"finish_reason 'insufficient_system_resource' after {attempts} attempt(s): "
                         "the server ran out of resources mid-generation")
