"""Files that ship inside the package: `nano/`, the default model `deepseek-v3.2-nano`."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

NANO = Path(__file__).resolve().parent / "nano"


def default_model_dir() -> Path:
    """The bundled nano model when the package ships one, else a tiny random checkpoint (made once)."""
    if (NANO / "config.json").exists():
        return NANO
    cache = Path.home() / ".cache" / "deepseek" / "tiny-random"
    if not (cache / "config.json").exists():
        from deepseek.cli.init import init_checkpoint
        init_checkpoint(cache, "tiny", seed=0)
    log.warning("no bundled model: using a tiny RANDOM checkpoint from %s (its answers are noise)", cache)
    return cache
