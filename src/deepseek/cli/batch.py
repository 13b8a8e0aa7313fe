"""`deepseek batch IN.jsonl -o OUT.jsonl --concurrency N`: run a file of chat requests.

Results are written in input order, one JSON line per request; a failed request is recorded and
the run goes on. Interrupt it at any time (Ctrl-C finishes the requests in flight; a second Ctrl-C
stops at once) and run the same command again: requests already in OUT are skipped. Ends with a
summary of tokens, cost (deepseek.pricing, or --prices) and failures.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from deepseek.client._args import add_client_arguments

    p.add_argument("input", type=Path, metavar="IN.jsonl",
                   help='one request per line: {"model": ..., "messages": [...]} or {"custom_id": ..., "body": {...}}')
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.jsonl",
                   help="results, in input order; an existing file is resumed")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default: 8)")
    p.add_argument("--model", default=None, help="model for requests that do not name one")
    add_client_arguments(p, prices=True)


class _Progress:
    """tqdm when it is installed (the `serve` extra has it); else a plain counter on stderr."""

    def __init__(self, total: int):
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="req", desc="batch", file=sys.stderr)
        except ImportError:
            self.bar = None
        self.total, self.n = total, 0

    def __call__(self, n: int) -> None:
        if not n:
            return
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        else:
            print(f"\rbatch: {self.n}/{self.total}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            print(file=sys.stderr)


def print_summary(summary, out: Path) -> None:
    t = summary.tracker.totals()
    print(f"batch: {summary.succeeded} succeeded, {summary.failed} failed of {summary.total} "
          f"({summary.skipped} already done) -> {out}", file=sys.stderr)
    print(f"tokens: prompt {t.prompt_tokens} (cache hit {t.cache_hit_tokens}, miss {t.cache_miss_tokens}), "
          f"completion {t.completion_tokens} (reasoning {t.reasoning_tokens})", file=sys.stderr)
    unpriced = f" (no price for {', '.join(sorted(summary.tracker.unpriced))})" if summary.tracker.unpriced else ""
    print(f"cost: ${t.cost_usd}{unpriced}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from deepseek.client._args import client_from_args, prices_from_args
    from deepseek.client.batch import read_done, read_items, run_batch, summarize

    items = read_items(args.input, args.model)
    prices = prices_from_args(args)
    client = client_from_args(args, asynchronous=True)
    progress = _Progress(len(items))

    async def main():
        # Ctrl-C: take no new item, finish and write those in flight (a cancelled request could be
        # swallowed by the HTTP client's retries, and the run would go on). A second one cancels.
        stop, task, loop = asyncio.Event(), asyncio.current_task(), asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, lambda: task.cancel() if stop.is_set() else stop.set())
        async with client:
            summary = await run_batch(client, items, args.output, args.concurrency, prices, progress, stop)
        if stop.is_set():
            raise KeyboardInterrupt
        return summary

    try:
        summary = asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        progress.close()
        print(f"batch: interrupted with {len(read_done(args.output))}/{len(items)} written; "
              "run the same command again to resume", file=sys.stderr)
        print_summary(summarize(args.output, len(items), prices=prices), args.output)
        return 130
    progress.close()
    print_summary(summary, args.output)
    return 1 if summary.failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="deepseek batch", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
