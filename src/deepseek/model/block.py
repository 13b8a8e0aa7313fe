"""One decoder layer: pre-norm MLA (with the indexer) then a dense MLP or a MoE (spec §4, §9.1)."""

from __future__ import annotations

import torch
from torch import nn

from .cache import DecodeRows, ForwardBatch
from .config import ModelConfig
from .layers import MLP, RMSNorm
from .mla import MLA
from .moe import MoE


class DecoderLayer(nn.Module):
    """HF names: `model.layers.{i}.{input_layernorm, self_attn, post_attention_layernorm, mlp}`."""

    def __init__(self, config: ModelConfig, layer_id: int, dtype: torch.dtype | None = None):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MLA(config, layer_id, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = (MoE(config, dtype) if config.is_moe_layer(layer_id)
                    else MLP(config.hidden_size, config.intermediate_size, dtype))

    def forward(self, h: torch.Tensor, batch: ForwardBatch, cos: torch.Tensor,
                sin: torch.Tensor) -> torch.Tensor:
        """h: [N, D] residual stream -> [N, D]. A bf16 add rounds once, like the reference's fp32 add."""
        h = h + self.self_attn(self.input_layernorm(h), batch, cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))

    def decode(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rows: DecodeRows) -> torch.Tensor:
        """`forward` for a dense decode step whose cache indices are all tensors (`MLA.decode`)."""
        h = h + self.self_attn.decode(self.input_layernorm(h), cos, sin, rows)
        return h + self.mlp(self.post_attention_layernorm(h))
