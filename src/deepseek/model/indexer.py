"""The lightning indexer of DeepSeek Sparse Attention (spec §8.1, final V3.2 reference).

For query token s and cached token t it scores

    I[s, t] = Σ_h  w[s, h] · ReLU(q[s, h] · k[t])          (paper eq. 1)

with `Hi` small heads over the q-LoRA latent, ONE shared key head, and head weights
`w = weights_proj(x) · Hi^-0.5 · Di^-0.5` that may be negative. ReLU comes before the weights.
q and k get half-split RoPE on their first `qk_rope_head_dim` dims (rope part first, the opposite of
MLA), a Hadamard rotation, and an FP8 (ue8m0) round trip, so their dot products are the ones the
reference's FP8 kernel computes. Each query then attends only to its `index_topk` best keys.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .config import ModelConfig
from .fp8 import fake_quantize_activation
from .layers import LayerNorm, Linear
from .rope import rotate_half_split

# Query rows per scoring chunk are sized so one chunk's [rows, Hi, T] logits stay near this many floats.
_SCORE_BUDGET = 1 << 24


@functools.lru_cache(maxsize=8)
def hadamard_matrix(n: int, device: str = "cpu") -> torch.Tensor:
    """Sylvester-ordered ±1 Walsh-Hadamard matrix `H_n` scaled by `n^-0.5` (orthonormal), fp32."""
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return (h * n ** -0.5).to(device)


def rotate_activation(x: torch.Tensor) -> torch.Tensor:
    """Hadamard rotation over the last dim, fp32 compute, cast back (spec §8.2)."""
    h = hadamard_matrix(x.shape[-1], str(x.device))
    return (x.float() @ h).to(x.dtype)


class Indexer(nn.Module):
    """HF names: `self_attn.indexer.{wq_b, wk, k_norm, weights_proj}`."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype | None = None):
        super().__init__()
        self.n_heads = config.index_n_heads
        self.head_dim = config.index_head_dim
        self.rope_dim = config.qk_rope_head_dim
        self.index_topk = config.index_topk
        q = config.quantization_config
        self.scale_fmt = q.scale_fmt if q is not None else "ue8m0"
        self.wq_b = Linear(config.q_lora_rank, self.n_heads * self.head_dim, dtype=dtype)
        self.wk = Linear(config.hidden_size, self.head_dim, dtype=dtype)
        self.k_norm = LayerNorm(self.head_dim)
        # Held in fp32 and applied to fp32 input (final reference); not FP8 in the checkpoint.
        self.weights_proj = Linear(config.hidden_size, self.n_heads, quantized=False, dtype=torch.float32)

    def _rope_rotate_quantize(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """[N, ..., Di]: half-split RoPE on the first rope_dim dims, Hadamard, FP8 round trip."""
        pe = rotate_half_split(x[..., :self.rope_dim], cos, sin)
        x = torch.cat((pe, x[..., self.rope_dim:]), dim=-1)
        return fake_quantize_activation(rotate_activation(x), self.scale_fmt)

    def keys(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The cacheable key of every token. x: [N, D] -> [N, Di]. Caches keep them in fp32 (the
        values are FP8-exact either way) so the O(T) scan reads them without a conversion."""
        return self._rope_rotate_quantize(self.k_norm(self.wk(x)), cos, sin)

    def scores(self, x: torch.Tensor, qr: torch.Tensor, keys: torch.Tensor, start: int,
               cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Index scores of S queries of one sequence against its T cached keys.

        x: [S, D], qr: [S, q_lora_rank], keys: [T, Di] -> I: [S, T] fp32, −inf where t > start + s.
        """
        s_len, t_len = x.shape[0], keys.shape[0]
        q = self.wq_b(qr).view(s_len, self.n_heads, self.head_dim)
        q = self._rope_rotate_quantize(q, cos, sin).float()                      # [S, Hi, Di]
        w = self.weights_proj(x.float()) * (self.n_heads ** -0.5 * self.head_dim ** -0.5)  # [S, Hi]
        k_t = keys.float().t()                                                    # [Di, T]; a view if fp32
        out = torch.empty(s_len, t_len, dtype=torch.float32, device=x.device)
        rows = max(1, _SCORE_BUDGET // max(1, self.n_heads * t_len))
        for r in range(0, s_len, rows):
            n = min(rows, s_len - r)
            # One contiguous GEMM for every (query, head) pair, ReLU, then the head-weighted sum.
            logits = torch.mm(q[r:r + n].reshape(n * self.n_heads, self.head_dim), k_t).relu_()
            out[r:r + n] = torch.bmm(w[r:r + n].unsqueeze(1), logits.view(n, self.n_heads, t_len)).squeeze(1)
        causal = torch.arange(t_len, device=x.device)[None, :] > (start + torch.arange(s_len, device=x.device))[:, None]
        return out.masked_fill_(causal, float("-inf"))

    def select(self, x: torch.Tensor, qr: torch.Tensor, keys: torch.Tensor, start: int,
               cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Top-k key positions per query, [S, min(index_topk, T)] int64, ascending.

        Early prefill rows have fewer than k visible keys; their surplus picks are future positions
        (score −inf), which the attention's causal mask removes again (spec §8.5).
        """
        return topk_positions(self.scores(x, qr, keys, start, cos, sin), min(self.index_topk, keys.shape[0]))


def topk_positions(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k best columns of each row of `scores` [S, T], ties broken towards later positions.

    Exact ties are common: a key whose every head logit is negative scores exactly 0 after ReLU.
    `torch.topk` breaks ties arbitrarily (and differently for different T), which would make a
    decode step pick other keys than a full forward. Here: every key strictly above the k-th best
    value, then the most recent keys tied with it.
    """
    kth = scores.topk(k, dim=-1).values.amin(dim=-1, keepdim=True)          # [S, 1]
    above = scores > kth
    ties = scores == kth
    missing = k - above.sum(dim=-1, keepdim=True)
    # Rank ties from the right, so the latest tied positions are taken first.
    tie_rank = ties.flip(-1).cumsum(-1).flip(-1)
    chosen = above | (ties & (tie_rank <= missing))
    return chosen.nonzero()[:, 1].view(scores.shape[0], k)
