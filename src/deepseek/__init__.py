"""deepseek: a self-hostable DeepSeek-V3.2 system.

The SDK is exported from here (`from deepseek import DeepSeek, AsyncDeepSeek`) and needs only the
base install. The model lives in `deepseek.model` (needs the `serve` extra: torch). This module
stays light: importing `deepseek` imports neither torch nor openai; the SDK names load on first use.
"""

__version__ = "0.1.0"

# name -> module that defines it, imported on first attribute access (PEP 562).
_LAZY = {name: "deepseek.client" for name in (
    "DeepSeek", "AsyncDeepSeek", "Backoff", "CostTracker", "DeepSeekError", "MissingAPIKeyError",
    "InsufficientBalanceError", "InsufficientSystemResourceError",
)}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'deepseek' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value     # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
