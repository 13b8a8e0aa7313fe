"""The config: the official 671B config.json parses, has the published size, and bad configs are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from deepseek.model import ConfigError, ModelConfig, Transformer
from deepseek.model.presets import preset_config

OFFICIAL = Path(__file__).parent / "data" / "deepseek_v32_config.json"


def count_params(config: ModelConfig) -> tuple[int, int]:
    """(main model, MTP) parameter counts, on the meta device (no memory)."""
    with torch.device("meta"):
        model = Transformer(config)
    total = sum(p.numel() for p in model.parameters())
    mtp = sum(p.numel() for layer in model.mtp_layers for p in layer.parameters())
    return total - mtp, mtp


def test_official_671b_config_parses_every_key():
    config = ModelConfig.from_file(OFFICIAL)
    assert config.model_type == "deepseek_v32" and config.has_indexer
    assert (config.index_n_heads, config.index_head_dim, config.index_topk) == (64, 128, 2048)
    assert config.rope_scaling.factor == 40 and config.rope_scaling.original_max_position_embeddings == 4096
    assert config.quantization_config.scale_fmt == "ue8m0"
    assert config.quantization_config.weight_block_size == (128, 128)
    assert config.qk_head_dim == 192 and config.is_moe_layer(3) and not config.is_moe_layer(2)


def test_671b_has_the_published_parameter_count():
    main, mtp = count_params(ModelConfig.from_file(OFFICIAL))
    print(f"\n671B config: main model {main / 1e9:.3f}B, MTP {mtp / 1e9:.3f}B, total {(main + mtp) / 1e9:.3f}B")
    assert abs(main - 671e9) / 671e9 < 0.01
    assert abs(main + mtp - 685e9) / 685e9 < 0.01  # DeepSeek publishes 685B including the MTP module


def test_config_round_trips_through_its_dict():
    config = ModelConfig.from_file(OFFICIAL)
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_v3_config_without_indexer_runs_dense_only():
    raw = preset_config("tiny")
    for key in ("index_n_heads", "index_head_dim", "index_topk"):
        raw.pop(key)
    raw["model_type"] = "deepseek_v3"
    config = ModelConfig.from_dict(raw)
    assert not config.has_indexer
    with pytest.raises(ValueError, match="no lightning indexer"):
        Transformer(config, attention="sparse")
    Transformer(config, attention="dense")


@pytest.mark.parametrize("change, message", [
    ({"n_routed_experts": 10, "n_group": 4}, "n_group"),
    ({"topk_group": 3}, "topk_group"),
    ({"num_experts_per_tok": 5}, "num_experts_per_tok"),
    ({"index_head_dim": 96}, "index_head_dim"),
    ({"qk_rope_head_dim": 63}, "qk_rope_head_dim"),
    ({"first_k_dense_replace": 9}, "first_k_dense_replace"),
    ({"topk_method": "greedy"}, "topk_method"),
    ({"scoring_func": "softmax"}, "scoring_func"),
    ({"rope_scaling": {"type": "linear", "factor": 2}}, "rope_scaling"),
    ({"quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [64, 64]}},
     "weight_block_size"),
    ({"eos_token_id": 5000}, "eos_token_id"),
    ({"q_lora_rank": None}, "q_lora_rank"),
    ({"hidden_size": "big"}, "hidden_size"),
])
def test_inconsistent_configs_are_refused_with_the_key_named(change, message):
    raw = {**preset_config("tiny"), **change}
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(raw)


def test_missing_or_broken_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        ModelConfig.from_file(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_file(tmp_path)


def test_config_is_frozen():
    config = ModelConfig.from_file(OFFICIAL)
    with pytest.raises(AttributeError):
        config.index_topk = 1
