"""Entry point of the `deepseek` console script."""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand -> module in deepseek.cli. Modules load lazily so `deepseek --help` stays fast.
COMMANDS = {
    "init": "Write a random checkpoint in the official format.",
    "convert": "Re-encode a checkpoint as FP8 or bf16.",
    "generate": "Generate text from a checkpoint through the engine.",
    "serve": "Serve the DeepSeek API (chat, FIM, models, balance, metrics).",
    "keys": "Manage API keys: create, list, revoke, rotate.",
    "chat": "Chat in the terminal with a DeepSeek API (streaming, reasoning, tool calls).",
    "batch": "Run a JSONL file of chat requests concurrently; resumable, results in input order.",
    "compare": "Run prompts on two models; table, log and markdown report (similarity, latency, cost).",
    "usage": "Report tokens and cost from the server's ledger, by key, model or day.",
    "train": "Train the default model from scratch with the V3.2 recipe (resumable).",
    "eval": "Evaluate a checkpoint on held-out data: perplexity, sparse vs dense, FP8, tools, JSON, code.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepseek", description="A self-hostable DeepSeek-V3.2 system.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"deepseek.cli.{name}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (ValueError, FileNotFoundError) as e:
        print(f"deepseek {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
