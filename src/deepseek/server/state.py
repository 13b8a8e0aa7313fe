"""What the server holds while it runs: the engine, the tokenizer, grammars, accounts and settings.

One checkpoint serves four model ids (issue: "Model ids from one loaded checkpoint"):
`deepseek-v3.2` (DSA, the default), `deepseek-chat` (the same, non-thinking), `deepseek-reasoner`
(thinking) and `deepseek-v3` (dense MLA on the same weights, for migration A/B tests).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from deepseek import __version__

from .errors import APIError


@dataclass(frozen=True)
class ModelRoute:
    id: str
    sparse: bool
    thinking: bool
    max_tokens_default: int
    max_tokens_limit: int


ROUTES = (
    ModelRoute("deepseek-v3.2", sparse=True, thinking=False, max_tokens_default=4096, max_tokens_limit=8192),
    ModelRoute("deepseek-chat", sparse=True, thinking=False, max_tokens_default=4096, max_tokens_limit=8192),
    ModelRoute("deepseek-reasoner", sparse=True, thinking=True, max_tokens_default=32768,
               max_tokens_limit=65536),
    ModelRoute("deepseek-v3", sparse=False, thinking=False, max_tokens_default=4096, max_tokens_limit=8192),
)


@dataclass(frozen=True)
class ServerSettings:
    model_dir: Path | None = None
    db_path: Path | None = None
    prices_path: Path | None = None
    max_waiting: int = 256               # queued requests beyond this get 503 + Retry-After
    keepalive_seconds: float = 10.0      # SSE `: keep-alive` comments while a request waits
    max_num_seqs: int = 32
    cache_bytes: int = 256 << 20
    threads: int = 1
    dtype: str = "bf16"
    compile: bool = False                # torch.compile the dense decode step (compiled at start-up)


@dataclass
class ServerState:
    engine: object                        # AsyncEngine
    tokenizer: object
    grammars: object                      # GrammarCompiler
    settings: ServerSettings
    accounts: object | None = None        # Accounts, or None for open local mode
    metrics: object | None = None
    rate_limiter: object | None = None
    concurrency: object | None = None
    idempotency: object | None = None
    prices: dict = field(default_factory=dict)
    precision: str = "bf16"
    started: float = field(default_factory=time.time)

    @property
    def routes(self) -> dict[str, ModelRoute]:
        has_indexer = self.engine.engine.model.config.has_indexer
        return {r.id: r for r in ROUTES if has_indexer or not r.sparse}

    @property
    def fingerprint(self) -> str:
        """Names the build and its numerics, like DeepSeek's `fp_..._fp8_kvcache`."""
        return f"fp_deepseek-py-{__version__}_{self.precision}"

    def route(self, model: str) -> ModelRoute:
        route = self.routes.get(model)
        if route is None:
            raise APIError(400, f"Model Not Exist: {model!r}. Available models: {', '.join(self.routes)}",
                           param="model", code="model_not_found")
        return route

    def encode(self, text: str, param: str) -> tuple[int, ...]:
        """Prompt text -> token ids; text that is not valid Unicode (a lone surrogate) is a 400."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise APIError(400, f"{param} contains text that is not valid UTF-8 (a lone surrogate?): {e.reason}",
                           param) from e
        return tuple(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def token_id(self, text: str) -> int | None:
        return self.tokenizer.token_to_id(text)
