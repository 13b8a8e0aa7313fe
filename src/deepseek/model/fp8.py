"""Block FP8 (e4m3) quantization: the checkpoint's weight format and the reference's activations.

* Weights: `W` e4m3 `[out, in]` with `weight_scale_inv` fp32 `[ceil(out/128), ceil(in/128)]`.
  Despite its name the scale is multiplied: `W_real[i, j] = W[i, j] · scale_inv[i//128, j//128]`.
  Ragged edges (a 576-row weight) have a full scale row of their own.
* Activations: one scale per contiguous group of 128 values along the last dim (spec §8.3),
  a power of two when `scale_fmt == "ue8m0"`.

CPU has no usable FP8 GEMM (spec ecosystem §1), so FP8 here is storage: we quantize, store, and
dequantize to the compute dtype.
"""

from __future__ import annotations

import torch

from . import kernels

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
BLOCK = 128


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def scale_grid_shape(shape: tuple[int, ...], block: int = BLOCK) -> tuple[int, int]:
    """Shape of `weight_scale_inv` for a 2-D weight of `shape`."""
    out_features, in_features = shape
    return _ceil_div(out_features, block), _ceil_div(in_features, block)


def _pow2_ceil(s: torch.Tensor) -> torch.Tensor:
    """Round positive (normal fp32) scales up to a power of two, the UE8M0 scale format: exactly,
    on the bits (a nonzero mantissa carries into the exponent), where exp2(ceil(log2(s))) can
    miss by one for s just above a power of two."""
    return ((s.float().view(torch.int32) + 0x7FFFFF) & 0x7F800000).view(torch.float32)


def _blocked(w: torch.Tensor, block: int) -> tuple[torch.Tensor, int, int]:
    """Zero-pad a 2-D tensor to whole blocks and view it as [rows, block, cols, block]."""
    n, k = w.shape
    rows, cols = _ceil_div(n, block), _ceil_div(k, block)
    padded = torch.zeros(rows * block, cols * block, dtype=torch.float32, device=w.device)
    padded[:n, :k] = w
    return padded.view(rows, block, cols, block), n, k


def quantize_weight(w: torch.Tensor, scale_fmt: str | None = "ue8m0",
                    block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16/fp32 `[out, in]` -> (e4m3 weight `[out, in]`, fp32 scale_inv `[ceil(out/b), ceil(in/b)]`)."""
    blocks, n, k = _blocked(w.float(), block)
    amax = blocks.abs().amax(dim=(1, 3)).clamp_min(1e-4)
    scale = amax / FP8_MAX
    if scale_fmt == "ue8m0":
        scale = _pow2_ceil(scale)
    q = (blocks / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    q = q.view(blocks.shape[0] * block, blocks.shape[2] * block)[:n, :k].contiguous()
    return q, scale.contiguous()


def dequantize_weight(w: torch.Tensor, scale_inv: torch.Tensor, dtype: torch.dtype = torch.bfloat16,
                      block: int = BLOCK) -> torch.Tensor:
    """e4m3 `[out, in]` + scale_inv -> `dtype` `[out, in]`; works for ragged shapes."""
    n, k = w.shape
    if tuple(scale_inv.shape) != scale_grid_shape((n, k), block):
        raise ValueError(f"scale_inv shape {tuple(scale_inv.shape)} does not match weight {(n, k)}: "
                         f"expected {scale_grid_shape((n, k), block)}")
    out = torch.empty(n, k, dtype=dtype, device=w.device)
    # One row band at a time keeps the fp32 temporary to 128 rows of the weight.
    for r in range(scale_inv.shape[0]):
        rows = slice(r * block, min((r + 1) * block, n))
        band = w[rows].float()
        s = scale_inv[r].float().repeat_interleave(block)[:k]
        out[rows] = (band * s).to(dtype)
    return out


def quantize_activation(x: torch.Tensor, scale_fmt: str | None = "ue8m0",
                        block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """`act_quant`: x [..., K] (K % block == 0) -> (e4m3 [..., K], fp32 scales [..., K/block])."""
    k = x.shape[-1]
    if k % block:
        raise ValueError(f"activation width {k} is not a multiple of {block}")
    groups = x.float().reshape(*x.shape[:-1], k // block, block)
    scale = groups.abs().amax(dim=-1).clamp_min(1e-4) / FP8_MAX
    if scale_fmt == "ue8m0":
        scale = _pow2_ceil(scale)
    q = (groups / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q.reshape(x.shape), scale


def dequantize_activation(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype,
                          block: int = BLOCK) -> torch.Tensor:
    groups = q.float().reshape(*q.shape[:-1], q.shape[-1] // block, block)
    return (groups * scale[..., None]).reshape(q.shape).to(dtype)


def fake_quantize_activation(x: torch.Tensor, scale_fmt: str | None = "ue8m0") -> torch.Tensor:
    """Quantize then dequantize: the value an FP8 cache or FP8 GEMM input would really hold.

    The same bits as `dequantize_activation(*quantize_activation(x, scale_fmt), x.dtype)`, without
    FP8 tensors: torch's CPU casts to and from e4m3 convert one element at a time (~3 ns each, the
    slowest part of a prefill), where `round_to_e4m3` is a few vectorised (and fusable) ops."""
    k = x.shape[-1]
    if k % BLOCK:
        raise ValueError(f"activation width {k} is not a multiple of {BLOCK}")
    if kernels.eager(x):
        return kernels.fp8_round_trip(x, scale_fmt == "ue8m0")        # one native pass, the same bits
    groups = x.float().reshape(*x.shape[:-1], k // BLOCK, BLOCK)
    scale = groups.abs().amax(dim=-1).clamp_min(1e-4) / FP8_MAX
    if scale_fmt == "ue8m0":
        scale = _pow2_ceil(scale)
    q = round_to_e4m3((groups / scale[..., None]).clamp(-FP8_MAX, FP8_MAX))
    return (q * scale[..., None]).reshape(x.shape).to(x.dtype)


def round_to_e4m3(v: torch.Tensor) -> torch.Tensor:
    """Finite fp32 values within ±448 rounded to the nearest e4m3 value (ties to even), as fp32:
    exactly `v.to(torch.float8_e4m3fn).float()`. e4m3's spacing at |v| in [2^e, 2^(e+1)) is
    Q = 2^(e-3), and 2^-9 below 2^-6 (its subnormals); adding M = 1.5·2^23·Q puts |v| + M where
    fp32's own spacing is Q, so that one addition rounds |v| to a multiple of Q, ties to even, and
    subtracting M again is exact. Integer and float ops only, no masks: they vectorise and fuse."""
    exponent = (v.view(torch.int32) >> 23) & 0xFF                           # biased, of |v|
    magic = ((((exponent - 3).clamp_min(127 - 9) + 23) << 23) | (1 << 22)).view(torch.float32)
    return ((v.abs() + magic) - magic).copysign(v)
