"""Rotary position embedding with YaRN frequencies (spec §6).

Two layouts rotate the same frequencies: MLA pairs neighbours `(x[2i], x[2i+1])` (interleaved);
the lightning indexer pairs halves `(x[i], x[i+d/2])` (half-split, NeoX). Mixing them up still
works at short range and silently breaks long context, so each has its own function.
Angles and rotations are computed in fp32 (as real pairs: `(a·cos − b·sin, a·sin + b·cos)`, which
compilers fuse) and the result cast back to the input dtype.
"""

from __future__ import annotations

import math

import torch

from . import kernels
from .config import ModelConfig


def yarn_correction_range(dim: int, base: float, original_len: int, beta_fast: float,
                          beta_slow: float) -> tuple[int, int]:
    """The pair indices [low, high] between which YaRN blends original and interpolated frequencies."""
    def corr(n_rot: float) -> float:
        return dim * math.log(original_len / (n_rot * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(corr(beta_fast)), 0)
    high = min(math.ceil(corr(beta_slow)), dim - 1)
    return low, high


def yarn_inv_freq(config: ModelConfig) -> torch.Tensor:
    """Per-pair angular frequencies f'_i, [qk_rope_head_dim // 2] fp32 (spec §6.1).

    YaRN is always applied when the config has it: the checkpoint was trained with it, whatever the
    runtime context length.
    """
    dim, base = config.qk_rope_head_dim, config.rope_theta
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    rs = config.rope_scaling
    if rs is None or rs.factor <= 1:
        return freqs.float()
    low, high = yarn_correction_range(dim, base, rs.original_max_position_embeddings,
                                      rs.beta_fast, rs.beta_slow)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp
    return (freqs / rs.factor * (1 - keep) + freqs * keep).float()


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of `positions ⊗ inv_freq`, each [N, dim/2] fp32."""
    angles = torch.outer(positions.to(torch.float32), inv_freq.to(positions.device))
    return angles.cos(), angles.sin()


def rotate_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """MLA layout. x: [N, ..., d]; cos/sin: [N, d/2]. Pairs are (x[2i], x[2i+1])."""
    if _native(x, cos):
        return kernels.rope(x, cos, sin, True)
    pairs = x.float().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    c, s = _broadcast(cos, a.dim()), _broadcast(sin, a.dim())
    return torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2).to(x.dtype)


def rotate_half_split(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Indexer layout. x: [N, ..., d]; cos/sin: [N, d/2]. Pairs are (x[i], x[i + d/2])."""
    if _native(x, cos):
        return kernels.rope(x, cos, sin, False)
    a, b = x.float().chunk(2, dim=-1)
    c, s = _broadcast(cos, a.dim()), _broadcast(sin, a.dim())
    return torch.cat((a * c - b * s, a * s + b * c), dim=-1).to(x.dtype)


def _native(x: torch.Tensor, cos: torch.Tensor) -> bool:
    """Whether the one-pass kernel (`kernels.rope`, the same bits) rotates x: CPU inference outside
    compiled graphs, where torch's expression is about fifteen ops."""
    return x.dim() >= 2 and cos.dtype == torch.float32 and kernels.eager(x)


def _broadcast(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """[N, d/2] -> [N, 1, ..., 1, d/2] so it broadcasts over the head dims of an ndim tensor."""
    return t.reshape(t.shape[0], *([1] * (ndim - 2)), t.shape[-1])
