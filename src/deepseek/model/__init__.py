"""The DeepSeek-V3.2 model in PyTorch: MLA + DSA lightning indexer, DeepSeekMoE, FP8 weights, YaRN, MTP.

Files follow the paper: config, rope, fp8, layers, mla (+ indexer), moe, block, mtp, transformer;
then loader and checkpoint for the official Hugging Face format. Exports load lazily, so torch-free
modules such as `presets` and `config` can be imported without paying for torch.
"""

import importlib

_EXPORTS = {
    "CheckpointError": "loader", "ConfigError": "config", "ContiguousCache": "cache",
    "ForwardBatch": "cache", "KVCache": "cache", "ModelConfig": "config", "Transformer": "transformer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
