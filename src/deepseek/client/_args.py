"""Command-line options shared by the SDK's subcommands (`deepseek chat`, `batch`, `compare`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._constants import API_KEY_ENV, BASE_URL_ENV, DEFAULT_BASE_URL, DEFAULT_MAX_RETRIES


def add_client_arguments(p: argparse.ArgumentParser, prices: bool = False) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--base-url", default=None,
                   help=f"API base URL (default: ${BASE_URL_ENV} or {DEFAULT_BASE_URL}); "
                        "e.g. http://127.0.0.1:8000 for `deepseek serve`")
    g.add_argument("--api-key", default=None, help=f"API key (default: ${API_KEY_ENV})")
    g.add_argument("--max-retries", type=int, default=DEFAULT_MAX_RETRIES,
                   help=f"retries per request on 429, 5xx and connection errors (default: {DEFAULT_MAX_RETRIES})")
    g.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default: 600)")
    if prices:
        g.add_argument("--prices", type=Path, default=None, metavar="FILE",
                       help="JSON price table overriding deepseek.pricing (same format as `serve --prices`)")


def client_from_args(args: argparse.Namespace, asynchronous: bool = False):
    from . import AsyncDeepSeek, DeepSeek, MissingAPIKeyError

    cls = AsyncDeepSeek if asynchronous else DeepSeek
    try:
        return cls(api_key=args.api_key, base_url=args.base_url, max_retries=args.max_retries,
                   timeout=args.timeout)
    except MissingAPIKeyError as e:
        # `deepseek` reports a ValueError as one line on stderr (exit 2) instead of a traceback.
        raise ValueError(str(e).replace("pass api_key=... to the client", "pass --api-key")) from None


def prices_from_args(args: argparse.Namespace) -> dict:
    from deepseek.pricing import DEFAULT_PRICES, load_prices

    return load_prices(args.prices) if getattr(args, "prices", None) else dict(DEFAULT_PRICES)
