"""YaRN frequencies, softmax scales and the two RoPE layouts (spec §6, §7.4)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from deepseek.model import ModelConfig
from deepseek.model.rope import (rope_cos_sin, rotate_half_split, rotate_interleaved,
                                 yarn_correction_range, yarn_inv_freq)

OFFICIAL = ModelConfig.from_file(Path(__file__).parent / "data" / "deepseek_v32_config.json")


def test_yarn_range_and_frequencies_of_the_671b_config():
    assert yarn_correction_range(64, 10000, 4096, 32, 1) == (10, 23)
    f = yarn_inv_freq(OFFICIAL)
    assert f.shape == (32,) and f.dtype == torch.float32
    expected = {0: 1.0, 9: 0.0749894, 10: 0.0562341, 23: 3.3338e-05, 31: 3.3338e-06}
    for i, value in expected.items():
        assert f[i].item() == pytest.approx(value, rel=1e-4), i


def test_yarn_range_of_the_tiny_config(tiny_config):
    rs = tiny_config.rope_scaling
    assert yarn_correction_range(64, 10000, rs.original_max_position_embeddings, 32, 1) == (0, 13)


def test_softmax_scales():
    assert OFFICIAL.softmax_scale == pytest.approx(0.1352338, abs=1e-7)


def test_tiny_softmax_scale(tiny_config):
    assert tiny_config.softmax_scale == pytest.approx(0.1145935, abs=1e-7)


def _complex_rotation(pairs_re, pairs_im, positions, inv_freq):
    z = torch.complex(pairs_re.double(), pairs_im.double())
    # Angles are fp32 in the reference too (an fp32 outer product); only the rotation is checked here.
    angle = torch.outer(positions.float(), inv_freq).double()
    rot = z * torch.polar(torch.ones_like(angle), angle)[:, None, :]
    return rot.real, rot.imag


def test_interleaved_rotation_is_the_complex_multiply_of_neighbour_pairs():
    inv_freq = yarn_inv_freq(OFFICIAL)
    positions = torch.tensor([0, 1, 7, 4095, 70000])
    x = torch.randn(5, 3, 64)
    cos, sin = rope_cos_sin(inv_freq, positions)
    y = rotate_interleaved(x, cos, sin)
    re, im = _complex_rotation(x[..., 0::2], x[..., 1::2], positions, inv_freq)
    torch.testing.assert_close(y[..., 0::2].double(), re, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(y[..., 1::2].double(), im, atol=2e-5, rtol=1e-5)


def test_half_split_rotation_is_the_complex_multiply_of_half_pairs():
    inv_freq = yarn_inv_freq(OFFICIAL)
    positions = torch.tensor([0, 3, 100, 131071])
    x = torch.randn(4, 2, 64)
    cos, sin = rope_cos_sin(inv_freq, positions)
    y = rotate_half_split(x, cos, sin)
    re, im = _complex_rotation(x[..., :32], x[..., 32:], positions, inv_freq)
    torch.testing.assert_close(y[..., :32].double(), re, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(y[..., 32:].double(), im, atol=2e-5, rtol=1e-5)


def test_the_two_layouts_differ():
    """The classic bug: using one layout for the other. Same input, different result."""
    inv_freq = yarn_inv_freq(OFFICIAL)
    cos, sin = rope_cos_sin(inv_freq, torch.tensor([5]))
    x = torch.randn(1, 64)
    assert not torch.allclose(rotate_interleaved(x, cos, sin), rotate_half_split(x, cos, sin))


def test_rotation_keeps_dtype_and_norm_of_each_pair():
    inv_freq = yarn_inv_freq(OFFICIAL)
    cos, sin = rope_cos_sin(inv_freq, torch.arange(8))
    x = torch.randn(8, 4, 64, dtype=torch.bfloat16)
    y = rotate_interleaved(x, cos, sin)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float().norm(dim=-1), x.float().norm(dim=-1), rtol=2e-2, atol=2e-2)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.sampled_from([(), (1,), (3,), (2, 4)]), st.sampled_from([2, 8, 64, 128]),
       st.sampled_from([torch.float32, torch.bfloat16]), st.integers(0, 2 ** 31), st.booleans())
def test_the_native_rotation_is_torchs_bit_for_bit(n, heads, d, dtype, seed, sliced):
    """Inference on CPU runs the one-pass kernel (`kernels.rope`); training, with autograd on,
    runs torch's expression. Both layouts, head dims or none, and a strided slice as input."""
    from deepseek.model import kernels

    if not kernels.available():
        pytest.skip("native kernels not built here")
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, *heads, 2 * d, generator=g) * 8).to(dtype)
    x = x[..., :d] if sliced else x[..., d:].contiguous()
    angles = torch.randn(n, d // 2, generator=g) * 1000
    cos, sin = angles.cos(), angles.sin()
    for rotate in (rotate_interleaved, rotate_half_split):
        with torch.enable_grad():
            want = rotate(x, cos, sin)
        with torch.no_grad():
            got = rotate(x, cos, sin)
        assert got.dtype == dtype and torch.equal(got, want), rotate.__name__
