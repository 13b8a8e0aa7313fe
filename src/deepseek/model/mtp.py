"""Multi-Token Prediction: one extra decoder layer that predicts token t+2 (spec §11).

Stored as decoder layer `num_hidden_layers` (61 in the 671B checkpoint). For main-model hidden state
`h_i` (final-normed, as vLLM passes it) and the embedding of the next token `t_{i+1}`:

    z = eh_proj([enorm(embed(t_{i+1})), hnorm(h_i)])     # order: embedding first
    z = DecoderLayer(z)                                    # its own MLA, indexer and MoE
    logits = shared_head.head(shared_head.norm(z))         # predicts t_{i+2}

The embedding at position 0 is zeroed (vLLM). The layer keeps its own copies of `embed_tokens` and
`shared_head.head`, because the checkpoint carries them. Speculative decoding uses it later.
"""

from __future__ import annotations

import torch
from torch import nn

from .block import DecoderLayer
from .cache import ForwardBatch
from .config import ModelConfig
from .layers import Linear, RMSNorm


class SharedHead(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.head = Linear(config.hidden_size, config.vocab_size, quantized=False, dtype=torch.float32)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # [N, D] -> [N, V] fp32
        return self.head.fp32(self.norm(z))


class MTPLayer(DecoderLayer):
    """HF names: `model.layers.{n}.{enorm, hnorm, eh_proj, embed_tokens, shared_head.*}` plus a layer."""

    def __init__(self, config: ModelConfig, layer_id: int, dtype: torch.dtype | None = None):
        super().__init__(config, layer_id, dtype)
        d = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, d, dtype=dtype)
        self.enorm = RMSNorm(d, config.rms_norm_eps)
        self.hnorm = RMSNorm(d, config.rms_norm_eps)
        self.eh_proj = Linear(2 * d, d, quantized=False, dtype=dtype)
        self.shared_head = SharedHead(config)

    def predict(self, hidden: torch.Tensor, next_tokens: torch.Tensor, positions: torch.Tensor,
                batch: ForwardBatch, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """hidden: [N, D] main-model states, next_tokens: [N] -> logits for the token after, [N, V] fp32."""
        e = self.embed_tokens(next_tokens).masked_fill((positions == 0)[:, None], 0)
        z = self.eh_proj(torch.cat((self.enorm(e), self.hnorm(hidden.to(e.dtype))), dim=-1))
        return self.shared_head(super().forward(z, batch, cos, sin))
