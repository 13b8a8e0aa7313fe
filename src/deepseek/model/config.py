"""The model configuration, read once from a Hugging Face `config.json` and never mutated.

Field names are the checkpoint's own keys (spec §2), so a config maps 1:1 to the file. Derived
quantities (head dims, YaRN softmax scale) are properties. Inconsistent configs are refused in
`__post_init__` with a message that names the offending keys.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config.json that cannot describe a DeepSeek-V3/V3.2 model."""


@dataclass(frozen=True)
class RopeScaling:
    """YaRN parameters (`rope_scaling` in config.json)."""

    type: str = "yarn"
    factor: float = 1.0
    original_max_position_embeddings: int = 4096
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 1.0


@dataclass(frozen=True)
class QuantizationConfig:
    """Block-FP8 weight format (`quantization_config` in config.json)."""

    quant_method: str = "fp8"
    fmt: str = "e4m3"
    activation_scheme: str = "dynamic"
    scale_fmt: str | None = "ue8m0"
    weight_block_size: tuple[int, int] = (128, 128)


@dataclass(frozen=True)
class ModelConfig:
    """Every key of the official DeepSeek-V3.2 config.json (spec §2)."""

    vocab_size: int = 129280
    hidden_size: int = 7168
    intermediate_size: int = 18432
    moe_intermediate_size: int = 2048
    num_hidden_layers: int = 61
    num_nextn_predict_layers: int = 1
    first_k_dense_replace: int = 3
    moe_layer_freq: int = 1
    num_attention_heads: int = 128
    num_key_value_heads: int = 128
    attention_bias: bool = False
    attention_dropout: float = 0.0
    q_lora_rank: int | None = 1536
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    num_experts_per_tok: int = 8
    n_group: int = 8
    topk_group: int = 4
    topk_method: str = "noaux_tc"
    scoring_func: str = "sigmoid"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 2.5
    ep_size: int = 1
    # The lightning indexer (DSA). None in a V3 config: such a model only runs dense.
    index_n_heads: int | None = 64
    index_head_dim: int | None = 128
    index_topk: int | None = 2048
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 163840
    rope_scaling: RopeScaling | None = field(default_factory=lambda: RopeScaling(
        factor=40, original_max_position_embeddings=4096))
    quantization_config: QuantizationConfig | None = field(default_factory=QuantizationConfig)
    tie_word_embeddings: bool = False
    bos_token_id: int = 0
    eos_token_id: int = 1
    torch_dtype: str = "bfloat16"
    architectures: tuple[str, ...] = ("DeepseekV32ForCausalLM",)
    model_type: str = "deepseek_v32"
    initializer_range: float = 0.02
    use_cache: bool = True

    def __post_init__(self) -> None:
        problems = list(_problems(self))
        if problems:
            raise ConfigError("inconsistent model config: " + "; ".join(problems))

    # ----- derived quantities -----
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def has_indexer(self) -> bool:
        return self.index_topk is not None

    @property
    def softmax_scale(self) -> float:
        """`qk_head_dim^-0.5 · m²` with the YaRN mscale m (spec §7.4); the same in both MLA forms."""
        scale = self.qk_head_dim ** -0.5
        rs = self.rope_scaling
        if rs is not None and rs.factor > 1:
            m = 0.1 * rs.mscale_all_dim * math.log(rs.factor) + 1.0
            scale *= m * m
        return scale

    def is_moe_layer(self, layer_id: int) -> bool:
        return layer_id >= self.first_k_dense_replace and layer_id % self.moe_layer_freq == 0

    # ----- I/O -----
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ModelConfig":
        """Build from a parsed config.json; keys this model does not use (auto_map, ...) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in known}
        if "index_topk" not in raw and raw.get("model_type") != "deepseek_v32":
            kwargs.update(index_n_heads=None, index_head_dim=None, index_topk=None)
        try:
            if kwargs.get("rope_scaling") is not None:
                kwargs["rope_scaling"] = RopeScaling(**_only(RopeScaling, kwargs["rope_scaling"]))
            if "quantization_config" in kwargs:
                q = kwargs["quantization_config"]
                if q is not None:
                    q = _only(QuantizationConfig, q)
                    if "weight_block_size" in q:
                        q["weight_block_size"] = tuple(q["weight_block_size"])
                    q = QuantizationConfig(**q)
                kwargs["quantization_config"] = q
            else:
                kwargs["quantization_config"] = None
            if "architectures" in kwargs:
                kwargs["architectures"] = tuple(kwargs["architectures"])
            return cls(**kwargs)
        except TypeError as e:
            raise ConfigError(f"bad config.json value: {e}") from e

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise ConfigError(f"no config.json at {path}") from e
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from e
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.quantization_config is not None:
            d["quantization_config"]["weight_block_size"] = list(self.quantization_config.weight_block_size)
        d["architectures"] = list(self.architectures)
        return d

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _only(kind: type, raw: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(kind)}
    return {k: v for k, v in raw.items() if k in known}


_NULLABLE = {"q_lora_rank", "index_n_heads", "index_head_dim", "index_topk"}


def _type_problems(c: ModelConfig):
    """Scalar fields must have the JSON type of their default (an int where an int is expected)."""
    for f in dataclasses.fields(c):
        value, default = getattr(c, f.name), f.default
        if default is dataclasses.MISSING or default is None or (value is None and f.name in _NULLABLE):
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            ok = True
        if not ok:
            yield f"{f.name} must be a {type(default).__name__}, got {value!r}"


def _problems(c: ModelConfig):
    """Yield one message per inconsistency; an empty iteration means the config is usable."""
    type_problems = list(_type_problems(c))
    if type_problems:
        yield from type_problems
        return
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
        if getattr(c, name) <= 0:
            yield f"{name} must be positive, got {getattr(c, name)}"
    if c.qk_rope_head_dim % 2:
        yield f"qk_rope_head_dim must be even (RoPE rotates pairs), got {c.qk_rope_head_dim}"
    if not 0 <= c.first_k_dense_replace <= c.num_hidden_layers:
        yield (f"first_k_dense_replace={c.first_k_dense_replace} must lie in "
               f"[0, num_hidden_layers={c.num_hidden_layers}]")
    if c.moe_layer_freq < 1:
        yield f"moe_layer_freq must be >= 1, got {c.moe_layer_freq}"
    if c.num_nextn_predict_layers < 0:
        yield f"num_nextn_predict_layers must be >= 0, got {c.num_nextn_predict_layers}"
    if c.first_k_dense_replace < c.num_hidden_layers + c.num_nextn_predict_layers:
        yield from _moe_problems(c)
    if c.has_indexer:
        yield from _indexer_problems(c)
    elif c.index_n_heads is not None or c.index_head_dim is not None:
        yield "index_n_heads/index_head_dim given without index_topk"
    rs = c.rope_scaling
    if rs is not None:
        if rs.type not in ("yarn",):
            yield f"rope_scaling.type {rs.type!r} is not supported (only 'yarn')"
        if rs.factor < 1:
            yield f"rope_scaling.factor must be >= 1, got {rs.factor}"
    q = c.quantization_config
    if q is not None:
        if q.quant_method != "fp8" or q.fmt != "e4m3":
            yield f"quantization_config {q.quant_method}/{q.fmt} is not supported (only fp8/e4m3)"
        if tuple(q.weight_block_size) != (128, 128):
            yield f"quantization_config.weight_block_size must be [128, 128], got {list(q.weight_block_size)}"
        if q.scale_fmt not in (None, "ue8m0"):
            yield f"quantization_config.scale_fmt {q.scale_fmt!r} is not supported (null or 'ue8m0')"
    if c.tie_word_embeddings:
        yield "tie_word_embeddings=true is not a DeepSeek-V3 layout"
    if c.hidden_act != "silu":
        yield f"hidden_act {c.hidden_act!r} is not supported (only 'silu')"
    for name in ("bos_token_id", "eos_token_id"):
        if not 0 <= getattr(c, name) < c.vocab_size:
            yield f"{name}={getattr(c, name)} is outside the vocabulary (vocab_size={c.vocab_size})"


def _moe_problems(c: ModelConfig):
    if c.topk_method != "noaux_tc":
        yield f"topk_method {c.topk_method!r} is not supported (only 'noaux_tc')"
    if c.scoring_func != "sigmoid":
        yield f"scoring_func {c.scoring_func!r} is not supported (only 'sigmoid')"
    if c.n_group < 1 or c.n_routed_experts % c.n_group:
        yield f"n_routed_experts={c.n_routed_experts} must divide into n_group={c.n_group} groups"
    elif c.n_routed_experts // c.n_group < 2:
        yield "each expert group needs >= 2 experts (group score = sum of the top 2)"
    if not 1 <= c.topk_group <= c.n_group:
        yield f"topk_group={c.topk_group} must lie in [1, n_group={c.n_group}]"
    elif c.n_group and not 1 <= c.num_experts_per_tok <= c.topk_group * (c.n_routed_experts // c.n_group):
        yield (f"num_experts_per_tok={c.num_experts_per_tok} exceeds the experts in "
               f"topk_group={c.topk_group} groups")


def _indexer_problems(c: ModelConfig):
    if c.index_n_heads is None or c.index_head_dim is None or c.index_n_heads <= 0:
        yield "index_topk needs index_n_heads and index_head_dim"
        return
    d = c.index_head_dim
    if d & (d - 1) or d < c.qk_rope_head_dim:
        yield (f"index_head_dim={d} must be a power of two (Hadamard) and >= "
               f"qk_rope_head_dim={c.qk_rope_head_dim}")
    if c.index_topk <= 0:
        yield f"index_topk must be positive, got {c.index_topk}"
    if c.q_lora_rank is None:
        yield "the indexer reads the q-LoRA latent: q_lora_rank must be set"
