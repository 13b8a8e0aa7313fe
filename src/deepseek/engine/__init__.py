"""The inference engine: scheduler, paged cache, runner, sampler, detokenizer.

Offline use: `from deepseek.engine import LLM, SamplingParams`, then
`LLM(model_dir).generate(prompts, params)`. The server streams through `AsyncEngine`.
"""

from __future__ import annotations

import importlib

# Public name -> submodule. Imported on first use, so importing one submodule (the sampler, say)
# does not load the whole engine.
_EXPORTS = {
    "LLM": "llm", "Completion": "llm",
    "SamplingParams": "sampler",
    "AsyncEngine": "async_engine", "EngineDeadError": "async_engine",
    "EngineConfig": "engine", "LLMEngine": "engine",
    "Request": "request", "RequestOutput": "request",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'deepseek.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
