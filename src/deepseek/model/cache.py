"""What one forward call needs to know about its sequences, and where their attention state lives.

A forward call takes a *flat* batch: the new tokens of several sequences concatenated, `[N]`.
`ForwardBatch` says which slice belongs to which sequence, where it starts, and whether that
sequence runs sparse (DSA) or dense attention. Linear layers and experts work on all N tokens at
once; attention works sequence by sequence against the cache.

The cache stores, per layer and per token, exactly what MLA and the indexer need later
(spec §3, §7.5, §8.4): the normalised KV latent `c` (kv_lora_rank), the rotated shared key `k_pe`
(qk_rope_head_dim) and the indexer key (index_head_dim; kept as its exact FP8-dequantized value,
and on CPU also as an int8 `KeySketch` that the long-context decode scan reads instead).
`KVCache` is the small interface; `ContiguousCache` is the simple implementation used by
`Transformer.forward` and `deepseek generate`. The engine supplies a paged one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import torch

from .config import ModelConfig
from .indexer import KeySketch, SketchedKeys, empty_key_sketch, sketch_supported, store_sketch


class KVCache(Protocol):
    """Per-layer token storage for the sequences of a forward batch (indexed 0..B-1 in that batch).

    Invariant: `load(layer, seq, end)` returns rows `[0, end)` exactly as written by `store_tokens`, so a
    sequence's attention never depends on how its tokens were split across calls.
    """

    def store_tokens(self, layer: int, seqs: torch.Tensor, positions: torch.Tensor, latent: torch.Tensor,
                     k_pe: torch.Tensor, index_k: torch.Tensor | None) -> None:
        """Write the rows of every token of a forward call at once: token i of sequence seqs[i] at
        positions[i]; seqs, positions [N], latent [N, R], k_pe [N, Dr], index_k [N, Di]."""

    def load(self, layer: int, seq: int, end: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Rows `[0, end)` of one sequence: (latent [T, R], k_pe [T, Dr], index_k [T, Di] or None)."""

    def load_index_keys(self, layer: int, seq: int, end: int) -> torch.Tensor:
        """Indexer keys of rows `[0, end)`: [T, Di]."""

    def load_index_sketch(self, layer: int, seq: int, end: int) -> SketchedKeys | None:
        """The int8 sketch of those keys (the layer's sketch and key storage, and the keys' slots
        [T]), or None if this cache keeps none. With it, the scan of the sketch is the only O(T)
        read of a long-context sparse decode step."""

    def layer_rows(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A layer's latent and k_pe storage by slot, [S, R] and [S, Dr] (views: nothing copied)."""

    def slots_of(self, seqs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The slots of positions [B, K] (all written) of the sequences seqs [B]: [B, K] int64.
        Padding entries must name a written position (0 will do); callers mask them."""


@dataclass(frozen=True)
class ForwardBatch:
    """The layout of one flat forward call. Sequence i owns tokens `offsets[i]:offsets[i]+lengths[i]`."""

    starts: tuple[int, ...]     # tokens already cached for each sequence (its first new position)
    lengths: tuple[int, ...]    # new tokens of each sequence in this call
    sparse: tuple[bool, ...]    # DSA (True) or dense MLA (False), per sequence
    cache: KVCache

    def __post_init__(self) -> None:
        if not (len(self.starts) == len(self.lengths) == len(self.sparse)):
            raise ValueError("starts, lengths and sparse must have one entry per sequence")
        if any(n <= 0 for n in self.lengths) or any(p < 0 for p in self.starts):
            raise ValueError("every sequence needs >= 1 new token and a non-negative start")

    @property
    def num_tokens(self) -> int:
        return sum(self.lengths)

    def slices(self):
        """Yield (seq, token slice in the flat batch, start position, new length)."""
        offset = 0
        for i, (start, length) in enumerate(zip(self.starts, self.lengths)):
            yield i, slice(offset, offset + length), start, length
            offset += length

    def positions(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Absolute position of every flat token, [N] int64."""
        return self._token_layout[1].to(device)

    def token_seqs(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Batch index of the sequence every flat token belongs to, [N] int64."""
        return self._token_layout[0].to(device)

    @functools.cached_property
    def _token_layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor(self.lengths)
        seqs = torch.repeat_interleave(torch.arange(len(self.lengths)), lengths)
        offsets = torch.cumsum(lengths, 0) - lengths
        positions = torch.arange(int(lengths.sum())) - offsets[seqs] + torch.tensor(self.starts)[seqs]
        return seqs, positions

    def last_token_indices(self) -> list[int]:
        """Flat index of each sequence's last new token (where next-token logits are read)."""
        ends, total = [], 0
        for n in self.lengths:
            total += n
            ends.append(total - 1)
        return ends


@dataclass(frozen=True)
class DecodeRows:
    """The cache as a dense decode step sees it: one new token per sequence, every index a tensor.

    `latent`, `k_pe` and `index_k` are each layer's storage as flat `[slots, width]` views (a paged
    cache's `[blocks * block_size, W]`). Sequence b writes its new token's rows at `write_slots[b]`
    and reads the rows at `read_slots[b, :]`, of which `visible[b, :]` are its positions 0..p_b
    (the new token included); the rest is padding that names some real slot. Nothing here depends
    on Python values per sequence, so one traced graph serves every batch size and context length.
    """

    latent: list[torch.Tensor]
    k_pe: list[torch.Tensor]
    index_k: list[torch.Tensor] | None
    index_sketch: list[KeySketch] | None       # each layer's sketch storage, by the same slots
    write_slots: torch.Tensor   # [B] int64
    read_slots: torch.Tensor    # [B, K] int64
    visible: torch.Tensor       # [B, K] bool

    @classmethod
    def from_slot_table(cls, latent, k_pe, index_k, index_sketch, slot_table: torch.Tensor,
                        positions: torch.Tensor) -> "DecodeRows":
        """slot_table [B, >= max(positions) + 1]: the slot of every position of each sequence. (The
        engine builds its rows with `PagedKVCache.decode_rows`, in numpy.)"""
        width = int(positions.max()) + 1
        span = torch.arange(width, device=positions.device)
        write = slot_table.gather(1, positions[:, None]).squeeze(1)
        # Contiguous, so a compiled step sees the same strides at every width (no recompiles).
        return cls(latent, k_pe, index_k, index_sketch, write, slot_table[:, :width].contiguous(),
                   span[None, :] <= positions[:, None])

    def write(self, layer: int, latent: torch.Tensor, k_pe: torch.Tensor, index_k: torch.Tensor | None) -> None:
        """Store the new rows of `layer` (then `read_slots` name every visible row of it)."""
        self.latent[layer].index_copy_(0, self.write_slots, latent.to(self.latent[layer].dtype))
        self.k_pe[layer].index_copy_(0, self.write_slots, k_pe.to(self.k_pe[layer].dtype))
        if self.index_k is not None and index_k is not None:
            self.index_k[layer].index_copy_(0, self.write_slots, index_k.to(self.index_k[layer].dtype))
            if self.index_sketch is not None:
                store_sketch(self.index_sketch[layer], self.write_slots, index_k)


class ContiguousCache:
    """One preallocated `[batch, max_len, ...]` buffer per layer and kind. Simple and exact."""

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, num_layers: int,
                 dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu"):
        self.max_len = max_len

        def buf(width: int) -> list[torch.Tensor]:
            return [torch.zeros(batch_size, max_len, width, dtype=dtype, device=device)
                    for _ in range(num_layers)]

        self.latent = buf(config.kv_lora_rank)
        self.k_pe = buf(config.qk_rope_head_dim)
        self.index_k = self.index_sketch = None
        if config.has_indexer:   # bf16 holds the FP8-exact keys without loss, at half of fp32's bytes
            self.index_k = [torch.zeros(batch_size, max_len, config.index_head_dim, dtype=torch.bfloat16,
                                        device=device) for _ in range(num_layers)]
            if sketch_supported(config.index_head_dim, device):
                # slot b * max_len + t holds position t of sequence b
                self.index_sketch = [empty_key_sketch(batch_size * max_len, config.index_head_dim, device)
                                     for _ in range(num_layers)]

    def store_tokens(self, layer, seqs, positions, latent, k_pe, index_k) -> None:
        if positions.numel() and int(positions.max()) >= self.max_len:
            raise ValueError(f"cache holds {self.max_len} tokens per sequence; a write reaches {int(positions.max()) + 1}")
        self.latent[layer][seqs, positions] = latent.to(self.latent[layer].dtype)
        self.k_pe[layer][seqs, positions] = k_pe.to(self.k_pe[layer].dtype)
        if self.index_k is not None and index_k is not None:
            self.index_k[layer][seqs, positions] = index_k.to(torch.bfloat16)
            if self.index_sketch is not None:
                store_sketch(self.index_sketch[layer], seqs * self.max_len + positions, index_k)

    def load(self, layer, seq, end):
        index_k = self.index_k[layer][seq, :end] if self.index_k is not None else None
        return self.latent[layer][seq, :end], self.k_pe[layer][seq, :end], index_k

    def load_index_keys(self, layer, seq, end):
        return self.index_k[layer][seq, :end]

    def load_index_sketch(self, layer, seq, end):
        if self.index_sketch is None:
            return None
        slots = torch.arange(seq * self.max_len, seq * self.max_len + end, device=self.index_k[layer].device)
        return SketchedKeys(self.index_sketch[layer], slots, self.index_k[layer].flatten(0, 1))

    def layer_rows(self, layer):
        return self.latent[layer].flatten(0, 1), self.k_pe[layer].flatten(0, 1)    # slot b * max_len + t

    def slots_of(self, seqs, positions):
        return seqs[:, None] * self.max_len + positions
