"""Named model shapes for `deepseek init --preset NAME`: config.json dicts in the official format.

* `tiny`  — spec §15: every mechanism on, FP8 block constraints met, index_topk 64 so tests cover
  both regimes (context below and above it). About 5M parameters.
* `peer`  — the 9.2M-parameter tiny V3 shape peers run on CPU (vLLM's CPU MLA needs kv_lora 512,
  rope 64), plus an indexer; used to compare throughput with HF transformers.
* `nano`  — the shipped default model `deepseek-v3.2-nano` (trained by `deepseek train --recipe nano`):
  the `tiny` shape with a 4096-entry BPE, trained at 1024 tokens with index_topk 128 (1/8 of it).
* `bench` — weights dominate the step time at short context; ~270M parameters (with MTP),
  index_topk 2048, indexer heads = attention heads / 2 and YaRN to 160K like the real model.
  Used by the memory and context-scaling benchmarks.
* `671b`  — the official DeepSeek-V3.2 config.json (spec §2). Only for meta-device inspection.
"""

from __future__ import annotations

import copy

FP8_QUANTIZATION_CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
          "scale_fmt": "ue8m0", "weight_block_size": [128, 128]}

_COMMON = {
    "architectures": ["DeepseekV32ForCausalLM"], "model_type": "deepseek_v32",
    "num_nextn_predict_layers": 1, "moe_layer_freq": 1, "n_shared_experts": 1,
    "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
    "routed_scaling_factor": 2.5, "ep_size": 1, "hidden_act": "silu", "rms_norm_eps": 1e-6,
    "rope_theta": 10000, "attention_bias": False, "attention_dropout": 0.0,
    "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "bfloat16",
    "initializer_range": 0.02, "use_cache": True, "quantization_config": FP8_QUANTIZATION_CONFIG,
}

PRESETS: dict[str, dict] = {
    "tiny": {
        "vocab_size": 1024, "hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 128,
        "num_hidden_layers": 4, "first_k_dense_replace": 1,
        "num_attention_heads": 4, "num_key_value_heads": 4, "q_lora_rank": 128, "kv_lora_rank": 128,
        "qk_nope_head_dim": 64, "qk_rope_head_dim": 64, "v_head_dim": 64,
        "n_routed_experts": 8, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
        "index_n_heads": 4, "index_head_dim": 128, "index_topk": 64,
        "max_position_embeddings": 1024,
        "rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 256,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    },
    "peer": {
        "vocab_size": 4096, "hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 128,
        "num_hidden_layers": 4, "first_k_dense_replace": 1,
        "num_attention_heads": 4, "num_key_value_heads": 4, "q_lora_rank": 64, "kv_lora_rank": 512,
        "qk_nope_head_dim": 32, "qk_rope_head_dim": 64, "v_head_dim": 32,
        "n_routed_experts": 8, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
        "index_n_heads": 4, "index_head_dim": 128, "index_topk": 64,
        "max_position_embeddings": 4096,
        "rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 1024,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    },
    "nano": {
        "vocab_size": 4096, "hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 128,
        "num_hidden_layers": 4, "first_k_dense_replace": 1,
        "num_attention_heads": 4, "num_key_value_heads": 4, "q_lora_rank": 128, "kv_lora_rank": 128,
        "qk_nope_head_dim": 64, "qk_rope_head_dim": 64, "v_head_dim": 64,
        "n_routed_experts": 8, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
        "index_n_heads": 4, "index_head_dim": 128, "index_topk": 128,
        "max_position_embeddings": 4096,
        "rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 1024,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    },
    "bench": {
        "vocab_size": 16384, "hidden_size": 1024, "intermediate_size": 2816, "moe_intermediate_size": 512,
        "num_hidden_layers": 6, "first_k_dense_replace": 1,
        "num_attention_heads": 8, "num_key_value_heads": 8, "q_lora_rank": 512, "kv_lora_rank": 512,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "n_routed_experts": 16, "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2,
        # Half as many indexer heads as attention heads, as in the real model (64 vs 128).
        "index_n_heads": 4, "index_head_dim": 128, "index_topk": 2048,
        "max_position_embeddings": 163840,
        "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    },
    "671b": {
        "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
        "num_hidden_layers": 61, "first_k_dense_replace": 3,
        "num_attention_heads": 128, "num_key_value_heads": 128, "q_lora_rank": 1536, "kv_lora_rank": 512,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "n_routed_experts": 256, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4,
        "index_n_heads": 64, "index_head_dim": 128, "index_topk": 2048,
        "max_position_embeddings": 163840, "transformers_version": "4.44.2",
        "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    },
}


def preset_config(name: str) -> dict:
    """A fresh config.json dict for a preset (callers may edit their copy)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return copy.deepcopy({**_COMMON, **PRESETS[name]})
