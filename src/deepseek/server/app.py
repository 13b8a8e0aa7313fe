"""The FastAPI application: build the server state (model, engine, accounts) and mount the routes.

    state = build_state(ServerSettings(model_dir=...))
    app = create_app(state)

The request path: route -> schema validation, auth, limits -> `chat` encodes the prompt ->
`AsyncEngine.stream()` -> parser -> SSE chunks or one JSON body -> ledger row.
"""

from __future__ import annotations

import logging
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from deepseek import __version__

from .errors import install_handlers
from .routes import chat, completions, info, vertex
from .state import ServerSettings, ServerState

log = logging.getLogger(__name__)


class TraceIdMiddleware:
    """Adds `x-ds-trace-id` to every response, errors and streams included (pure ASGI: no buffering)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        trace = uuid.uuid4().hex.encode()

        async def send_with_trace(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-ds-trace-id", trace)]
            await send(message)

        await self.app(scope, receive, send_with_trace)


def create_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        state.engine.shutdown()   # after uvicorn has drained the requests in flight

    app = FastAPI(title="DeepSeek-compatible API", version=__version__, lifespan=lifespan)
    app.state.server = state
    install_handlers(app)
    for module in (chat, completions, info):
        app.include_router(module.router)
    app.include_router(vertex.make_router())
    app.add_middleware(TraceIdMiddleware)
    return app


def build_state(settings: ServerSettings) -> ServerState:
    import torch

    from deepseek.engine.async_engine import AsyncEngine
    from deepseek.engine.engine import EngineConfig, LLMEngine, freeze_startup_heap
    from deepseek.engine.grammar import GrammarCompiler
    from deepseek.pricing import DEFAULT_PRICES, load_prices

    from .accounts import Accounts
    from .idempotency import Idempotency
    from .limits import ConcurrencyLimiter, RateLimiter
    from .metrics import Metrics

    torch.set_num_threads(settings.threads)
    from deepseek.assets import default_model_dir

    model_dir = settings.model_dir or default_model_dir()
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[settings.dtype]
    engine = LLMEngine.from_pretrained(model_dir, EngineConfig(max_num_seqs=settings.max_num_seqs,
                                                               cache_bytes=settings.cache_bytes,
                                                               compile=settings.compile),
                                       dtype=dtype, progress=True)
    if settings.compile:
        engine.warm_up()
    config = engine.model.config
    precision = settings.dtype + ("_fp8_weights" if config.quantization_config is not None else "")
    async_engine = AsyncEngine(engine)
    prices = dict(DEFAULT_PRICES)
    if settings.prices_path is not None:
        prices = load_prices(settings.prices_path, prices)
    db = settings.db_path or Path.home() / ".deepseek" / "deepseek.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    state = ServerState(engine=async_engine, tokenizer=engine.tokenizer,
                        grammars=GrammarCompiler(engine.tokenizer, config.vocab_size, config.eos_token_id),
                        settings=settings, accounts=Accounts(db), prices=prices, precision=precision,
                        rate_limiter=RateLimiter(), concurrency=ConcurrencyLimiter())
    state.metrics = Metrics(async_engine)
    state.idempotency = Idempotency(state.accounts)
    freeze_startup_heap()
    return state
