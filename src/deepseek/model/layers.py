"""Small building blocks shared by every mechanism: norms, the (optionally FP8-resident) linear, the MLP.

`Linear.quantized` marks the weights that the official checkpoint stores as block FP8 (spec §10).
By default the loader dequantizes them once to the compute dtype (CPU has no usable FP8 GEMM); with
`fp8_resident=True` the weight stays e4m3 with its `weight_scale_inv` and is dequantized per call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .fp8 import FP8, dequantize_weight


class RMSNorm(nn.Module):
    """`w ⊙ x / sqrt(mean(x²) + eps)` in fp32, cast back to the input dtype. Weight held in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native and kernels.eager(x):
            return kernels.rms_norm(x, self.weight, self.eps)       # one pass, where torch takes seven
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight, self.eps).to(x.dtype)

    # Set by `prepare_inference` on CPU where the kernels built.
    native = False

    def prepare_inference(self) -> None:
        self.native = self.weight.device.type == "cpu" and self.weight.dtype == torch.float32 and kernels.available()


class LayerNorm(nn.Module):
    """LayerNorm with weight and bias, fp32 compute (the indexer's k_norm; not an RMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        self.bias = nn.Parameter(torch.zeros(dim, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.float(), (x.shape[-1],), self.weight.float(), self.bias.float(), self.eps)
        return y.to(x.dtype)


def column_major(t: torch.Tensor) -> torch.Tensor:
    """`t` [..., out, in] with each matrix stored column-major on CPU (see `Linear.prepare_inference`);
    elsewhere `t` itself."""
    return t.transpose(-1, -2).contiguous().transpose(-1, -2) if t.device.type == "cpu" else t


class Linear(nn.Module):
    """y = x Wᵀ with W `[out, in]`. `weight_scale_inv` exists only while the weight is FP8-resident."""

    def __init__(self, in_features: int, out_features: int, quantized: bool = True,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.quantized = quantized
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype))
        self.weight_scale_inv: nn.Parameter | None = None
        # Set by `prepare_inference`: no-grad calls go through `kernels.small_linear`, and bf16 ones
        # through `kernels.packed_matmul` over `pairs`, the weight packed for the pair products.
        self.small_gemm = False
        self.pairs: torch.Tensor | None = None

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        w = self.weight
        if w.dtype == FP8:
            return dequantize_weight(w, self.weight_scale_inv, dtype)
        return w if w.dtype == dtype else w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pairs is not None and x.dtype == torch.bfloat16 and not torch.is_grad_enabled():
            return kernels.packed_linear(x, self.pairs)
        if self.small_gemm and x.dtype in (self.weight.dtype, torch.float32) and not torch.is_grad_enabled():
            return kernels.small_linear(x, self.weight)      # fp32 x and a bf16-held weight: fp32 products
        return F.linear(x, self.dequantized_weight(x.dtype))

    def fp32(self, x: torch.Tensor) -> torch.Tensor:
        """`fp32(x) @ fp32(W)ᵀ`, as the reference computes the LM head. A bf16 x with a bf16-held
        weight goes to the kernel as is: the products of bf16 values are exact in fp32 either way."""
        if self.pairs is not None and x.dtype == torch.bfloat16 and not torch.is_grad_enabled():
            return kernels.packed_linear(x, self.pairs, torch.float32)
        if self.small_gemm and x.dtype == self.weight.dtype == torch.bfloat16 and not torch.is_grad_enabled():
            return kernels.small_linear(x, self.weight, torch.float32)
        return self(x.float())

    def prepare_inference(self) -> None:
        """On CPU, hold the weight column-major: the same `[out, in]` tensor, with `in` rows of
        `out` values in memory. `x Wᵀ` is then a plain GEMM over a row-major `[in, out]` matrix,
        which for a few rows of x runs about 1.5x faster here than the transposed form (decode steps
        stream every weight from memory). FP8-resident weights, and views already laid out so
        (packed experts), are left alone. Where the native kernel builds, no-grad calls then run
        `kernels.small_linear`, which is faster still for a few rows and at::mm's GEMM for many;
        an fp32 weight whose values are all bf16 (a bf16 checkpoint tensor that the reference
        computes in fp32, like the LM head) is then held as bf16: half the bytes to stream, and the
        kernel widens it back exactly, so the fp32 products are the same. A bf16 weight is also
        packed for the CPU's bf16 pair products where it has them (`kernels.pack`, a second copy of
        the weight): bf16 calls of any batch then run `kernels.packed_matmul`, 1.3-2.5x faster."""
        w = self.weight
        with torch.no_grad():
            if w.dtype != FP8 and w.stride(0) != 1:
                w.data = column_major(w.data)
            if kernels.usable(w) and w.dtype == torch.float32 and torch.equal(w.bfloat16().float(), w):
                w.data = column_major(w.data.bfloat16())
        self.small_gemm = kernels.usable(self.weight)
        self.pairs = kernels.pack(self.weight.t()) if self.small_gemm else None

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, quantized={self.quantized}"


def fused_pairs(linears: list[Linear]) -> torch.Tensor | None:
    """One packed matrix (`kernels.pack`) for prepared Linears that read the same input: their
    outputs side by side, each column the same sum as its own Linear's, in one call instead of
    several. Each Linear's own packed copy is dropped (direct calls take `small_linear`, whose bits
    agree for up to 32 rows). None unless every one of them holds packed weights."""
    if any(linear.pairs is None for linear in linears):
        return None
    fused = kernels.pack(torch.cat([linear.weight for linear in linears]).t())
    if fused is not None:
        for linear in linears:
            linear.pairs = None
    return fused


def run_fused(x: torch.Tensor, fused: torch.Tensor | None, linears: list[Linear]) -> list[torch.Tensor]:
    """Each Linear's output for x, through `fused` (from `fused_pairs`) where it applies."""
    if fused is not None and x.dtype == torch.bfloat16 and not torch.is_grad_enabled():
        return list(kernels.packed_linear(x, fused).split([linear.out_features for linear in linears], dim=-1))
    return [linear(x) for linear in linears]


class MLP(nn.Module):
    """SwiGLU feed-forward: `down(silu(gate(x)) · up(x))`, the product taken in fp32 (spec §9.2)."""

    def __init__(self, dim: int, inter_dim: int, dtype: torch.dtype | None = None):
        super().__init__()
        self.gate_proj = Linear(dim, inter_dim, dtype=dtype)
        self.up_proj = Linear(dim, inter_dim, dtype=dtype)
        self.down_proj = Linear(inter_dim, dim, dtype=dtype)

    gate_up: torch.Tensor | None = None       # set by `fuse`: gate and up as one packed product

    def fuse(self) -> None:
        """After `Linear.prepare_inference`: gate and up in one product (`fused_pairs`)."""
        self.gate_up = fused_pairs([self.gate_proj, self.up_proj])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, dim] -> [N, dim]
        gate, up = run_fused(x, self.gate_up, [self.gate_proj, self.up_proj])
        h = F.silu(gate.float()) * up.float()
        return self.down_proj(h.to(x.dtype))
