"""The DeepSeek-V3.2 transformer: embedding, decoder layers, final norm, fp32 LM head, MTP (spec §4).

Two ways in:
* `model(tokens)` — `[B, S]` token ids -> `[B, S, vocab]` fp32 logits for the whole sequence, with a
  throw-away cache; the plain path tests compare against.
* `model.step(tokens, batch)` — a flat batch of new tokens of several sequences (prefill chunks and
  decode steps mixed) against a `KVCache`; returns final-normed hidden states. `model.logits(h)`
  projects the rows you want. The engine drives this.

The same weights run sparse (DSA, the V3.2 behaviour) or dense (plain MLA, the V3 behaviour),
chosen per sequence in the `ForwardBatch`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .block import DecoderLayer
from .cache import ContiguousCache, DecodeRows, ForwardBatch
from .config import ModelConfig
from .layers import Linear, RMSNorm
from .mtp import MTPLayer
from .rope import rope_cos_sin, yarn_inv_freq

Attention = Literal["sparse", "dense"]


class DeepseekModel(nn.Module):
    """HF names: `model.{embed_tokens, layers, norm}`; `layers[num_hidden_layers:]` are MTP layers."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, mtp: bool):
        super().__init__()
        n, n_mtp = config.num_hidden_layers, config.num_nextn_predict_layers if mtp else 0
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList(
            [DecoderLayer(config, i, dtype) for i in range(n)]
            + [MTPLayer(config, i, dtype) for i in range(n, n + n_mtp)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype = torch.bfloat16,
                 attention: Attention = "sparse", mtp: bool = True):
        super().__init__()
        if attention not in ("sparse", "dense"):
            raise ValueError(f"attention must be 'sparse' or 'dense', got {attention!r}")
        if attention == "sparse" and not config.has_indexer:
            raise ValueError("this config has no lightning indexer (a V3 model): use attention='dense'")
        self.config, self.dtype, self.attention = config, dtype, attention
        self.model = DeepseekModel(config, dtype, mtp)
        # The reference computes logits in fp32 from an fp32 copy of the head.
        self.lm_head = Linear(config.hidden_size, config.vocab_size, quantized=False, dtype=torch.float32)
        # Depends on the config only: computed once, on the CPU (the model may be built on "meta").
        with torch.device("cpu"):
            self.inv_freq = yarn_inv_freq(config)

    @property
    def num_cache_layers(self) -> int:
        """Layers that keep attention state: the main layers plus any MTP layers."""
        return len(self.model.layers)

    @property
    def mtp_layers(self) -> list[MTPLayer]:
        return list(self.model.layers[self.config.num_hidden_layers:])

    @property
    def device(self) -> torch.device:
        return self.model.norm.weight.device

    def new_cache(self, batch_size: int, max_len: int) -> ContiguousCache:
        return ContiguousCache(self.config, batch_size, max_len, self.num_cache_layers,
                               self.dtype, self.device)

    def _rope(self, batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        positions = batch.positions(self.device)
        return positions, *self.rope(positions)

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [N, qk_rope_head_dim / 2] of the rotary angles at `positions` [N]."""
        return rope_cos_sin(self.inv_freq, positions)

    def step(self, tokens: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """tokens: [N] flat new tokens -> final-normed hidden states [N, D] (cache updated)."""
        if tokens.shape[0] != batch.num_tokens:
            raise ValueError(f"{tokens.shape[0]} tokens for a batch of {batch.num_tokens}")
        _, cos, sin = self._rope(batch)
        h = self.model.embed_tokens(tokens)
        for layer in self.model.layers[:self.config.num_hidden_layers]:
            h = layer(h, batch, cos, sin)
        return self.model.norm(h)

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, rows: DecodeRows,
               rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """One dense decode step of B sequences: tokens [B] at `positions` [B] -> final-normed hidden
        states [B, D]. Equal to `step` on the same decode-only dense batch, with no Python per
        sequence, so `torch.compile` can trace it whole (the engine's `compile` option). `rope`:
        `self.rope(positions)`, where the caller has it already."""
        cos, sin = rope if rope is not None else self.rope(positions)
        h = self.model.embed_tokens(tokens)
        for layer in self.model.layers[:self.config.num_hidden_layers]:
            h = layer.decode(h, cos, sin, rows)
        return self.model.norm(h)

    def decode_reads_in_place(self) -> bool:
        """Whether `decode` reads the cached rows where they lie (every layer's attention on the
        native kernel, set by `prepare_inference`), rather than gathering each visible row first."""
        return all(layer.self_attn.native_kernels for layer in self.model.layers)

    def uses_indexer(self, context: int) -> bool:
        """Whether a sparse query with `context` visible keys runs the indexer (else DSA == dense)."""
        return any(layer.self_attn.needs_index(context) for layer in self.model.layers)

    def prepare_inference(self) -> None:
        """After loading and before serving (again is harmless): stack each MoE's experts (`MoE.pack`),
        lay the other weights out for small-batch GEMMs (`Linear.prepare_inference`; norms: `RMSNorm`), fuse the
        products that read the same input (`MLA.fuse`, `MLP.fuse`, `MoE.fuse`), and precompute what attention
        would otherwise derive from the weights on every call."""
        for layer in self.model.layers:
            if hasattr(layer.mlp, "pack"):
                layer.mlp.pack()      # first: the experts' weights become views the next loop keeps
            layer.self_attn.prepare_inference(self.dtype)
        for module in self.modules():
            if isinstance(module, (Linear, RMSNorm)):
                module.prepare_inference()
        for layer in self.model.layers:   # then the products that share an input, as one each
            layer.self_attn.fuse()
            layer.mlp.fuse()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., vocab] fp32."""
        return self.lm_head.fp32(hidden)

    def mtp_logits(self, hidden: torch.Tensor, next_tokens: torch.Tensor,
                   batch: ForwardBatch) -> torch.Tensor:
        """MTP prediction of token i+2 from main-model hidden state i and token i+1: [N, vocab] fp32."""
        if not self.mtp_layers:
            raise ValueError("this model was built without its MTP layer (mtp=False)")
        positions, cos, sin = self._rope(batch)
        return self.mtp_layers[0].predict(hidden, next_tokens, positions, batch, cos, sin)

    def forward(self, tokens: torch.Tensor, attention: Attention | None = None) -> torch.Tensor:
        """tokens: [B, S] -> logits [B, S, vocab] fp32, every sequence starting at position 0."""
        b, s = tokens.shape
        sparse = (attention or self.attention) == "sparse"
        batch = ForwardBatch(starts=(0,) * b, lengths=(s,) * b, sparse=(sparse,) * b,
                             cache=self.new_cache(b, s))
        return self.logits(self.step(tokens.reshape(-1), batch)).view(b, s, -1)

    @classmethod
    def from_pretrained(cls, path: str | Path, attention: Attention = "sparse",
                        dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu",
                        fp8_resident: bool = False, mtp: bool = True, progress: bool = False) -> "Transformer":
        """Load an official-format checkpoint folder (config.json + safetensors, FP8 or bf16)."""
        from .loader import load_checkpoint

        config = ModelConfig.from_file(path)
        with torch.device("meta"):
            model = cls(config, dtype=dtype, attention=attention, mtp=mtp)
        load_checkpoint(model, path, device=device, fp8_resident=fp8_resident, progress=progress)
        return model.eval().requires_grad_(False)

