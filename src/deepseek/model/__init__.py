"""The DeepSeek-V3.2 model in PyTorch: MLA + DSA lightning indexer, DeepSeekMoE, FP8 weights, YaRN, MTP.

Files follow the paper: config, rope, fp8, layers, mla (+ indexer), moe, block, mtp, transformer;
then loader and checkpoint for the official Hugging Face format.
"""

from .cache import ContiguousCache, ForwardBatch, KVCache
from .config import ConfigError, ModelConfig
from .loader import CheckpointError
from .transformer import Transformer

__all__ = ["CheckpointError", "ConfigError", "ContiguousCache", "ForwardBatch", "KVCache",
           "ModelConfig", "Transformer"]
