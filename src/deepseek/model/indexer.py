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
from typing import NamedTuple

import torch
from torch import nn

from . import kernels
from .config import ModelConfig
from .fp8 import fake_quantize_activation
from .layers import LayerNorm, Linear
from .rope import rotate_half_split

# Query rows per scoring chunk are sized so one chunk's [rows, Hi, T] logits stay near this many floats.
_SCORE_BUDGET = 1 << 24


@functools.lru_cache(maxsize=8)
def hadamard_matrix(n: int, device: str = "cpu") -> torch.Tensor:
    """Sylvester-ordered ±1 Walsh-Hadamard matrix `H_n` scaled by `n^-0.5` (orthonormal), fp32."""
    # A normal tensor even when first asked for under inference_mode: training reuses the cache.
    with torch.inference_mode(False):
        h = torch.ones(1, 1)
        while h.shape[0] < n:
            h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
        return (h * n ** -0.5).to(device)


def rotate_activation(x: torch.Tensor, h: torch.Tensor | None = None, native: bool = False) -> torch.Tensor:
    """Hadamard rotation over the last dim, fp32 compute, cast back (spec §8.2). `h`: the matrix, if
    the caller holds it already; `native` (CPU, no grad): the native butterfly kernel instead of the
    matrix product, n log n additions where the product takes n^2 (rounding may differ in the last
    fp32 bit)."""
    if native and not torch.is_grad_enabled():
        return kernels.hadamard(x)
    if h is None:
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
        return fake_quantize_activation(rotate_activation(x, self.hadamard, self.native), self.scale_fmt)

    # Set by `prepare_inference`: the Hadamard matrix, held here so compiled code needs no cache
    # lookup, and whether the rotation runs the native few-row kernel.
    hadamard: torch.Tensor | None = None
    native = False

    def prepare_inference(self) -> None:
        self.hadamard = hadamard_matrix(self.head_dim, str(self.wk.weight.device))
        self.native = self.wk.weight.device.type == "cpu" and kernels.available()

    def keys(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The cacheable key of every token. x: [N, D] -> [N, Di]. The values are FP8-exact, so
        caches keep them in bf16 without loss (half the bytes the O(T) scan has to read)."""
        return self.keys_of(self.wk(x), cos, sin)

    def keys_of(self, projected: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """`keys` from `wk(x)`, for a caller that ran the projection itself (fused with others)."""
        return self._rope_rotate_quantize(self.k_norm(projected), cos, sin)

    def queries(self, x: torch.Tensor, qr: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Index queries [S, Hi, Di] fp32 (FP8-exact) and head weights [S, Hi] fp32, scale folded in."""
        q = self.wq_b(qr).view(x.shape[0], self.n_heads, self.head_dim)
        q = self._rope_rotate_quantize(q, cos, sin).float()
        w = self.weights_proj(x.float()) * (self.n_heads ** -0.5 * self.head_dim ** -0.5)
        return q, w

    def scores(self, x: torch.Tensor, qr: torch.Tensor, keys: torch.Tensor, start: int,
               cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Index scores of S queries of one sequence against its T cached keys.

        x: [S, D], qr: [S, q_lora_rank], keys: [T, Di] -> I: [S, T] fp32, −inf where t > start + s.
        """
        q, w = self.queries(x, qr, cos, sin)
        out = exact_scores(q, w, keys)
        s_len, t_len = out.shape
        causal = torch.arange(t_len, device=x.device)[None, :] > (start + torch.arange(s_len, device=x.device))[:, None]
        return out.masked_fill_(causal, float("-inf"))

    def select(self, x: torch.Tensor, qr: torch.Tensor, keys: torch.Tensor | None, start: int,
               cos: torch.Tensor, sin: torch.Tensor, sketch: SketchedKeys | None = None) -> torch.Tensor:
        """Top-k key positions per query, [S, min(index_topk, T)] int64, ascending.

        Early prefill rows have fewer than k visible keys; their surplus picks are future positions
        (score −inf), which the attention's causal mask removes again (spec §8.5). A decode step over a
        long context (`screens`) takes the screened path, which returns the very same set, faster;
        given the keys' int8 `sketch` (see `KeySketch`; `keys` may then be None: the sketch names
        them too), faster still.
        """
        if sketch is not None:
            t_len = sketch.slots.shape[0]
            if not self.screens(t_len, x.shape[0]):
                raise ValueError(f"the sketch scan is for one query over >= {_SCREEN_FROM} x index_topk keys")
            q, w = self.queries(x, qr, cos, sin)
            return sketched_topk(q[0], w[0], sketch, min(self.index_topk, t_len), self.key_norm_bound())[None]
        k = min(self.index_topk, keys.shape[0])
        if self.screens(keys.shape[0], x.shape[0]) and keys.dtype == torch.bfloat16:
            q, w = self.queries(x, qr, cos, sin)
            return screened_topk(q[0], w[0], keys, k, self.key_norm_bound())[None]
        return topk_positions(self.scores(x, qr, keys, start, cos, sin), k)

    def screens(self, context: int, num_queries: int) -> bool:
        """Whether `select` screens: one query over a context of at least _SCREEN_FROM x index_topk
        keys (bf16 ones, or a sketch of them)."""
        return num_queries == 1 and context >= _SCREEN_FROM * min(self.index_topk, context)

    def key_norm_bound(self) -> float:
        """An upper bound on ||k||_2 of any cached key: LayerNorm output (|γ|·sqrt(Di) + ||β||),
        kept by RoPE and the orthonormal Hadamard, times the FP8 round trip's 1 + 2^-3."""
        gamma = float(self.k_norm.weight.abs().max())
        beta = float(self.k_norm.bias.norm())
        return (gamma * self.head_dim ** 0.5 + beta) * (1 + 2 ** -3)


# The screened decode path pays off once the context is this many times index_topk.
_SCREEN_FROM = 4


def exact_scores(q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """I[s, t] = Σ_h w[s,h] · ReLU(q[s,h] · k[t]) in fp32. q [S,Hi,Di], w [S,Hi], keys [T,Di] -> [S,T]."""
    s_len, n_heads, head_dim = q.shape
    t_len = keys.shape[0]
    k_t = keys.float().t()                                                        # [Di, T]
    out = torch.empty(s_len, t_len, dtype=torch.float32, device=q.device)
    rows = max(1, _SCORE_BUDGET // max(1, n_heads * t_len))
    for r in range(0, s_len, rows):
        n = min(rows, s_len - r)
        # One contiguous GEMM for every (query, head) pair, ReLU, then the head-weighted sum.
        logits = torch.mm(q[r:r + n].reshape(n * n_heads, head_dim), k_t).relu_()
        out[r:r + n] = torch.bmm(w[r:r + n].unsqueeze(1), logits.view(n, n_heads, t_len)).squeeze(1)
    return out


def screened_topk(q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor, k: int, key_norm: float) -> torch.Tensor:
    """The exact top-k of one query's index scores, with the O(T) scan done in bf16.

    q [Hi, Di] and the bf16 keys [T, Di] hold FP8 values times power-of-two scales, so both are exact
    in bf16; only the bf16 GEMM's output is rounded. With the bound below on each score's error,
    every key that can reach the true top-k survives the screen (upper bound >= the k-th best lower
    bound); those few are rescored exactly and ranked with the usual tie rule. Returns [k] positions.
    """
    approx = torch.mm(q.to(torch.bfloat16), keys.t()).float()                    # [Hi, T]
    # Per logit: output rounding (2^-8 relative, doubled) + fp32 accumulation (Di·2^-24·||q_h||·||k||,
    # quadrupled; the same for every key). ReLU is 1-Lipschitz: a score errs by at most Σ_h |w_h|·that.
    accumulation = float(w.abs() @ q.norm(dim=1)) * 4 * q.shape[1] * 2 ** -24 * key_norm
    score = torch.mm(w[None], approx.relu()).squeeze(0)                          # [T]
    error = torch.mm(w.abs()[None], approx.abs()).squeeze(0).mul_(2 ** -7).add_(accumulation).mul_(1 + 2 ** -10)
    return _rescore(q, w, keys, torch.stack((score - error, score + error)), k)


class KeySketch(NamedTuple):
    """Storage for an int8 approximation of cached indexer keys, one per slot: what the long-context
    decode scan reads instead of the bf16 keys (half the bytes, and the CPU's int8 dot products).
    `scale[s] * row_s` is within `residual[s]` (L2) of the key in slot s, where row_s is the slot's
    int8 row (`sketch_rows`).

    Rows are kept offset by 128 as uint8 and interleaved in groups of 16 slots, the layout the
    kernel reads (csrc/key_sketch.cpp): entry d of slot 16g + j is rows[g, d // 4, j, d % 4].
    rows [slots / 16, Di / 4, 16, 4] uint8, scale [slots] bf16 (powers of two), residual [slots] fp32.
    """

    rows: torch.Tensor
    scale: torch.Tensor
    residual: torch.Tensor


class SketchedKeys(NamedTuple):
    """One sequence's T keys where a cache holds them: the sketch storage, the slot of each
    position (slots [T] int64) and the keys' own storage by slot (keys [S, Di] bf16)."""

    sketch: KeySketch
    slots: torch.Tensor
    keys: torch.Tensor


def sketch_rows(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sketch of keys [N, Di] as a cache holds them (in bf16): int8 rows [N, Di], scale [N]
    bf16 and residual [N] fp32 (`kernels.key_sketch`; sketches exist only where it runs).

    Each row's scale is 2^(e - 6), where 2^e <= max|k| < 2^(e+1), so the largest entry maps into
    [64, 128]. Every entry of an FP8 key (3 mantissa bits) of at least 2^(e-3) is then an exact
    multiple of the scale: most entries carry no error. The residual is the L2 norm of what
    rounding (and clamping 127.5 of a bf16 key) lost, rounded up.
    """
    return kernels.key_sketch(keys.contiguous())


def sketch_supported(head_dim: int, device: torch.device | str) -> bool:
    """Whether caches keep a key sketch: its kernel runs on CPUs with int8 dot products
    (`kernels.int8_dot`), over keys of a multiple of 4 dims."""
    return torch.device(device).type == "cpu" and head_dim % 4 == 0 and kernels.int8_dot()


def empty_key_sketch(slots: int, head_dim: int, device: torch.device | str) -> KeySketch:
    """Zeroed sketch storage for `slots` keys (rounded up to a multiple of 16)."""
    groups = -(-slots // 16)
    return KeySketch(torch.zeros(groups, head_dim // 4, 16, 4, dtype=torch.uint8, device=device),
                     torch.zeros(groups * 16, dtype=torch.bfloat16, device=device),
                     torch.zeros(groups * 16, dtype=torch.float32, device=device))


def store_sketch(sketch: KeySketch, slots: torch.Tensor, keys: torch.Tensor) -> None:
    """Write the sketch of keys [N, Di] into `sketch` at slots [N]: one native call, or (inside a
    compiled graph, where a mutating call would cost a copy of the storage) torch's indexing."""
    if not torch.compiler.is_compiling():
        kernels.store_key_sketch(keys.contiguous(), slots, *sketch)
        return
    rows, scale, residual = sketch_rows(keys)
    offset = (rows.to(torch.int16) + 128).to(torch.uint8).view(rows.shape[0], -1, 4)
    sketch.rows[slots // 16, :, slots % 16] = offset
    sketch.scale[slots] = scale
    sketch.residual[slots] = residual


def sketch_rows_at(sketch: KeySketch, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What `store_sketch` wrote at slots [N]: `sketch_rows`' int8 rows [N, Di], scale and residual."""
    rows = sketch.rows[slots // 16, :, slots % 16].reshape(slots.shape[0], -1)
    return (rows.to(torch.int16) - 128).to(torch.int8), sketch.scale[slots], sketch.residual[slots]


def sketch_keys(keys: torch.Tensor) -> SketchedKeys:
    """A sketch of its own for keys [T, Di], at slots 0..T-1."""
    sketch = empty_key_sketch(keys.shape[0], keys.shape[1], keys.device)
    slots = torch.arange(keys.shape[0], device=keys.device)
    store_sketch(sketch, slots, keys)
    return SketchedKeys(sketch, slots, keys)


def sketch_bytes(head_dim: int) -> int:
    """Bytes per token of a sketch: the int8 row, a bf16 scale and an fp32 residual."""
    return head_dim + 2 + 4


def sketched_topk(q: torch.Tensor, w: torch.Tensor, sketched: SketchedKeys, k: int, key_norm: float) -> torch.Tensor:
    """`screened_topk` with the O(T) scan over the int8 sketch (`sketch_score_bounds`): the same
    exact result. Only the candidates' keys are read, where they lie."""
    return _rescore(q, w, sketched.keys, sketch_score_bounds(q, w, sketched, key_norm), k, sketched.slots)


def sketch_score_bounds(q: torch.Tensor, w: torch.Tensor, sketched: SketchedKeys,
                        key_norm: float) -> torch.Tensor:
    """Lower and upper bounds [2, T] on one query's index scores of the keys in a sketch.

    The kernel (`kernels.sketch_bounds`) splits q into two int8 parts and takes their exact integer
    dot products with each sketch row; a bound adds, per head, what the sketch lost (at most
    ||q_h||·residual_t, Cauchy-Schwarz), what the query's split lost (at most its exact L2 norm
    times ||k̃_t|| <= key_norm + residual_t) and the fp32 roundings (csrc/key_sketch.cpp).
    """
    sketch = sketched.sketch
    return kernels.sketch_bounds(sketch.rows, sketch.scale, sketch.residual, sketched.slots, q.float().contiguous(),
                                 w.float().contiguous(), key_norm)


def _rescore(q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor, bounds: torch.Tensor, k: int,
             slots: torch.Tensor | None = None) -> torch.Tensor:
    """Every key whose score can reach the top-k (its upper bound >= the k-th best lower bound;
    bounds [2, T]), rescored exactly and ranked with the usual tie rule: [k] positions. Key t is
    keys[t], or keys[slots[t]] given slots."""
    if bounds.device.type == "cpu" and kernels.available():
        candidates = kernels.screen_candidates(bounds, k)                         # ascending positions
    else:
        floor = _kth_largest_floor(bounds[0], k)
        candidates = (bounds[1] >= floor).nonzero().squeeze(1)
    rows = candidates if slots is None else slots[candidates]
    exact = exact_scores(q[None], w[None], keys.index_select(0, rows))           # [1, C]
    return candidates[topk_positions(exact, k)[0]]


def _kth_largest_floor(values: torch.Tensor, k: int, spread: int = 8) -> torch.Tensor:
    """A value <= the k-th largest of `values` [T], at a fraction of a full top-k's cost: the k-th
    largest of the maxima of `spread * k` blocks. k blocks reach it, each through an element of its
    own, so at least k elements of `values` do too."""
    block = values.numel() // (spread * k)
    if block < 2:
        return values.topk(k, sorted=False).values.min()
    maxima = values[:block * (values.numel() // block)].view(-1, block).amax(dim=1)
    return maxima.topk(k, sorted=False).values.min()


def topk_positions(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k best columns of each row of `scores` [S, T], ties broken towards later positions.

    Exact ties are common: a key whose every head logit is negative scores exactly 0 after ReLU.
    `torch.topk` breaks ties arbitrarily (and differently for different T), which would make a
    decode step pick other keys than a full forward. Here: every key strictly above the k-th best
    value, then the most recent keys tied with it.
    """
    kth = scores.topk(k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)   # [S, 1]
    at_least = scores >= kth                 # >= k a row; exactly k where the k-th value is not tied
    if int(at_least.sum()) == at_least.numel() // scores.shape[-1] * k:
        return at_least.nonzero()[:, 1].view(scores.shape[0], k)
    above = scores > kth
    ties = scores == kth
    missing = k - above.sum(dim=-1, keepdim=True)
    # Rank ties from the right, so the latest tied positions are taken first.
    tie_rank = ties.flip(-1).cumsum(-1).flip(-1)
    chosen = above | (ties & (tie_rank <= missing))
    return chosen.nonzero()[:, 1].view(scores.shape[0], k)
