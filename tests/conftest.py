"""Shared fixtures: tiny configs, random tiny models and checkpoints the tests build themselves."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_config():
    from deepseek.model import ModelConfig
    from deepseek.model.presets import preset_config

    return ModelConfig.from_dict(preset_config("tiny"))


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    """Random tiny V3.2 model in fp32 (so comparisons are limited by fp32 round-off only)."""
    from deepseek.model import Transformer
    from deepseek.model.checkpoint import init_random_weights

    return init_random_weights(Transformer(tiny_config, dtype=torch.float32), seed=0).eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """`deepseek init --preset tiny --shards 2` into a temporary folder (FP8, official layout)."""
    from deepseek.cli.init import init_checkpoint

    return init_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny", seed=0, shards=2)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_checkpoint):
    from deepseek.tokenizer import load_tokenizer

    return load_tokenizer(tiny_checkpoint)


@pytest.fixture
def make_engine(tiny_model, tiny_tokenizer):
    """An engine over the shared fp32 tiny model, with a fresh cache per call."""
    from deepseek.engine.engine import EngineConfig, LLMEngine

    def make(**config):
        return LLMEngine(tiny_model, tiny_tokenizer, EngineConfig(**config))

    return make
