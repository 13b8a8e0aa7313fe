"""`deepseek compare --models A B --prompts FILE`: run every prompt on two models and compare.

Prints a table (prompt, similarity, latency A/B, tokens A/B, cost A/B), writes the full log (JSON
lines) and a markdown report with a summary and a plot. Against `deepseek serve`,
`--models deepseek-v3 deepseek-v3.2` compares dense and sparse attention on the same weights.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from deepseek.client._args import add_client_arguments

    p.add_argument("--models", nargs=2, required=True, metavar=("A", "B"), help="the two model ids")
    p.add_argument("--prompts", type=Path, required=True, metavar="FILE",
                   help='one prompt per line: text, or JSON {"prompt": ...} / {"messages": [...]}')
    p.add_argument("--report", type=Path, default=Path("report.md"),
                   help="markdown report; the plot goes next to it as .png (default: report.md)")
    p.add_argument("--log", type=Path, default=None,
                   help="full log, one JSON line per prompt (default: the report's name + .jsonl)")
    p.add_argument("--max-tokens", type=int, default=256, help="per answer (default: 256)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="default 0: greedy, so the two sides differ by model only")
    p.add_argument("--concurrency", type=int, default=1,
                   help="prompts in flight at once (default 1: latencies are not skewed by each other)")
    add_client_arguments(p, prices=True)


def run(args: argparse.Namespace) -> int:
    from deepseek.client._args import client_from_args, prices_from_args
    from deepseek.client.compare import read_prompts, run_compare, summarize, write_log
    from deepseek.client.compare_report import format_table, summary_lines, write_report

    models = tuple(args.models)
    if models[0] == models[1]:
        raise ValueError("--models needs two different model ids")
    prompts = read_prompts(args.prompts)
    if not prompts:
        raise ValueError(f"{args.prompts}: no prompts")
    prices = prices_from_args(args)
    params = {"max_tokens": args.max_tokens, "temperature": args.temperature}
    log_path = args.log or args.report.with_suffix(".jsonl")

    def on_row(row):
        print(f"compare: prompt {row.prompt.index + 1}/{len(prompts)} done", file=sys.stderr)

    client = client_from_args(args, asynchronous=True)

    async def main():
        async with client:
            return await run_compare(client, models, prompts, params, prices, args.concurrency, on_row)

    rows = asyncio.run(main())
    summary = summarize(rows, models)
    for path in (log_path, args.report):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_log(rows, log_path)
    write_report(rows, summary, args.report, log_path)
    print(format_table(rows))
    print()
    print("\n".join(line.removeprefix("- ") for line in summary_lines(summary)))
    print(f"report: {args.report}  log: {log_path}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="deepseek compare", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
