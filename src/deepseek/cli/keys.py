"""`deepseek keys create|list|revoke|rotate`: manage the server's API keys in its SQLite file.

Safe to run while the server is up: both sides open the same WAL-mode database, and a revoked or
rotated secret takes effect on the server's next request. Secrets go to stdout alone (one line,
so `KEY=$(deepseek keys create --name ci)` works); everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_DB = "~/.deepseek/deepseek.db"


def default_db() -> Path:
    return Path(os.environ.get("DEEPSEEK_DB") or DEFAULT_DB).expanduser()


def add_arguments(p: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", type=Path, default=None,
                        help=f"SQLite file (default: $DEEPSEEK_DB or {DEFAULT_DB})")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = sub.add_parser("create", parents=[common], help="create a key and print its secret once")
    create.add_argument("--name", required=True)
    create.add_argument("--budget", default=None, metavar="USD", help="spending cap in USD (default: none)")
    create.add_argument("--rpm", type=int, default=None, help="requests per minute (default: no limit)")
    create.add_argument("--concurrency", type=int, default=None,
                        help="requests in flight at once (default: no limit)")
    create.add_argument("--expires-days", type=float, default=90.0,
                        help="secret lifetime in days; 0 = never expires (default: 90)")

    sub.add_parser("list", parents=[common], help="list keys with spend and status")

    revoke = sub.add_parser("revoke", parents=[common], help="revoke a key and all its secrets now")
    revoke.add_argument("name")

    rotate = sub.add_parser("rotate", parents=[common],
                        help="issue a new secret; the old one works until the grace period ends")
    rotate.add_argument("name")
    rotate.add_argument("--grace-hours", type=float, default=24.0)


def run(args: argparse.Namespace) -> int:
    from deepseek.server.accounts import Accounts

    with Accounts(args.db or default_db()) as accounts:
        if args.action == "create":
            info, secret = accounts.create_key(
                args.name, budget_usd=args.budget, rpm=args.rpm, concurrency=args.concurrency,
                expires_in_days=args.expires_days or None)
            _print_secret(f"created key {info.name!r} ({info.key_id})", secret)
        elif args.action == "rotate":
            info, secret = accounts.rotate(args.name, grace_seconds=args.grace_hours * 3600)
            _print_secret(f"rotated key {info.name!r} ({info.key_id}); the old secret works for "
                          f"{args.grace_hours:g} more hours", secret)
        elif args.action == "revoke":
            info = accounts.revoke(args.name)
            print(f"revoked key {info.name!r} ({info.key_id})", file=sys.stderr)
        else:
            _print_table(accounts)
    return 0


def _print_secret(summary: str, secret: str) -> None:
    print(summary, file=sys.stderr)
    print("Store this secret now: it is shown only once and cannot be recovered.", file=sys.stderr)
    print(secret)


def _when(ts: float | None) -> str:
    return "never" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M")


def _print_table(accounts) -> None:
    from deepseek.pricing import format_usd

    now = accounts.clock()
    header = ("NAME", "KEY_ID", "SECRET", "BUDGET", "SPENT", "RPM", "CONC", "EXPIRES (UTC)", "STATUS")
    rows = [header]
    for k in accounts.list_keys():
        rows.append((k.name, k.key_id, k.prefix + "...",
                     "-" if k.budget_nano is None else format_usd(k.budget_nano),
                     format_usd(accounts.spent_nano(k.key_id), places=4),
                     str(k.rpm or "-"), str(k.concurrency or "-"), _when(k.expires_at), k.status(now)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


def main(argv: list[str] | None = None) -> int:
    """`python -m deepseek.cli.keys ...`, for when the console script is not on PATH."""
    parser = argparse.ArgumentParser(prog="deepseek keys", description="Manage API keys.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as e:
        print(f"deepseek keys: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
