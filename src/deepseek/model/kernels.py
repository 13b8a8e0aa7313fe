"""Our native kernels: the few-row products and the latent attention of CPU decode steps (`csrc/`).

A decode step multiplies a handful of rows (one per running sequence) by every weight matrix and
by each sequence's cached attention rows. For that shape the BLAS calls torch makes are slow: a
bf16 GEMM with one row costs about 3x its fp32 twin, and one with 8 rows about 4x one with 1 row,
though both read the weight once. `small_gemm` (x @ W) and `small_gemm_nt` (x @ Wᵀ) read each
matrix once per 4 rows with AVX-512, widening bf16 on the fly, and sum in fp32 in a fixed order, so
a row's result is the same whatever else shares its batch. bf16 x bf16 products use the CPU's bf16
pair dot products where it has them (`bf16_dot`). `latent_attention` runs MLA's decode attention
over the paged cache rows where they lie, `sketch_bounds` the indexer's long-context scan over its
int8 key sketch (AVX512-VNNI), `hadamard` the indexer's rotation (butterflies, as the reference's
fast_hadamard_transform), and `argmax` the sampler's greedy pick. They are built
with OpenMP and share a call's work among torch's threads when it is big enough to pay for waking
them, without changing the order of any sum.

`Linear.prepare_inference`, `MLA.prepare_inference` and the packed MoE experts switch to them. They
are compiled from source on first use (torch's C++ extension builder, about 20 s, then cached under
~/.cache/torch_extensions) on CPUs with AVX-512 and a C++ compiler. Anywhere else, or with
`DEEPSEEK_KERNELS=0`, `available()` is False and the model keeps to torch's ops.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import sys
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
SOURCES = [CSRC / "small_gemm.cpp", CSRC / "latent_attention.cpp", CSRC / "argmax.cpp", CSRC / "key_sketch.cpp",
           CSRC / "fp8_round_trip.cpp", CSRC / "rms_norm.cpp", CSRC / "rope.cpp", CSRC / "hadamard.cpp"]
FLAGS = ["-O3", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma"]


def _source_digest() -> str:
    """A digest of every file under csrc/: torch's builder rehashes the .cpp files it compiles, not
    the headers they include, so the digest goes into the flags (a changed header rebuilds)."""
    digest = hashlib.sha256()
    for f in sorted(CSRC.iterdir()):
        digest.update(f.name.encode() + f.read_bytes())
    return digest.hexdigest()[:16]


@functools.cache
def available() -> bool:
    """Whether `small_gemm` can run here; builds (or loads the cached build of) the extension once."""
    if os.environ.get("DEEPSEEK_KERNELS", "1") == "0":
        return False
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    path = os.environ.get("PATH", "")
    # The `ninja` that pip installs beside this interpreter is found even in a venv not activated.
    os.environ["PATH"] = os.pathsep.join(p for p in (path, str(Path(sys.executable).parent)) if p)
    try:
        from torch.utils.cpp_extension import load

        load(name="deepseek_small_gemm", sources=[str(f) for f in SOURCES],
             extra_cflags=[*FLAGS, f"-DDEEPSEEK_CSRC={_source_digest()}"], is_python_module=False)
    except Exception as e:  # no compiler, no ninja, a read-only cache: the model still runs, on torch's ops
        log.warning("the small-GEMM kernels did not build (%s); decode products use torch's", e)
        return False
    finally:
        os.environ["PATH"] = path

    @torch.library.register_fake("deepseek_kernels::small_gemm")
    def _(x, wt):
        return x.new_empty(*x.shape[:-1], wt.shape[-1])

    @torch.library.register_fake("deepseek_kernels::small_gemm_fp32")
    def _(x, wt):
        return x.new_empty(*x.shape[:-1], wt.shape[-1], dtype=torch.float32)

    @torch.library.register_fake("deepseek_kernels::small_gemm_nt")
    def _(x, w):
        return x.new_empty(*x.shape[:-1], w.shape[-2])

    @torch.library.register_fake("deepseek_kernels::packed_gemm")
    def _(x, wp):
        return x.new_empty(*x.shape[:-1], wp.shape[-4] * wp.shape[-2])

    @torch.library.register_fake("deepseek_kernels::packed_gemm_fp32")
    def _(x, wp):
        return x.new_empty(*x.shape[:-1], wp.shape[-4] * wp.shape[-2], dtype=torch.float32)

    @torch.library.register_fake("deepseek_kernels::moe_experts")
    def _(x, weights, ids, gate_up, down):
        return x.new_empty(x.shape, dtype=torch.float32)

    @torch.library.register_fake("deepseek_kernels::argmax_rows")
    def _(x):
        return x.new_empty(x.shape[0], dtype=torch.int64)

    @torch.library.register_fake("deepseek_kernels::latent_attention")
    def _(q_lat, q_pe, latent, k_pe, slots, visible, scale):
        return q_lat.new_empty(q_lat.shape, dtype=latent.dtype)

    @torch.library.register_fake("deepseek_kernels::rope")
    def _(x, cos, sin, interleaved):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("deepseek_kernels::rms_norm")
    def _(x, weight, eps):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("deepseek_kernels::hadamard")
    def _(x):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("deepseek_kernels::fp8_round_trip")
    def _(x, ue8m0):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("deepseek_kernels::key_sketch")
    def _(keys):
        n = keys.shape[0]
        return (keys.new_empty(keys.shape, dtype=torch.int8), keys.new_empty(n, dtype=torch.bfloat16),
                keys.new_empty(n, dtype=torch.float32))

    @torch.library.register_fake("deepseek_kernels::sketch_bounds")
    def _(rows, scale, residual, slots, q, w, key_norm):
        return residual.new_empty(2, slots.shape[0])

    return True


def eager(x: torch.Tensor) -> bool:
    """Whether a one-pass kernel (`fp8_round_trip`, `rms_norm`, `rope`) takes an op on x: CPU fp32
    or bf16, outside autograd (training keeps torch's ops) and compiled graphs (which fuse torch's
    own), with the kernels built."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling() and available())


def small_linear(x: torch.Tensor, weight: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """`F.linear(x, weight)` for a CPU `weight` [N, K] held column-major (`layers.column_major`), with
    x [..., K] of the weight's dtype (float32 or bfloat16). The result has x's dtype, or `out_dtype`
    float32: bf16 x and weight then give fp32 sums of the exact products, unrounded. Only after
    `available()` returned True."""
    return matmul(x.reshape(-1, x.shape[-1]), weight.t(), out_dtype).view(*x.shape[:-1], weight.shape[0])


def packed_linear(x: torch.Tensor, pairs: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """`small_linear` for bf16 x [..., K] with the weight as `pack(weight.t())`."""
    y = packed_matmul(x.reshape(-1, x.shape[-1]), pairs, out_dtype)
    return y.view(*x.shape[:-1], y.shape[-1])


def matmul(x: torch.Tensor, wt: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """`x @ wt` for x [M, K] / [B, M, K] and wt [K, N] / [B, K, N] whose rows are contiguous, fp32
    or bf16 alike; the result has x's dtype, or `out_dtype` float32. Only after `available()`
    returned True."""
    if out_dtype not in (None, x.dtype, torch.float32):
        raise ValueError(f"small_gemm: the result is in x's dtype or float32, not {out_dtype}")
    if out_dtype == torch.float32:
        return torch.ops.deepseek_kernels.small_gemm_fp32(x, wt)
    return torch.ops.deepseek_kernels.small_gemm(x, wt)


def pack(wt: torch.Tensor) -> torch.Tensor | None:
    """`wt` [..., K, N] (bf16, e.g. a Linear weight's `.t()`) laid out for `packed_matmul`: tiles of W
    columns (64, 32 or 16, whichever divides N first), each a contiguous block of row pairs
    [..., N/W, ceil(K/2), W, 2] in which element [t, p, c, j] is wt[2p + j, tW + c] (0 past K).
    None where the kernel cannot use it: no bf16 pair products here, another dtype or device, or N
    not a multiple of 16."""
    k, n = wt.shape[-2:]
    if not (bf16_dot() and wt.dtype == torch.bfloat16 and wt.device.type == "cpu" and n and n % 16 == 0):
        return None
    w = next(w for w in (64, 32, 16) if n % w == 0)
    if k % 2:
        wt = torch.cat((wt, wt.new_zeros(*wt.shape[:-2], 1, n)), dim=-2)
    lead = wt.shape[:-2]
    tiles = wt.reshape(*lead, (k + 1) // 2, 2, n // w, w).movedim(-2, -4).movedim(-2, -1)
    return tiles.contiguous()


def packed_matmul(x: torch.Tensor, wp: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """`x @ wt` for bf16 x [M, K] / [B, M, K] (any number of rows) and `wp = pack(wt)`; the result in
    bf16, or `out_dtype` float32 (the exact products' fp32 sums, unrounded). The sums are those of
    `matmul`'s pair path for the same operands, bit for bit."""
    if out_dtype == torch.float32:
        return torch.ops.deepseek_kernels.packed_gemm_fp32(x, wp)
    if out_dtype not in (None, torch.bfloat16):
        raise ValueError(f"packed_gemm: the result is in bfloat16 or float32, not {out_dtype}")
    return torch.ops.deepseek_kernels.packed_gemm(x, wp)


def matmul_nt(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`x @ w^T` for x [M, K] / [B, M, K] and w [N, K] / [B, N, K] whose rows are contiguous (cached
    attention rows, say); otherwise as `matmul`."""
    return torch.ops.deepseek_kernels.small_gemm_nt(x, w)


def moe_experts(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, gate_up: torch.Tensor,
                down: torch.Tensor) -> torch.Tensor:
    """The routed experts' weighted sum, `moe.grouped_experts`' arithmetic in one native call:
    x [N, D]; weights [N, k] fp32 and ids [N, k] from the router; the packed, column-major
    gate_up [E, 2I, D] and down [E, D, I] in x's dtype, or (bf16 x) `pack(gate_up.transpose(1, 2))`
    and `pack(down.transpose(1, 2))` for the pair products -> [N, D] fp32."""
    return torch.ops.deepseek_kernels.moe_experts(x, weights, ids, gate_up, down)


def latent_attention(q_lat: torch.Tensor, q_pe: torch.Tensor, latent: torch.Tensor, k_pe: torch.Tensor,
                     slots: torch.Tensor, visible: torch.Tensor | None, scale: float) -> torch.Tensor:
    """MLA's absorbed decode attention over cached rows read in place: q_lat [B, H, R] and q_pe
    [B, H, Dr]; a layer's cache rows latent [S, R] and k_pe [S, Dr]; sequence b attends to the rows
    slots[b, t] [B, K] where visible[b, t] (None: all). Returns o_lat [B, H, R] in the cache's dtype:
    softmax(scale · (q_lat·c + q_pe·k_pe)) rounded to that dtype, times the latent rows, summed in fp32."""
    return torch.ops.deepseek_kernels.latent_attention(q_lat, q_pe, latent, k_pe, slots, visible, scale)


def sketch_bounds(rows: torch.Tensor, scale: torch.Tensor, residual: torch.Tensor, slots: torch.Tensor,
                  q: torch.Tensor, w: torch.Tensor, key_norm: float) -> torch.Tensor:
    """Lower and upper bounds [2, T] on the index scores of the T keys at `slots` [T] of a key
    sketch's storage (rows, scale, residual: see `indexer.KeySketch`), for the query q [Hi, Di] and
    head weights w [Hi] (fp32), given key_norm >= every key's L2 norm. The query is split into two
    int8 parts whose dot products with the sketch rows are exact integers; the bounds add what the
    sketch, the split and fp32 rounding can have lost (csrc/key_sketch.cpp has the analysis). Only
    where `int8_dot()`."""
    _require_int8_dot("sketch_bounds")
    return torch.ops.deepseek_kernels.sketch_bounds(rows, scale, residual, slots, q, w, key_norm)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """`rope.rotate_interleaved` (interleaved) or `rope.rotate_half_split` of CPU fp32 or bf16 x
    [N, ..., d] by fp32 cos, sin [N, d/2], in one pass: the same bits. Only after `available()`."""
    return torch.ops.deepseek_kernels.rope(x, cos, sin, interleaved)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`layers.RMSNorm` for CPU fp32 or bf16 x [..., D] and an fp32 weight [D]: one pass per row,
    fp32 math, the result in x's dtype. Only after `available()` returned True."""
    return torch.ops.deepseek_kernels.rms_norm(x, weight, eps)


def fp8_round_trip(x: torch.Tensor, ue8m0: bool) -> torch.Tensor:
    """`fp8.fake_quantize_activation(x)` for CPU fp32 or bf16 x [..., K], K a multiple of 128: the
    same bits in one pass. Only after `available()` returned True."""
    return torch.ops.deepseek_kernels.fp8_round_trip(x, ue8m0)


def hadamard(x: torch.Tensor) -> torch.Tensor:
    """`indexer.rotate_activation` of CPU fp32 or bf16 x [..., n] (n a power of two, 16 to 1024) as
    the reference computes it: log2(n) butterfly stages in fp32, then the n^-0.5 scale, the result
    in x's dtype. Only after `available()` returned True."""
    return torch.ops.deepseek_kernels.hadamard(x)


def key_sketch(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`indexer.sketch_rows` of keys [N, Di] (bf16, or fp32 rounded to bf16 first): int8 rows
    [N, Di], bf16 scales [N], fp32 residuals [N]. Only where `int8_dot()`."""
    _require_int8_dot("key_sketch")
    return torch.ops.deepseek_kernels.key_sketch(keys)


def store_key_sketch(keys: torch.Tensor, slots: torch.Tensor, rows: torch.Tensor, scale: torch.Tensor,
                     residual: torch.Tensor) -> None:
    """`key_sketch(keys)` written in place into a sketch's storage (`indexer.KeySketch`) at slots [N]:
    the same bits as `indexer.store_sketch`'s torch ops, in one call."""
    _require_int8_dot("store_key_sketch")
    torch.ops.deepseek_kernels.store_key_sketch(keys, slots, rows, scale, residual)


def screen_candidates(bounds: torch.Tensor, k: int) -> torch.Tensor:
    """The positions [C] (ascending) whose upper bound reaches a lower bound on the k-th best score,
    from bounds [2, T] fp32 (lower, upper): a superset of the true top-k. The floor is the k-th
    largest maximum of blocks of T // (8k) lower bounds (all T where blocks would hold fewer than 2)."""
    return torch.ops.deepseek_kernels.screen_candidates(bounds, k)


@functools.cache
def int8_dot() -> bool:
    """Whether the CPU has the int8 dot products `sketch_bounds` runs on (AVX512-VNNI)."""
    return available() and torch.ops.deepseek_kernels.int8_dot()


def _require_int8_dot(op: str) -> None:
    """Builds (or loads) the kernels if need be; refuses where the key-sketch ops cannot run. (A
    graph being compiled holds the ops already: its tracing does not check.)"""
    if not torch.compiler.is_compiling() and not int8_dot():
        raise RuntimeError(f"{op} needs the native kernels and a CPU with AVX512-VNNI")


def bf16_dot() -> bool:
    """Whether bf16 x bf16 products use the CPU's bf16 pair dot products (AVX512-BF16; off with
    `DEEPSEEK_BF16_DOT=0`): about 1.4x the fp32 multiply rate at 8 rows. Their sums round in another
    order than the fp32 path's, so they may differ from it in the last bit of a bf16 result."""
    return available() and torch.ops.deepseek_kernels.bf16_dot()


def usable(weight: torch.Tensor) -> bool:
    """Whether `small_linear` takes this weight: CPU, float32 or bfloat16, column-major, kernel built."""
    return (weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16)
            and weight.dim() == 2 and weight.stride(0) == 1 and available())


def argmax(x: torch.Tensor) -> torch.Tensor:
    """`x.argmax(-1)` for logits [B, V]: the kernel's for CPU fp32 rows where it built (the same
    indices, NaN and ties included), torch's otherwise."""
    if x.dim() == 2 and x.dtype == torch.float32 and x.device.type == "cpu" and x.shape[1] and x.stride(1) == 1 \
            and available():
        return torch.ops.deepseek_kernels.argmax_rows(x)
    return x.argmax(-1)
