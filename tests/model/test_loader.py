"""Loading the official checkpoint format: shards, FP8 and bf16, FP8-resident, and refusing bad files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from deepseek.model import CheckpointError, Transformer
from deepseek.model.checkpoint import convert_checkpoint, write_safetensors
from deepseek.model.fp8 import FP8, dequantize_weight
from deepseek.model.loader import Checkpoint


def read_all(folder) -> dict[str, torch.Tensor]:
    with Checkpoint(folder) as ckpt:
        return {name: ckpt.read(name) for name in ckpt.names()}


def dequantized(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What each parameter should hold after loading: FP8 weights times their scales, in fp32."""
    out = {}
    for name, t in tensors.items():
        if name.endswith("_scale_inv"):
            continue
        out[name] = dequantize_weight(t, tensors[f"{name}_scale_inv"], torch.float32) if t.dtype == FP8 else t.float()
    return out


def rewrite(src, dst, tensors, shards=1):
    """A copy of checkpoint `src` with its weights replaced by `tensors`."""
    dst.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(src / name, dst / name)
    write_safetensors(tensors, dst, shards)
    return dst


def test_two_shard_fp8_checkpoint_loads_every_tensor_exactly(tiny_checkpoint):
    assert (tiny_checkpoint / "model.safetensors.index.json").exists()
    assert len(list(tiny_checkpoint.glob("model-*-of-00002.safetensors"))) == 2
    tensors = read_all(tiny_checkpoint)
    assert tensors["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"].dtype == FP8
    assert tensors["model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv"].shape == (2, 2)
    assert tensors["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32
    assert tensors["model.layers.1.self_attn.indexer.weights_proj.weight"].dtype == torch.bfloat16
    model = Transformer.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    expected = dequantized(tensors)
    params = dict(model.named_parameters())
    assert set(params) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(params[name], value, atol=0, rtol=0, msg=name)


def test_fp8_resident_weights_take_half_the_memory_and_give_the_same_logits(tiny_checkpoint):
    plain = Transformer.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    resident = Transformer.from_pretrained(tiny_checkpoint, dtype=torch.float32, fp8_resident=True)
    w = resident.model.layers[1].mlp.experts[3].down_proj
    assert w.weight.dtype == FP8 and w.weight_scale_inv.dtype == torch.float32
    tokens = torch.arange(2, 60)[None]
    torch.testing.assert_close(resident(tokens), plain(tokens), atol=0, rtol=0)


def test_bf16_conversion_round_trips_to_the_same_weights(tiny_checkpoint, tmp_path):
    bf16 = convert_checkpoint(tiny_checkpoint, tmp_path / "bf16", "bf16")
    assert "quantization_config" not in json.loads((bf16 / "config.json").read_text())
    assert not any(n.endswith("_scale_inv") for n in read_all(bf16))
    fp8 = convert_checkpoint(bf16, tmp_path / "fp8", "fp8")
    original, back = dequantized(read_all(tiny_checkpoint)), dequantized(read_all(fp8))
    assert set(original) == set(back)
    for name in original:
        torch.testing.assert_close(back[name], original[name], atol=0, rtol=0, msg=name)
    tokens = torch.arange(2, 40)[None]
    a = Transformer.from_pretrained(tiny_checkpoint, dtype=torch.float32)(tokens)
    b = Transformer.from_pretrained(bf16, dtype=torch.float32)(tokens)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_bf16_checkpoint_can_be_loaded_fp8_resident(tiny_checkpoint, tmp_path):
    bf16 = convert_checkpoint(tiny_checkpoint, tmp_path / "bf16", "bf16")
    model = Transformer.from_pretrained(bf16, fp8_resident=True)
    assert model.model.layers[0].mlp.up_proj.weight.dtype == FP8


def test_model_without_mtp_skips_the_mtp_tensors(tiny_checkpoint):
    model = Transformer.from_pretrained(tiny_checkpoint, mtp=False)
    assert len(model.model.layers) == model.config.num_hidden_layers


def _mutate(name):
    """Each corruption: a function from the tensor dict to a broken one, and the tensor it breaks."""
    q = "model.layers.2.self_attn.q_b_proj.weight"
    norm = "model.layers.1.input_layernorm.weight"
    kv_a = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight"
    cases = {
        "missing": (lambda t: t.pop(q), q, "missing tensor"),
        "unexpected": (lambda t: t.__setitem__("model.layers.1.self_attn.extra.weight", torch.zeros(2)),
                       "model.layers.1.self_attn.extra.weight", "unexpected tensor"),
        "wrong shape": (lambda t: t.__setitem__(norm, torch.ones(255, dtype=torch.bfloat16)), norm, "shape"),
        "wrong dtype": (lambda t: t.__setitem__(norm, torch.ones(256, dtype=torch.int32)), norm, "dtype"),
        "fp8 where never quantized": (lambda t: t.__setitem__(norm, torch.ones(256).to(FP8)), norm, "never"),
        "scale missing": (lambda t: t.pop(f"{kv_a}_scale_inv"), kv_a, "without its"),
        "scale grid": (lambda t: t.__setitem__(f"{kv_a}_scale_inv", torch.ones(1, 2)),
                       f"{kv_a}_scale_inv", "ceil-div"),
    }
    return cases[name]


@pytest.mark.parametrize("case", ["missing", "unexpected", "wrong shape", "wrong dtype",
                                  "fp8 where never quantized", "scale missing", "scale grid"])
def test_corrupt_checkpoints_are_refused_naming_the_tensor(tiny_checkpoint, tmp_path, case):
    mutate, tensor, words = _mutate(case)
    tensors = read_all(tiny_checkpoint)
    mutate(tensors)
    broken = rewrite(tiny_checkpoint, tmp_path / "broken", tensors)
    with pytest.raises(CheckpointError) as err:
        Transformer.from_pretrained(broken)
    assert tensor in str(err.value) and words in str(err.value)


def test_truncated_shard_is_refused(tiny_checkpoint, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    shard = sorted(broken.glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated"):
        Transformer.from_pretrained(broken)


def test_index_naming_a_tensor_its_shard_lacks_is_refused(tiny_checkpoint, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors"
    index["weight_map"]["model.ghost.weight"] = "model-00002-of-00002.safetensors"
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model.ghost.weight|model.norm.weight"):
        Transformer.from_pretrained(broken)


def test_a_non_safetensors_file_is_refused(tiny_checkpoint, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(tiny_checkpoint / "config.json", broken / "config.json")
    (broken / "model.safetensors").write_bytes(b"\x80\x04pickle bytes are never loaded")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        Transformer.from_pretrained(broken)
