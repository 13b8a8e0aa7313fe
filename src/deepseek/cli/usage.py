"""`deepseek usage [--by key|model|day] [--since WHEN] [--db FILE]`: spend from the server's ledger.

Reads the SQLite file `deepseek serve --db` writes (safe while the server runs: WAL readers never
block it) and prints one row per key, model or UTC day, then the totals. Costs are the ledger's own
integers (nano-dollars), so the total is exactly the sum of the rows.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
COLUMNS = ("requests", "prompt_tokens", "cache_hit_tokens", "cache_miss_tokens", "completion_tokens",
           "reasoning_tokens")


def parse_since(text: str, now: float | None = None) -> float:
    """Epoch seconds from "7d" / "12h" / "30m" (ago), an ISO date or datetime (UTC if naive)."""
    m = _RELATIVE.match(text.strip())
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _SECONDS[m.group(2)]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: use e.g. 7d, 12h, 2026-01-31 or 2026-01-31T08:00") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def add_arguments(p: argparse.ArgumentParser) -> None:
    from deepseek.cli.keys import DEFAULT_DB

    p.add_argument("--by", choices=("key", "model", "day"), default="key", help="group rows by (default: key)")
    p.add_argument("--since", default=None, metavar="WHEN",
                   help="only requests since WHEN: 7d, 12h, 30m, or an ISO date/time in UTC")
    p.add_argument("--db", type=Path, default=None, metavar="FILE",
                   help=f"the server's SQLite file (default: $DEEPSEEK_DB or {DEFAULT_DB})")
    p.add_argument("--json", action="store_true", help="print JSON (rows and total) instead of a table")


def report(db: Path, by: str, since: float | None):
    """(rows, total) from the ledger; the total is the sum of the rows (all of them when since is None)."""
    from deepseek.server.accounts import Accounts, ReportRow

    if not db.exists():
        raise FileNotFoundError(f"no ledger at {db} (see `deepseek serve --db`)")
    with Accounts(db) as accounts:
        rows = accounts.usage_report(by, since)
    sums = [sum(getattr(r, c) for r in rows) for c in (*COLUMNS, "cost_nano")]
    return rows, ReportRow("total", *sums)


def _as_dict(row) -> dict:
    return {"group": row.group, **{c: getattr(row, c) for c in COLUMNS}, "cost_nano": row.cost_nano,
            "cost_usd": row.cost_usd}


def _print_table(rows, total, by: str) -> None:
    header = (by, "requests", "prompt", "cache hit", "cache miss", "completion", "reasoning", "cost USD")
    cells = [header] + [(r.group, *(str(getattr(r, c)) for c in COLUMNS), r.cost_usd) for r in [*rows, total]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
    print(fmt(cells[0]))
    for row in cells[1:-1]:
        print(fmt(row))
    print("  ".join("-" * w for w in widths))
    print(fmt(cells[-1]))


def run(args: argparse.Namespace) -> int:
    from deepseek.cli.keys import default_db

    since = parse_since(args.since) if args.since else None
    rows, total = report(args.db or default_db(), args.by, since)
    if args.json:
        print(json.dumps({"by": args.by, "since": since, "rows": [_as_dict(r) for r in rows],
                          "total": _as_dict(total)}, indent=2))
    else:
        _print_table(rows, total, args.by)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="deepseek usage", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
