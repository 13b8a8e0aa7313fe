"""DeepSeekMoE: auxiliary-loss-free ("noaux_tc") group-limited routing, routed + shared experts (spec §9).

Routing, per token:
1. scores = sigmoid(x · W_gate), in fp32;
2. the correction bias is added for *selection only*;
3. groups are ranked by the sum of their top-2 biased scores; only the best `topk_group` stay;
4. the top `num_experts_per_tok` experts of the surviving groups are chosen;
5. their unbiased scores are renormalised and multiplied by `routed_scaling_factor`.

Tokens are gathered per active expert, so an expert only ever sees the tokens routed to it.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .layers import MLP


class Gate(nn.Module):
    """HF names: `mlp.gate.weight` [E, D] and `mlp.gate.e_score_correction_bias` [E], both fp32 here."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.n_group, self.topk_group = config.n_group, config.topk_group
        self.norm_topk_prob = config.norm_topk_prob
        self.route_scale = config.routed_scaling_factor
        e = config.n_routed_experts
        self.weight = nn.Parameter(torch.empty(e, config.hidden_size, dtype=torch.float32))
        self.e_score_correction_bias = nn.Parameter(torch.zeros(e, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [N, D] -> (weights [N, top_k] fp32, expert ids [N, top_k] int64)."""
        scores = (x.float() @ self.weight.float().t()).sigmoid()                 # [N, E]
        biased = scores + self.e_score_correction_bias.float()
        n, e = biased.shape
        if self.n_group > 1:
            groups = biased.view(n, self.n_group, e // self.n_group)
            group_scores = groups.topk(2, dim=-1).values.sum(dim=-1)           # [N, G]
            keep = group_scores.topk(self.topk_group, dim=-1).indices
            group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
            biased = groups.masked_fill(~group_mask[..., None], float("-inf")).view(n, e)
        ids = biased.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, ids)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.route_scale, ids


class MoE(nn.Module):
    """HF names: `mlp.gate`, `mlp.experts.{e}.{gate,up,down}_proj`, `mlp.shared_experts.*`."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype | None = None):
        super().__init__()
        d, inter = config.hidden_size, config.moe_intermediate_size
        self.gate = Gate(config)
        self.experts = nn.ModuleList(MLP(d, inter, dtype) for _ in range(config.n_routed_experts))
        self.shared_experts = (MLP(d, inter * config.n_shared_experts, dtype)
                               if config.n_shared_experts else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, D] -> [N, D]; expert outputs are accumulated in fp32."""
        weights, ids = self.gate(x)
        y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        counts = torch.bincount(ids.flatten(), minlength=len(self.experts)).tolist()
        for e, count in enumerate(counts):
            if count == 0:
                continue
            token, slot = torch.where(ids == e)
            y.index_add_(0, token, self.experts[e](x[token]).float() * weights[token, slot, None])
        if self.shared_experts is not None:
            y += self.shared_experts(x).float()
        return y.to(x.dtype)
