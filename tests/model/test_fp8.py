"""Block FP8: weight scale grids, round-trip error bounds (spec §8.3, §10, §17) and the Hadamard rotation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from deepseek.model.fp8 import (FP8, dequantize_activation, dequantize_weight, fake_quantize_activation,
                                quantize_activation, quantize_weight, round_to_e4m3, scale_grid_shape)
from deepseek.model.indexer import hadamard_matrix, rotate_activation

MIN_NORMAL = 2.0 ** -6  # smallest normal e4m3 magnitude (after dividing by the block scale)


def _assert_within_fp8_bounds(x, deq, scale_per_elem):
    """Normal-range elements: relative error <= 2^-3 (RNE gives 2^-4); subnormals: half a step."""
    err = (deq.float() - x.float()).abs()
    y = x.float().abs() / scale_per_elem
    normal = y >= MIN_NORMAL
    assert (err[normal] <= 2.0 ** -3 * x.float().abs()[normal]).all()
    assert (err[~normal] <= scale_per_elem[~normal] * 2.0 ** -10 + 1e-12).all()


@pytest.mark.parametrize("shape", [(576, 256), (128, 128), (192, 256), (300, 130), (1, 7), (8192, 128)])
def test_weight_round_trip_within_bounds_for_ragged_shapes(shape):
    w = torch.randn(shape) * 0.05
    q, s = quantize_weight(w)
    assert q.dtype == FP8 and q.shape == w.shape
    assert s.dtype == torch.float32 and tuple(s.shape) == scale_grid_shape(shape)
    deq = dequantize_weight(q, s, torch.float32)
    per_elem = s.repeat_interleave(128, 0)[:shape[0]].repeat_interleave(128, 1)[:, :shape[1]]
    _assert_within_fp8_bounds(w, deq, per_elem)


def test_576_row_weight_has_five_scale_rows():
    assert scale_grid_shape((576, 7168)) == (5, 56)
    assert scale_grid_shape((32768, 512)) == (256, 4)
    assert scale_grid_shape((7168, 2048)) == (56, 16)


def test_ue8m0_scales_are_powers_of_two_and_cover_the_block_max():
    w = torch.randn(300, 260) * 3
    _, s = quantize_weight(w, scale_fmt="ue8m0")
    assert torch.equal(torch.exp2(torch.log2(s).round()), s)
    q, sa = quantize_activation(torch.randn(5, 384) * 10)
    assert torch.equal(torch.exp2(torch.log2(sa).round()), sa)


def test_dequantization_multiplies_by_scale_inv():
    q = torch.full((130, 130), 2.0).to(FP8)
    s = torch.tensor([[1.0, 0.5], [4.0, 0.25]])
    deq = dequantize_weight(q, s, torch.float32)
    assert deq[0, 0] == 2.0 and deq[0, 129] == 1.0 and deq[129, 0] == 8.0 and deq[129, 129] == 0.5


def test_scale_grid_mismatch_is_refused():
    q = torch.zeros(576, 256).to(FP8)
    with pytest.raises(ValueError, match="does not match"):
        dequantize_weight(q, torch.ones(4, 2), torch.float32)


@pytest.mark.parametrize("fmt", ["ue8m0", None])
def test_activation_round_trip_within_bounds(fmt):
    x = torch.randn(7, 3, 256) * torch.logspace(-3, 2, 256)
    q, s = quantize_activation(x, fmt)
    assert s.shape == (7, 3, 2)
    deq = dequantize_activation(q, s, torch.float32)
    _assert_within_fp8_bounds(x, deq, s.repeat_interleave(128, -1))


def test_all_zero_group_uses_the_clamped_scale():
    q, s = quantize_activation(torch.zeros(1, 128))
    assert (s > 0).all() and (q.float() == 0).all()


def test_e4m3_rounding_equals_torchs_cast_on_every_exponent_and_tie():
    """Every sign, exponent and top 11 mantissa bits of fp32 within ±448, with low bits that make
    ties, near-ties and plain values, in every e4m3 range (normal, subnormal, fp32-denormal)."""
    top = torch.arange(1 << 20, dtype=torch.int64) << 12
    for low in (0, 1, 0x7FF, 0x800, 0x801, 0xFFF, 0x555):
        bits = top | low
        v = torch.where(bits >= 1 << 31, bits - (1 << 32), bits).to(torch.int32).view(torch.float32)
        v = v[v.abs() <= 448]                                           # (drops NaN and inf too)
        want = v.to(FP8).float()
        assert torch.equal(round_to_e4m3(v).view(torch.int32), want.view(torch.int32)), low


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, width=32), min_size=128, max_size=128), st.integers(-40, 20),
       st.sampled_from(["ue8m0", None]), st.sampled_from([torch.float32, torch.bfloat16]))
def test_fake_quantization_is_the_fp8_round_trip_bit_for_bit(values, exponent, fmt, dtype):
    """Both ways: torch's ops (with autograd on, as training runs it) and, without autograd on CPU,
    the native kernel (`kernels.fp8_round_trip`) where it built."""
    x = (torch.tensor(values) * 2.0 ** exponent).to(dtype).view(1, 128)
    want = dequantize_activation(*quantize_activation(x, fmt), dtype)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            got = fake_quantize_activation(x, fmt)
        assert got.dtype == dtype and torch.equal(got.view(torch.int8), want.view(torch.int8)), grad


def test_hadamard_is_orthonormal_and_preserves_dot_products():
    h = hadamard_matrix(128)
    torch.testing.assert_close(h @ h.T, torch.eye(128), atol=1e-6, rtol=0)
    assert set(torch.unique((h * 128 ** 0.5).round()).tolist()) == {-1.0, 1.0}
    q, k = torch.randn(10, 128), torch.randn(20, 128)
    torch.testing.assert_close(rotate_activation(q) @ rotate_activation(k).T, q @ k.T, atol=1e-4, rtol=1e-4)
