"""`deepseek serve`: the DeepSeek API on uvicorn, with the bundled (or a given) model."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None, help="checkpoint folder (default: the bundled model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=int(os.environ.get("AIP_HTTP_PORT", 8000)),
                   help="port (default 8000, or AIP_HTTP_PORT on Vertex AI)")
    p.add_argument("--db", type=Path, default=os.environ.get("DEEPSEEK_DB"),
                   help="SQLite file for keys and the usage ledger (default ~/.deepseek/deepseek.db)")
    p.add_argument("--prices", type=Path, default=None, help="JSON file overriding the per-model prices")
    p.add_argument("--max-num-seqs", type=int, default=32, help="requests generated at once")
    p.add_argument("--max-waiting", type=int, default=256, help="queued requests before 503")
    p.add_argument("--cache-mb", type=int, default=256, help="KV + indexer cache budget")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16",
                   help="compute dtype: bf16 (the reference's, batch-invariant) or fp32 (faster for tiny models on CPU)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step (needs a C++ compiler; compiles for ~1 min at start-up)")
    p.add_argument("--keepalive-seconds", type=float, default=10.0,
                   help="send an SSE `: keep-alive` comment after this long without output")


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from deepseek.server.app import build_state, create_app
    from deepseek.server.state import ServerSettings

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = ServerSettings(model_dir=args.model, db_path=Path(args.db) if args.db else None,
                              prices_path=args.prices, max_waiting=args.max_waiting,
                              max_num_seqs=args.max_num_seqs, cache_bytes=args.cache_mb << 20,
                              threads=args.threads, keepalive_seconds=args.keepalive_seconds, dtype=args.dtype,
                              compile=args.compile)
    state = build_state(settings)
    app = create_app(state)
    if not state.accounts.has_keys():
        logging.getLogger("deepseek").warning(
            "no API keys in %s: open local mode, any client may call (create one with `deepseek keys create`)",
            settings.db_path or "~/.deepseek/deepseek.db")
    models = ", ".join(state.routes)
    print(f"DeepSeek API on http://{args.host}:{args.port}/v1 serving {models}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=30)
    return 0
