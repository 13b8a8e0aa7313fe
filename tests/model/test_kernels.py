"""The native few-row GEMM kernels (`deepseek.model.kernels`) against float64 references."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from deepseek.model import kernels
from deepseek.model.layers import Linear

pytestmark = pytest.mark.skipif(not kernels.available(), reason="the kernel does not build on this machine")

DTYPES = [torch.float32, torch.bfloat16]
# (M, K, N): one row, a full 4-row tile, tiles plus a remainder, column and depth tails, the LM head
SHAPES = [(1, 256, 576), (4, 64, 64), (7, 100, 100), (13, 17, 3), (16, 512, 81), (8, 256, 4096), (32, 130, 4100)]


def reference_bound(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x @ w^T in float64, and what an fp32 sum over K may be off by (K * 2^-24 * sum |x w|)."""
    exact = x.double() @ w.double().t()
    return exact, x.shape[1] * 2.0 ** -24 * (x.double().abs() @ w.double().abs().t())


def random(shape, dtype, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("xdtype", DTYPES)
@pytest.mark.parametrize("wdtype", DTYPES)
@pytest.mark.parametrize("m, k, n", SHAPES)
def test_products_are_within_an_fp32_sum_of_the_exact_ones(xdtype, wdtype, m, k, n):
    x, w = random((m, k), xdtype, 0), random((n, k), wdtype, 1)
    exact, bound = reference_bound(x, w)
    if xdtype == torch.bfloat16:        # the result is rounded once to x's dtype
        bound = bound + exact.abs() * 2.0 ** -8
    for got in (kernels.matmul(x, w.t().contiguous()), kernels.matmul_nt(x, w)):
        assert got.dtype == xdtype and got.shape == (m, n)
        assert ((got.double() - exact).abs() <= bound).all()


@pytest.mark.parametrize("m, k, n", SHAPES)
def test_a_bf16_result_is_the_fp32_result_rounded_to_nearest_even(m, k, n):
    x, w = random((m, k), torch.bfloat16, 2), random((n, k), torch.bfloat16, 3)
    wt = w.t().contiguous()
    if not kernels.bf16_dot():      # the pair dot products sum in another order (next test)
        assert torch.equal(kernels.matmul(x, wt), kernels.matmul(x.float(), wt).bfloat16())
    assert torch.equal(kernels.matmul_nt(x, w), kernels.matmul_nt(x.float(), w).bfloat16())


def test_deepseek_bf16_dot_0_keeps_bf16_products_on_the_fp32_path(tmp_path):
    """Both bf16 paths on a CPU with AVX512-BF16: the pair dot products are within a bf16 rounding
    (plus the fp32 sums' error) of the fp32 path, and switched off they are its rounded result. The
    same for the decode attention, whose two paths also agree to bf16 rounding."""
    code = ("import sys, torch; from safetensors.torch import save_file; from deepseek.model import kernels\n"
            "sys.path.insert(0, %r); from test_kernels import attention_case\n"
            "g = torch.Generator().manual_seed(0)\n"
            "x, wt = torch.randn(8, 255, generator=g).bfloat16(), torch.randn(255, 300, generator=g).bfloat16()\n"
            "q_lat, q_pe, latent, k_pe, slots, visible, _ = attention_case(torch.bfloat16)\n"
            "save_file({'o': kernels.latent_attention(q_lat, q_pe, latent, k_pe, slots, visible, 0.1)}, %r)\n"
            "print(kernels.bf16_dot(), torch.equal(kernels.matmul(x, wt), kernels.matmul(x.float(), wt).bfloat16()))"
            % (os.path.dirname(__file__), str(tmp_path / "off.safetensors")))
    off = subprocess.run([sys.executable, "-c", code], env={**os.environ, "DEEPSEEK_BF16_DOT": "0"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert off == ["False", "True"]
    if kernels.bf16_dot():
        from safetensors.torch import load_file

        g = torch.Generator().manual_seed(0)
        x, wt = torch.randn(8, 255, generator=g).bfloat16(), torch.randn(255, 300, generator=g).bfloat16()
        fp32 = kernels.matmul(x.float(), wt)
        _, bound = reference_bound(x, wt.t())
        assert ((kernels.matmul(x, wt).double() - fp32.double()).abs() <= 2 * bound + fp32.double().abs() * 2.0 ** -8).all()
        q_lat, q_pe, latent, k_pe, slots, visible, _ = attention_case(torch.bfloat16)
        pairs = kernels.latent_attention(q_lat, q_pe, latent, k_pe, slots, visible, 0.1)
        torch.testing.assert_close(pairs.float(), load_file(tmp_path / "off.safetensors")["o"].float(), atol=3e-2, rtol=3e-2)


def test_non_finite_values_propagate():
    x = torch.ones(2, 32)
    x[0, 3], x[1, 5] = float("nan"), float("inf")
    w = torch.ones(40, 32)
    for dtype in DTYPES:
        for y in (kernels.matmul(x.to(dtype), w.t().contiguous().to(dtype)), kernels.matmul_nt(x.to(dtype), w.to(dtype))):
            assert y[0].isnan().all() and (y[1] == float("inf")).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_rows_result_does_not_depend_on_the_other_rows_of_the_call(dtype):
    """What keeps a sequence's greedy tokens the same alone and in any decode batch."""
    x, w = random((32, 256), dtype, 4), random((300, 256), dtype, 5)
    wt = w.t().contiguous()
    full, full_nt = kernels.matmul(x, wt), kernels.matmul_nt(x, w)
    for rows in (slice(5, 6), slice(0, 3), slice(9, 16), slice(0, 8)):
        assert torch.equal(kernels.matmul(x[rows], wt), full[rows])
        assert torch.equal(kernels.matmul_nt(x[rows], w), full_nt[rows])


@pytest.mark.parametrize("wdtype", DTYPES)
def test_a_float32_result_of_bf16_rows_is_their_unrounded_fp32_sum(wdtype):
    """The LM head's form (`Linear.fp32`): bf16 rows and a bf16 matrix give fp32 sums of the exact
    products, with the error of an fp32 sum and no bf16 rounding; fp32 x ignores the option."""
    x, w = random((9, 256), torch.bfloat16, 30), random((4100, 256), wdtype, 31)
    exact, bound = reference_bound(x, w)
    got = kernels.matmul(x, w.t().contiguous(), torch.float32)
    assert got.dtype == torch.float32 and ((got.double() - exact).abs() <= bound).all()
    many = random((40, 256), torch.bfloat16, 32)         # past the kernel's rows: torch's fp32 product
    assert torch.equal(kernels.matmul(many, w.t().contiguous(), torch.float32), many.float() @ w.float().t())
    layer = Linear(256, 4100, quantized=False, dtype=wdtype)
    with torch.no_grad():
        layer.weight.copy_(w)
    layer.weight.requires_grad_(False)
    layer.prepare_inference()
    with torch.no_grad():
        assert torch.equal(layer.fp32(x), got)
        assert torch.equal(layer.fp32(x.float()), layer(x.float()))


def test_threads_split_the_work_without_changing_a_bit():
    """Columns, batched products and experts go to threads when there is enough work; every
    output keeps its one order of sums."""
    cases = []
    for dtype in DTYPES:
        x, w = random((32, 256), dtype, 33), random((2000, 256), dtype, 34)
        xb, wb = random((8, 32, 512), dtype, 35), random((8, 512, 64), dtype, 36)
        cases += [lambda x=x, w=w: kernels.matmul(x, w.t().contiguous()),
                  lambda x=x, w=w: kernels.matmul_nt(x, w),
                  lambda x=x, w=w: kernels.matmul(x, w.t().contiguous(), torch.float32),
                  lambda xb=xb, wb=wb: kernels.matmul(xb, wb)]
        gen = torch.Generator().manual_seed(37)
        gate_up = torch.randn(8, 256, 256, generator=gen).to(dtype).transpose(1, 2)     # [E, 2I, D] column-major
        down = torch.randn(8, 128, 256, generator=gen).to(dtype).transpose(1, 2)       # [E, D, I]
        xe = torch.randn(32, 256, generator=gen).to(dtype)
        ids = torch.stack([torch.randperm(8, generator=gen)[:2] for _ in range(32)])
        weights = torch.rand(32, 2, generator=gen)
        cases.append(lambda xe=xe, weights=weights, ids=ids, gate_up=gate_up, down=down:
                     kernels.moe_experts(xe, weights, ids, gate_up, down))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [case() for case in cases]
        torch.set_num_threads(2)
        assert torch.ops.deepseek_kernels.parallel_threads() == 2     # the work really is shared
        two = [case() for case in cases]
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def test_batched_and_strided_operands():
    x = random((5, 3, 64), torch.bfloat16, 6).transpose(0, 1)           # [3, 5, 64], not contiguous
    wt, w = random((3, 64, 32), torch.bfloat16, 7), random((3, 40, 64), torch.float32, 8)
    torch.testing.assert_close(kernels.matmul(x, wt).float(), (x.float() @ wt.float()), atol=0.1, rtol=0.02)
    torch.testing.assert_close(kernels.matmul_nt(x, w).float(), x.float() @ w.transpose(1, 2), atol=0.1, rtol=0.02)


def test_many_rows_or_strided_matrix_rows_are_torch_matmul_exactly():
    x, w = random((33, 64), torch.float32, 9), random((48, 64), torch.float32, 10)
    assert torch.equal(kernels.matmul(x, w.t().contiguous()), x @ w.t().contiguous())
    column_major = w.t().contiguous().t()                                  # its rows are not contiguous
    assert torch.equal(kernels.matmul_nt(x[:3], column_major), x[:3] @ column_major.t())


def test_bad_operands_raise_with_the_shapes_named():
    with pytest.raises(RuntimeError, match="do not multiply"):
        kernels.matmul(torch.ones(2, 8), torch.ones(9, 4))
    with pytest.raises(RuntimeError, match="both 2-D or both 3-D"):
        kernels.matmul_nt(torch.ones(2, 8), torch.ones(1, 4, 8))
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        kernels.matmul(torch.ones(2, 8, dtype=torch.float64), torch.ones(8, 4, dtype=torch.float64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_prepared_linear_runs_the_kernel_without_grad_and_f_linear_with_it(dtype):
    layer = Linear(256, 576, dtype=dtype)
    torch.nn.init.normal_(layer.weight)
    layer.weight.requires_grad_(False)
    layer.prepare_inference()
    assert layer.small_gemm
    x = random((3, 256), dtype, 11)
    with torch.no_grad():
        torch.testing.assert_close(layer(x).float(), F.linear(x, layer.weight).float(), atol=0.05, rtol=0.02)
        assert torch.equal(layer(x), kernels.small_linear(x, layer.weight))
    x.requires_grad_(True)
    assert torch.equal(layer(x), F.linear(x, layer.weight))       # autograd: torch's op


def test_deepseek_kernels_0_turns_the_kernel_off():
    code = "from deepseek.model import kernels; print(kernels.available())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "DEEPSEEK_KERNELS": "0"},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_an_fp32_weight_with_bf16_values_is_held_as_bf16_with_the_same_products():
    """The LM head: a bf16 checkpoint tensor the reference computes in fp32. Half the bytes to read."""
    exact = Linear(256, 300, quantized=False, dtype=torch.float32)
    other = Linear(256, 300, quantized=False, dtype=torch.float32)
    with torch.no_grad():
        exact.weight.copy_(random((300, 256), torch.bfloat16, 12).float())
        other.weight.copy_(random((300, 256), torch.float32, 13))
    fp32_weight = exact.weight.detach().clone()
    for layer in (exact, other):
        layer.weight.requires_grad_(False)
        layer.prepare_inference()
    assert exact.weight.dtype == torch.bfloat16 and other.weight.dtype == torch.float32
    x = random((5, 256), torch.float32, 14)
    with torch.no_grad():
        assert torch.equal(exact(x), kernels.matmul(x, fp32_weight.t().contiguous()))
    assert torch.equal(exact(x), F.linear(x, exact.weight.float()))    # with grad: torch's op on fp32 values
    assert torch.equal(exact.weight.float(), fp32_weight)


needs_pairs = pytest.mark.skipif(not kernels.bf16_dot(), reason="no AVX512-BF16 pair products here")


@needs_pairs
@pytest.mark.parametrize("m, k, n", [(1, 256, 576), (4, 64, 64), (7, 100, 96), (13, 17, 48), (32, 130, 4096),
                                     (33, 64, 32), (150, 256, 16)])
def test_a_packed_matrix_gives_the_pair_paths_sums_for_any_number_of_rows(m, k, n):
    """`pack` + `packed_matmul`: within an fp32 sum of the exact products, bf16 results the fp32
    ones rounded, and, where the unpacked pair path runs (up to 32 rows), its bits exactly."""
    x, w = random((m, k), torch.bfloat16, 40), random((n, k), torch.bfloat16, 41)
    wp = kernels.pack(w.t())
    assert wp.shape == (n // next(c for c in (64, 32, 16) if n % c == 0), (k + 1) // 2, wp.shape[2], 2)
    fp32 = kernels.packed_matmul(x, wp, torch.float32)
    exact, bound = reference_bound(x, w)
    assert fp32.dtype == torch.float32 and ((fp32.double() - exact).abs() <= bound).all()
    assert torch.equal(kernels.packed_matmul(x, wp), fp32.bfloat16())
    if m <= 32:
        assert torch.equal(fp32, kernels.matmul(x, w.t().contiguous(), torch.float32))
    for rows in (slice(0, 1), slice(m // 2, m), slice(1, None, 3)):    # strided rows go as copied pairs
        assert torch.equal(kernels.packed_matmul(x[rows], wp, torch.float32), fp32[rows])


@needs_pairs
def test_packed_batched_products_threads_and_experts_keep_every_bit():
    xb, wb = random((3, 5, 64), torch.bfloat16, 42).transpose(0, 1), random((5, 64, 32), torch.bfloat16, 43)
    got = kernels.packed_matmul(xb, kernels.pack(wb))                 # [5, 3, 32] from strided rows
    assert torch.equal(got, torch.stack([kernels.matmul(xb[i], wb[i]) for i in range(5)]))
    gen = torch.Generator().manual_seed(44)
    gate_up = torch.randn(8, 256, 256, generator=gen).bfloat16().transpose(1, 2)     # [E, 2I, D] column-major
    down = torch.randn(8, 128, 256, generator=gen).bfloat16().transpose(1, 2)       # [E, D, I]
    xe = torch.randn(40, 256, generator=gen).bfloat16()
    ids = torch.stack([torch.randperm(8, generator=gen)[:2] for _ in range(40)])
    weights = torch.rand(40, 2, generator=gen)
    packed = kernels.pack(gate_up.transpose(1, 2)), kernels.pack(down.transpose(1, 2))
    expected = kernels.moe_experts(xe, weights, ids, gate_up, down)
    x, w = random((32, 256), torch.bfloat16, 45), random((2000, 256), torch.bfloat16, 46)
    wp = kernels.pack(w.t())
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            assert torch.equal(kernels.moe_experts(xe, weights, ids, *packed), expected)
            assert torch.equal(kernels.packed_matmul(x, wp), kernels.matmul(x, w.t().contiguous()))
    finally:
        torch.set_num_threads(threads)


@needs_pairs
def test_packed_operands_are_checked():
    wp = kernels.pack(random((64, 48), torch.bfloat16, 47))
    with pytest.raises(RuntimeError, match="64 columns; the packed matrix 62 rows"):
        kernels.packed_matmul(random((2, 64), torch.bfloat16, 48), kernels.pack(random((62, 48), torch.bfloat16, 49)))
    with pytest.raises(RuntimeError, match="bf16 CPU tensors"):
        kernels.packed_matmul(torch.ones(2, 64), wp)
    with pytest.raises(RuntimeError, match="or both batched"):
        kernels.packed_matmul(torch.ones(1, 2, 64, dtype=torch.bfloat16), wp)
    assert kernels.pack(torch.ones(64, 40, dtype=torch.bfloat16)) is None       # 40 columns: no whole tile
    assert kernels.pack(torch.ones(64, 48)) is None                              # fp32


@needs_pairs
def test_a_prepared_bf16_linear_holds_its_weight_packed_too():
    layer = Linear(255, 320, dtype=torch.bfloat16)
    torch.nn.init.normal_(layer.weight)
    layer.weight.requires_grad_(False)
    layer.prepare_inference()
    assert layer.pairs is not None
    x = random((2, 40, 255), torch.bfloat16, 50)           # 80 rows: past the unpacked kernel's 32
    with torch.no_grad():
        assert torch.equal(layer(x), kernels.packed_matmul(x.view(80, 255), layer.pairs).view(2, 40, 320))
        assert torch.equal(layer.fp32(x[0, :3]), kernels.matmul(x[0, :3], layer.weight.t(), torch.float32))
        torch.testing.assert_close(layer(x).float(), F.linear(x, layer.weight).float(), atol=0.05, rtol=0.02)


def attention_reference(q_lat, q_pe, latent, k_pe, slots, visible, scale):
    """latent_attention in float64 over gathered rows."""
    c, pe = latent[slots].double(), k_pe[slots].double()
    s = (torch.einsum("bhr,bkr->bhk", q_lat.double(), c) + torch.einsum("bhd,bkd->bhk", q_pe.double(), pe)) * scale
    if visible is not None:
        s = s.masked_fill(~visible[:, None, :], float("-inf"))
    return torch.einsum("bhk,bkr->bhr", s.softmax(-1), c)


def attention_case(dtype, heads=4, rank=80, rope=24, slots=300, batch=5, width=37, seed=20):
    g = torch.Generator().manual_seed(seed)
    q_lat, q_pe = torch.randn(batch, heads, rank, generator=g), torch.randn(batch, heads, rope, generator=g)
    latent, k_pe = torch.randn(slots, rank, generator=g), torch.randn(slots, rope, generator=g)
    table = torch.randperm(slots, generator=g)[:batch * width].view(batch, width)
    lengths = torch.randint(1, width + 1, (batch,), generator=g)
    visible = torch.arange(width)[None, :] < lengths[:, None]
    return [t.to(dtype) for t in (q_lat, q_pe, latent, k_pe)] + [table, visible, lengths]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [1, 4, 6])
def test_latent_attention_is_softmax_attention_over_the_slotted_rows(dtype, heads):
    q_lat, q_pe, latent, k_pe, slots, visible, _ = attention_case(dtype, heads=heads)
    got = kernels.latent_attention(q_lat, q_pe, latent, k_pe, slots, visible, 0.1)
    assert got.dtype == dtype and got.shape == q_lat.shape
    exact = attention_reference(q_lat, q_pe, latent, k_pe, slots, visible, 0.1)
    # fp32: sums and exp to ~1e-6; bf16: the probabilities and the output are rounded to bf16
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.double(), exact, atol=tol, rtol=tol)


def test_latent_attention_gives_a_sequence_the_same_bits_alone_padded_or_moved():
    """Rows that are not visible are never read, and rows are found by slot: what lets every decode
    form (batched, alone, gathered, in place) share one arithmetic."""
    q_lat, q_pe, latent, k_pe, slots, visible, lengths = attention_case(torch.bfloat16)
    full = kernels.latent_attention(q_lat, q_pe, latent, k_pe, slots, visible, 0.1)
    for b in range(len(lengths)):
        n = int(lengths[b])
        own = slots[b:b + 1, :n]
        alone = kernels.latent_attention(q_lat[b:b + 1], q_pe[b:b + 1], latent, k_pe, own, None, 0.1)
        gathered = kernels.latent_attention(q_lat[b:b + 1], q_pe[b:b + 1], latent[own[0]], k_pe[own[0]],
                                            torch.arange(n)[None], None, 0.1)
        assert torch.equal(alone, full[b:b + 1]) and torch.equal(gathered, full[b:b + 1])
    # q as a head-major product leaves it (a transposed view, read where it lies)
    strided = kernels.latent_attention(q_lat.transpose(0, 1).contiguous().transpose(0, 1),
                                       q_pe.transpose(0, 1).contiguous().transpose(0, 1), latent, k_pe, slots,
                                       visible, 0.1)
    assert torch.equal(strided, full)


def test_latent_attention_rejects_bad_operands():
    q_lat, q_pe, latent, k_pe, slots, visible, _ = attention_case(torch.float32)
    with pytest.raises(RuntimeError, match="out of range"):
        kernels.latent_attention(q_lat, q_pe, latent, k_pe, slots + 1000, visible, 0.1)
    with pytest.raises(RuntimeError, match="expected latent"):
        kernels.latent_attention(q_lat, q_pe, latent[:, :10], k_pe, slots, visible, 0.1)
    with pytest.raises(RuntimeError, match="visible"):
        kernels.latent_attention(q_lat, q_pe, latent, k_pe, slots, visible.int(), 0.1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [16, 32, 128, 1024])
def test_hadamard_is_the_orthonormal_sylvester_rotation(dtype, n):
    """Butterflies in fp32 give x @ H_n / sqrt(n) to fp32 rounding (then x's dtype), row by row."""
    from deepseek.model.indexer import hadamard_matrix

    x = random((5, 3, n), dtype, 40) * 10
    got = kernels.hadamard(x)
    assert got.dtype == dtype and got.shape == x.shape
    exact = (x.double() @ hadamard_matrix(n).double()).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 2 ** -8
    torch.testing.assert_close(got.double(), exact.double(), atol=tol, rtol=tol)
    assert torch.equal(kernels.hadamard(x[1:2, 2:3]), got[1:2, 2:3])     # a row alone: the same bits
    assert torch.equal(kernels.hadamard(x.transpose(0, 1)), got.transpose(0, 1).contiguous())
    with pytest.raises(RuntimeError, match="power of two"):
        kernels.hadamard(x[..., :n - 8])


def test_the_hadamard_rotation_and_the_router_run_the_kernel_without_grad(tiny_config):
    from deepseek.model.indexer import hadamard_matrix, rotate_activation
    from deepseek.model.moe import MoE

    x = random((6, 3, 128), torch.bfloat16, 30)
    h = hadamard_matrix(128)
    with torch.no_grad():
        native = rotate_activation(x, h, native=True)
    # (the butterflies round otherwise than the product: a bf16 result may be one unit apart)
    torch.testing.assert_close(native.float(), rotate_activation(x, h).float(), atol=0, rtol=2 ** -7)
    moe = MoE(tiny_config)        # (the experts' values do not matter here: only the router runs)
    torch.nn.init.normal_(moe.gate.weight, generator=torch.Generator().manual_seed(31))
    assert moe.pack() and moe.gate.native
    tokens = random((9, tiny_config.hidden_size), torch.float32, 32)
    with torch.no_grad():
        weights, ids = moe.gate(tokens)
    expected_weights, expected_ids = moe.gate(tokens)         # with grad: torch's product
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(weights, expected_weights.detach(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_latent_attention_over_a_long_context_gives_the_same_bits_at_any_thread_count(dtype):
    """One long sequence splits its rows across threads (scores, softmax chunks, output columns)."""
    q_lat, q_pe, latent, k_pe, _, _, _ = attention_case(dtype, batch=1, slots=3000, width=1)
    slots = torch.randperm(3000, generator=torch.Generator().manual_seed(21))[None, :2500]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.latent_attention(q_lat, q_pe, latent, k_pe, slots, None, 0.1)
        torch.set_num_threads(2)
        two = kernels.latent_attention(q_lat, q_pe, latent, k_pe, slots, None, 0.1)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(one.double(), attention_reference(q_lat, q_pe, latent, k_pe, slots, None, 0.1),
                               atol=tol, rtol=tol)


def test_latent_attention_propagates_nan_and_softmax_saturation():
    q_lat, q_pe, latent, k_pe, slots, visible, _ = attention_case(torch.float32)
    q_lat[0, 0, 0] = float("nan")
    q_lat[1] *= 1e4                     # scores ~1e4 apart: one row takes all the weight
    got = kernels.latent_attention(q_lat, q_pe, latent, k_pe, slots, visible, 0.1)
    assert got[0, 0].isnan().all() and not got[0, 1:].isnan().any()
    exact = attention_reference(q_lat[1:2], q_pe[1:2], latent, k_pe, slots[1:2], visible[1:2], 0.1)
    torch.testing.assert_close(got[1:2].double(), exact, atol=1e-5, rtol=1e-5)


@settings(max_examples=300, deadline=None)
@given(rows=st.integers(1, 5), width=st.integers(1, 70),
       values=st.lists(st.sampled_from([0.0, 1.0, -1.0, 2.5, float("inf"), float("-inf"), float("nan"), -0.0]),
                       min_size=1, max_size=350), seed=st.integers(0, 2**16))
def test_argmax_rows_is_torch_argmax_with_ties_infinities_and_nan(rows, width, values, seed):
    """The greedy pick: the first index of the largest value, a NaN counting as the largest."""
    x = torch.tensor((values * (rows * width // len(values) + 1))[:rows * width]).view(rows, width)
    x = x[:, torch.randperm(width, generator=torch.Generator().manual_seed(seed))].contiguous()
    assert torch.equal(kernels.argmax(x), x.argmax(-1))


def test_argmax_rows_of_logits_and_of_a_strided_batch():
    x = random((32, 4100), torch.float32, 40)
    assert torch.equal(kernels.argmax(x), x.argmax(-1))
    assert torch.equal(kernels.argmax(x[::3]), x[::3].argmax(-1))
    assert torch.equal(kernels.argmax(x.t()), x.t().argmax(-1))        # columns: torch's own


@needs_pairs
def test_products_that_share_an_input_run_fused_with_each_ones_bits(tiny_config):
    """`Transformer.prepare_inference` fuses q_a + kv_a + the indexer's wk, and gate + up: one packed
    product each, whose columns are bit for bit the separate products (up to 32 rows, where the
    separate ones run the unpacked pair path)."""
    from deepseek.model import Transformer
    from deepseek.model.checkpoint import init_random_weights
    from deepseek.model.layers import run_fused

    model = init_random_weights(Transformer(tiny_config, dtype=torch.bfloat16), seed=3).eval().requires_grad_(False)
    model.prepare_inference()
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert attn.fused_input is not None and mlp.gate_up is not None
    moe = model.model.layers[-1].mlp                      # routed experts: one packed copy, in the MoE
    assert moe.pairs is not None and moe.shared_experts.gate_up is not None
    assert all(linear.pairs is None for e in moe.experts for linear in (e.gate_proj, e.up_proj, e.down_proj))
    x = random((9, tiny_config.hidden_size), torch.bfloat16, 51)
    with torch.no_grad():
        for fused, linears in ((attn.fused_input, attn._input_projections()), (mlp.gate_up, [mlp.gate_proj, mlp.up_proj])):
            assert all(linear.pairs is None for linear in linears)        # no second packed copy
            together, apart = run_fused(x, fused, linears), run_fused(x, None, linears)
            assert [t.shape[-1] for t in together] == [linear.out_features for linear in linears]
            assert all(torch.equal(a, b) for a, b in zip(together, apart))
