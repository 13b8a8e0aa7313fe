"""Load an official-format checkpoint (sharded safetensors, FP8 or bf16) into a meta-device model.

Tensors are streamed one at a time from disk into memory the model then owns. We read the
safetensors layout (an 8-byte header length, a JSON header, raw little-endian data) with plain file
reads instead of mmap: mapped pages stay resident until a whole shard is released, which would
double the peak for an FP8-resident model. Nothing here unpickles anything.

Every tensor is checked before use; a bad checkpoint is refused with an error naming the tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .fp8 import FP8, dequantize_weight, quantize_weight, scale_grid_shape
from .layers import Linear

SAFETENSORS_DTYPES = {
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "BF16": torch.bfloat16,
    "F16": torch.float16, "F32": torch.float32, "F64": torch.float64, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
_FLOATS = (torch.bfloat16, torch.float16, torch.float32)
_MAX_HEADER = 256 << 20


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message names the tensor."""


class SafetensorsFile:
    """Random access to the tensors of one .safetensors file."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "rb")
        size = int.from_bytes(self._file.read(8), "little")
        if not 0 < size <= _MAX_HEADER:
            raise CheckpointError(f"{path.name}: not a safetensors file (header size {size})")
        try:
            header = json.loads(self._file.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path.name}: unreadable safetensors header: {e}") from e
        header.pop("__metadata__", None)
        self.entries: dict[str, dict] = header
        self._data_start = 8 + size

    def meta(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        info = self.entries[name]
        dtype = SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise CheckpointError(f"{name}: unsupported dtype {info['dtype']} in {self.path.name}")
        return dtype, tuple(info["shape"])

    def read(self, name: str) -> torch.Tensor:
        dtype, shape = self.meta(name)
        begin, end = self.entries[name]["data_offsets"]
        t = torch.empty(shape, dtype=dtype)
        nbytes = t.numel() * t.element_size()
        if end - begin != nbytes:
            raise CheckpointError(f"{name}: {end - begin} bytes stored for shape {list(shape)} "
                                  f"of {dtype} ({nbytes} expected)")
        if nbytes:
            self._file.seek(self._data_start + begin)
            got = self._file.readinto(memoryview(t.view(-1).view(torch.uint8).numpy()))
            if got != nbytes:
                raise CheckpointError(f"{name}: {self.path.name} is truncated")
        return t

    def close(self) -> None:
        self._file.close()


class Checkpoint:
    """All tensors of a checkpoint folder, by name, whether it has one file or an index of shards."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        index = folder / "model.safetensors.index.json"
        if index.exists():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in folder.glob("*.safetensors"))
            weight_map = None
        if not files:
            raise CheckpointError(f"no .safetensors files in {folder}")
        self.files = {name: SafetensorsFile(folder / name) for name in files}
        self.where: dict[str, SafetensorsFile] = {}
        for fname, f in self.files.items():
            for tensor in f.entries:
                self.where[tensor] = f
        if weight_map is not None:
            for tensor, fname in weight_map.items():
                if tensor not in self.files[fname].entries:
                    raise CheckpointError(f"{tensor}: listed in the index under {fname} but not stored there")

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def names(self) -> list[str]:
        return list(self.where)

    def meta(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        return self.where[name].meta(name)

    def read(self, name: str) -> torch.Tensor:
        return self.where[name].read(name)

    def close(self) -> None:
        for f in self.files.values():
            f.close()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_checkpoint(model: nn.Module, folder: str | Path, device: torch.device | str = "cpu",
                    fp8_resident: bool = False, progress: bool = False) -> None:
    """Fill every parameter of `model` (built on the meta device) from the checkpoint in `folder`.

    FP8 weights are dequantized to the parameter's dtype unless `fp8_resident`, in which case the
    block-quantized weights stay e4m3 (bf16 checkpoints are quantized on the way in).
    Tensors of MTP layers the model was built without are skipped; any other tensor the model
    does not consume is an error.
    """
    linears = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, Linear)}
    expected = dict(model.named_parameters())
    with Checkpoint(folder) as ckpt:
        consumed = set()
        items = expected.items()
        if progress:
            from tqdm import tqdm
            items = tqdm(items, desc="loading weights", unit="tensor")
        for name, meta in items:
            value, used = _read_param(ckpt, name, meta, linears.get(name), fp8_resident)
            consumed |= used
            _assign(model, name, value, device, linears.get(name))
        leftover = [n for n in ckpt.names() if n not in consumed and not _skipped(model, n)]
    if leftover:
        more = f" (and {len(leftover) - 5} more)" if len(leftover) > 5 else ""
        raise CheckpointError(f"unexpected tensor {leftover[0]} in checkpoint: {leftover[:5]}{more}")


def _read_param(ckpt: Checkpoint, name: str, meta: nn.Parameter, linear: Linear | None,
                fp8_resident: bool):
    """Read, check and convert one parameter. Returns (tensor or (fp8, scale_inv), names consumed)."""
    if name not in ckpt:
        raise CheckpointError(f"missing tensor {name} (shape {list(meta.shape)})")
    dtype, shape = ckpt.meta(name)
    if shape != tuple(meta.shape):
        raise CheckpointError(f"{name}: shape {list(shape)} in checkpoint, model expects {list(meta.shape)}")
    quantized = linear is not None and linear.quantized
    if dtype == FP8:
        if not quantized:
            raise CheckpointError(f"{name}: stored as FP8, but this weight is never block-quantized")
        scale_name = f"{name}_scale_inv"
        if scale_name not in ckpt:
            raise CheckpointError(f"{name}: FP8 weight without its {scale_name}")
        s_dtype, s_shape = ckpt.meta(scale_name)
        grid = scale_grid_shape(shape)
        if s_shape != grid or s_dtype not in _FLOATS:
            raise CheckpointError(f"{scale_name}: shape {list(s_shape)} {s_dtype}, expected {list(grid)} "
                                  f"float for a {list(shape)} weight (ceil-div 128 blocks)")
        w, s = ckpt.read(name), ckpt.read(scale_name).float()
        value = (w, s) if fp8_resident else dequantize_weight(w, s, meta.dtype)
        return value, {name, scale_name}
    if dtype not in _FLOATS:
        raise CheckpointError(f"{name}: dtype {dtype} in checkpoint, expected a float type")
    value = ckpt.read(name)
    if quantized and fp8_resident:
        return quantize_weight(value), {name}
    return value.to(meta.dtype), {name}


def _assign(model: nn.Module, name: str, value, device, linear: Linear | None) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if isinstance(value, tuple):
        weight, scale = value
        linear.weight = nn.Parameter(weight.to(device), requires_grad=False)
        linear.weight_scale_inv = nn.Parameter(scale.to(device), requires_grad=False)
    else:
        setattr(module, attr, nn.Parameter(value.to(device), requires_grad=False))


def _skipped(model: nn.Module, name: str) -> bool:
    """MTP tensors are optional: skipped when the model was built without its MTP layers."""
    config = getattr(model, "config", None)
    if config is None or not name.startswith("model.layers."):
        return False
    layer = int(name.split(".")[2])
    built = len(model.model.layers)
    return built == config.num_hidden_layers and layer >= config.num_hidden_layers
