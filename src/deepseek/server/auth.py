"""Who is calling, may they, and what did it cost: keys (401), budgets (402), limits (429), ledger.

With no active API key in the database the server runs in open local mode: requests need no key
and are recorded with key_id None. Otherwise every generating request needs `Authorization:
Bearer sk-...`. The ledger row is written once per request, before its response's last byte.
"""

from __future__ import annotations

import logging
import math

from fastapi import Request

from deepseek.pricing import cost_nano_usd

from .accounts import UsageRow
from .errors import APIError

log = logging.getLogger(__name__)


def bearer_key(request: Request) -> str | None:
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    return secret.strip() if scheme.lower() == "bearer" and secret.strip() else None


def authenticate(state, request: Request):
    """The caller's KeyInfo, or None in open mode; 401 for a missing or unknown key."""
    accounts = state.accounts
    if accounts is None or not accounts.has_keys():
        return None
    secret = bearer_key(request)
    if secret is None:
        raise APIError(401, "Authentication Fails: no API key. Send the header "
                            "'Authorization: Bearer <your API key>'.", code="invalid_api_key")
    key = accounts.authenticate(secret)
    if key is None:
        raise APIError(401, "Authentication Fails: your API key is invalid, revoked or expired.",
                       code="invalid_api_key")
    return key


def authorize(state, request: Request):
    """authenticate, then refuse a spent budget (402) or a request over the key's rate (429)."""
    key = authenticate(state, request)
    if key is None:
        return None
    if not state.accounts.has_balance(key.key_id):
        raise APIError(402, "Insufficient Balance: this key's budget is used up.", code="insufficient_balance")
    retry = state.rate_limiter.check(key.key_id, key.rpm)
    if retry is not None:
        raise APIError(429, f"Rate Limit Reached: at most {key.rpm} requests per minute for this key.",
                       code="rate_limit_exceeded", headers={"Retry-After": str(max(1, math.ceil(retry)))})
    return key


def acquire_slot(state, key):
    """A concurrency slot for the request (release it exactly once; releasing twice is harmless)."""
    key_id = key.key_id if key is not None else None
    limit = key.concurrency if key is not None else None
    slot = state.concurrency.try_acquire(key_id, limit)
    if slot is None:
        retry = state.concurrency.retry_after(key_id)
        raise APIError(429, f"Rate Limit Reached: at most {limit} concurrent requests for this key.",
                       code="rate_limit_exceeded", headers={"Retry-After": str(max(1, math.ceil(retry)))})
    return slot


def record(state, run, status: str) -> None:
    """Write the request's ledger row (and observe its metrics). Never raises into the response."""
    job, usage = run.job, run.usage
    price = state.prices.get(job.route.id)
    miss = usage.prompt_tokens - usage.cached_tokens
    cost = cost_nano_usd(price, usage.cached_tokens, miss, usage.completion_tokens) if price else 0
    row = UsageRow(request_id=job.request.request_id, key_id=job.key.key_id if job.key else None,
                   model=job.route.id, prompt_tokens=usage.prompt_tokens, cache_hit_tokens=usage.cached_tokens,
                   cache_miss_tokens=miss, completion_tokens=usage.completion_tokens,
                   reasoning_tokens=usage.reasoning_tokens, cost_nano=cost, status=status)
    try:
        if state.accounts is not None:
            state.accounts.record_usage(row)
        if state.metrics is not None:
            state.metrics.observe(run, status)
    except Exception:  # noqa: BLE001 - the answer must still reach the client; the log has it
        log.exception("could not record usage for %s", job.request.request_id)
