"""DeepSeekMoE: auxiliary-loss-free ("noaux_tc") group-limited routing, routed + shared experts (spec §9).

Routing, per token:
1. scores = sigmoid(x · W_gate), in fp32;
2. the correction bias is added for *selection only*;
3. groups are ranked by the sum of their top-2 biased scores; only the best `topk_group` stay;
4. the top `num_experts_per_tok` experts of the surviving groups are chosen;
5. their unbiased scores are renormalised and multiplied by `routed_scaling_factor`.

Tokens are gathered per active expert, so an expert only ever sees the tokens routed to it: either
one expert at a time, or, once `pack()` has restacked the experts' weights, over the (token, expert)
pairs sorted by expert, in one operator that `torch.compile` treats as opaque (its loop depends on
the routing). Both add each token's expert outputs in the same order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .config import ModelConfig
from .fp8 import FP8
from .layers import MLP, column_major


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

    native = False      # set by `MoE.pack` on CPU: the scores run the native few-row kernel

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [N, D] -> (weights [N, top_k] fp32, expert ids [N, top_k] int64)."""
        if self.native and not torch.is_grad_enabled():
            scores = kernels.matmul_nt(x.float(), self.weight).sigmoid()         # [N, E]
        else:
            scores = (x.float() @ self.weight.float().t()).sigmoid()
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


# Up to this many tokens (decode batches, short prompts), packed CPU experts run as one native call;
# beyond it (long prefill chunks) `grouped_experts`' per-expert BLAS GEMMs are faster. (Experts packed
# for the bf16 pair products take the native call at any count.)
NATIVE_MAX_TOKENS = 256


class MoE(nn.Module):
    """HF names: `mlp.gate`, `mlp.experts.{e}.{gate,up,down}_proj`, `mlp.shared_experts.*`."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype | None = None):
        super().__init__()
        d, inter = config.hidden_size, config.moe_intermediate_size
        self.gate = Gate(config)
        self.experts = nn.ModuleList(MLP(d, inter, dtype) for _ in range(config.n_routed_experts))
        self.shared_experts = (MLP(d, inter * config.n_shared_experts, dtype)
                               if config.n_shared_experts else None)

    packed: tuple[torch.Tensor, torch.Tensor] | None = None     # (gate_up, down), set by `pack`
    native = False      # set by `pack`: small batches run `kernels.moe_experts`
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None      # the same, packed for bf16 pair products

    def pack(self) -> bool:
        """Restack the routed experts as `[E, 2I, D]` (gate rows, then up rows) and `[E, D, I]`, and
        make every expert's weights views of them: no extra memory, and `forward` then runs
        `grouped_experts` (one gate+up GEMM per active expert; opaque to `torch.compile`). On CPU
        each expert's matrices are column-major, as `Linear.prepare_inference` lays out the others.
        FP8-resident experts are left as they are (returns False)."""
        if self.packed is not None:
            return True
        first = self.experts[0].gate_proj.weight
        if first.dtype == FP8 or first.device.type == "meta":
            return False
        inter = first.shape[0]
        gate_up = column_major(torch.stack([torch.cat((e.gate_proj.weight, e.up_proj.weight)) for e in self.experts]))
        down = column_major(torch.stack([e.down_proj.weight for e in self.experts]))
        for i, e in enumerate(self.experts):
            e.gate_proj.weight = nn.Parameter(gate_up[i, :inter], requires_grad=False)
            e.up_proj.weight = nn.Parameter(gate_up[i, inter:], requires_grad=False)
            e.down_proj.weight = nn.Parameter(down[i], requires_grad=False)
        self.packed = (gate_up, down)
        self.native = kernels.usable(gate_up[0])
        if self.native and inter % 2 == 0:     # bf16 pair products: each expert's matrices packed for them
            pairs = kernels.pack(gate_up.transpose(1, 2)), kernels.pack(down.transpose(1, 2))
            self.pairs = pairs if None not in pairs else None
        self.gate.native = self.native and self.gate.weight.dtype == torch.float32
        return True

    def fuse(self) -> None:
        """After `Linear.prepare_inference`: the routed experts run from `pairs`, so their own
        Linears keep no packed copy; the shared expert's gate and up run as one product."""
        if self.pairs is not None:
            for expert in self.experts:
                for linear in (expert.gate_proj, expert.up_proj, expert.down_proj):
                    linear.pairs = None
        if self.shared_experts is not None:
            self.shared_experts.fuse()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, D] -> [N, D]; expert outputs are accumulated in fp32."""
        weights, ids = self.gate(x)
        if self.packed is None:
            y = self._looped(x, weights, ids)
        elif self.pairs is not None and x.dtype == torch.bfloat16 and not torch.is_grad_enabled():
            y = kernels.moe_experts(x, weights, ids, *self.pairs)       # any number of tokens
        elif self.native and x.shape[0] <= NATIVE_MAX_TOKENS and not torch.is_grad_enabled():
            y = kernels.moe_experts(x, weights, ids, *self.packed)
        else:
            y = grouped_experts(x, weights, ids, *self.packed)
        if self.shared_experts is not None:
            y += self.shared_experts(x).float()
        return y.to(x.dtype)

    def _looped(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        counts = torch.bincount(ids.flatten(), minlength=len(self.experts)).tolist()
        for e, count in enumerate(counts):
            if count == 0:
                continue
            token, slot = torch.where(ids == e)
            y.index_add_(0, token, self.experts[e](x[token]).float() * weights[token, slot, None])
        return y


# An opaque operator to `torch.compile`: how many tokens each expert gets is data-dependent.
@torch.library.custom_op("deepseek::grouped_experts", mutates_args=())
def grouped_experts(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, gate_up: torch.Tensor,
                    down: torch.Tensor) -> torch.Tensor:
    """`MoE._looped`'s sum, over the (token, expert) pairs sorted by expert: x [N, D], weights and
    ids [N, k], gate_up [E, 2I, D], down [E, D, I] -> [N, D] fp32. One fused gate+up GEMM and one
    down GEMM per active expert (the native few-row kernel where it applies), and a single
    scatter-add at the end."""
    linear = kernels.small_linear if kernels.usable(gate_up[0]) and x.dtype == gate_up.dtype else F.linear
    if x.shape[0] == 1:     # one token (a batch-1 decode step): the same sums, without sort or scatter
        y = None
        for e, slot in sorted(zip(ids[0].tolist(), range(ids.shape[1]))):
            g, u = linear(x, gate_up[e]).float().chunk(2, dim=-1)
            h = linear((F.silu(g) * u).to(x.dtype), down[e]).float() * weights[0, slot]
            y = h if y is None else y.add_(h)
        return y
    pairs = ids.flatten()
    order = pairs.argsort(stable=True)                    # by expert, then token: _looped's order
    token = order // ids.shape[1]
    rows = x[token]
    outputs = []
    for e, (start, count) in _segments(torch.bincount(pairs, minlength=gate_up.shape[0]).tolist()):
        g, u = linear(rows[start:start + count], gate_up[e]).float().chunk(2, dim=-1)
        outputs.append(linear((F.silu(g) * u).to(x.dtype), down[e]))
    h = torch.cat(outputs).float() * weights.flatten()[order, None]
    return torch.zeros(x.shape, dtype=torch.float32, device=x.device).index_add_(0, token, h)


def _segments(counts: list[int]):
    """(expert, (first row, rows)) of every expert that has rows, in expert order."""
    start = 0
    for e, count in enumerate(counts):
        if count:
            yield e, (start, count)
        start += count


@grouped_experts.register_fake
def _(x, weights, ids, gate_up, down):
    return x.new_empty(x.shape, dtype=torch.float32)
