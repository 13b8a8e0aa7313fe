"""The paged KV cache storage, and the `KVCache` view one forward call gives the model.

Per layer and token the model reads back (spec §3, §7.5, §8.4): the KV latent `c` (kv_lora_rank),
the rotated shared key `k_pe` (qk_rope_head_dim) and, for V3.2, the lightning indexer's key
(index_head_dim). Each kind is one tensor per layer, `[num_blocks, block_size, width]`. A block id
names the same slots in every layer and kind, so one block table covers them all, and reusing a
cached prefix brings the indexer keys along with the latents.

`blocks.BlockManager` decides which blocks a sequence owns; `PagedKVCache.view(tables)` turns the
batch's block tables into the `KVCache` that `Transformer.step` writes to and reads from.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from ..model.cache import DecodeRows
from ..model.config import ModelConfig
from ..model.indexer import KeySketch, SketchedKeys, empty_key_sketch, sketch_bytes, sketch_supported, store_sketch


class PagedKVCache:
    """Preallocated block storage for every cache layer (main layers plus MTP layers)."""

    def __init__(self, config: ModelConfig, num_layers: int, num_blocks: int, block_size: int,
                 dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu"):
        self.num_blocks, self.block_size = num_blocks, block_size
        self.dtype, self.device = dtype, torch.device(device)

        def buf(width: int) -> list[torch.Tensor]:
            return [torch.zeros(num_blocks, block_size, width, dtype=dtype, device=device)
                    for _ in range(num_layers)]

        self.latent = buf(config.kv_lora_rank)                                   # [blocks, B, R]
        self.k_pe = buf(config.qk_rope_head_dim)                                 # [blocks, B, Dr]
        self.index_k = self.index_sketch = None                                  # [blocks, B, Di]
        if config.has_indexer:   # bf16 holds the FP8-exact keys without loss, at half of fp32's bytes
            self.index_k = [torch.zeros(num_blocks, block_size, config.index_head_dim, dtype=torch.bfloat16,
                                        device=device) for _ in range(num_layers)]
            if sketch_supported(config.index_head_dim, device):
                self.index_sketch = [empty_key_sketch(num_blocks * block_size, config.index_head_dim, device)
                                     for _ in range(num_layers)]             # by slot

    @staticmethod
    def bytes_per_block(config: ModelConfig, num_layers: int, block_size: int,
                        dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu") -> int:
        """Bytes one block takes across all layers and kinds."""
        width = (config.kv_lora_rank + config.qk_rope_head_dim) * dtype.itemsize
        if config.has_indexer:                                               # indexer keys are bf16
            width += config.index_head_dim * 2
            if sketch_supported(config.index_head_dim, device):
                width += sketch_bytes(config.index_head_dim)
        return num_layers * block_size * width

    @classmethod
    def blocks_for_budget(cls, config: ModelConfig, num_layers: int, block_size: int,
                          dtype: torch.dtype, budget_bytes: int, device: torch.device | str = "cpu") -> int:
        """How many blocks fit in `budget_bytes`; refuses a budget that holds none."""
        per_block = cls.bytes_per_block(config, num_layers, block_size, dtype, device)
        if budget_bytes < per_block:
            raise ValueError(f"a cache budget of {budget_bytes} bytes holds no block "
                             f"({per_block} bytes each at block_size={block_size})")
        return budget_bytes // per_block

    def flat_layers(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor] | None,
                                   list[KeySketch] | None]:
        """Every layer's storage as `[num_blocks * block_size, ...]` views: latent, k_pe, index_k,
        index_sketch. Made once: they view storage that never moves."""
        if self._flat_layers is None:
            index_k = [_flat(t) for t in self.index_k] if self.index_k is not None else None
            self._flat_layers = ([_flat(t) for t in self.latent], [_flat(t) for t in self.k_pe], index_k,
                                 self.index_sketch)
        return self._flat_layers

    _flat_layers = None

    def slot_table(self, block_tables: Sequence[Sequence[int]], width: int | None = None) -> torch.Tensor:
        """[B, width]: the slot of every position 0..width-1 of each table (width: all the positions
        the longest table covers). Past a short table's end, slots of block 0, which callers never
        read as that sequence's."""
        return torch.from_numpy(self._slots(block_tables, width)).to(self.device)

    def _slots(self, block_tables: Sequence[Sequence[int]], width: int | None) -> np.ndarray:
        # numpy: a decode step builds its indices in microseconds, where torch ops cost tens. The
        # tables go in as one flat run (numpy's per-row assignment from a list costs ~1 us a row).
        bs = self.block_size
        blocks_wide = max(map(len, block_tables)) if width is None else -(-width // bs)
        rows = [t[:blocks_wide] for t in block_tables]
        lengths = np.fromiter(map(len, rows), np.int64, len(rows))
        blocks = np.zeros((len(rows), blocks_wide), dtype=np.int64)
        blocks[np.arange(blocks_wide)[None, :] < lengths[:, None]] = np.fromiter(
            itertools.chain.from_iterable(rows), np.int64, int(lengths.sum()))
        slots = (blocks[:, :, None] * bs + np.arange(bs)).reshape(len(rows), blocks_wide * bs)
        return np.ascontiguousarray(slots[:, :width])

    def decode_rows(self, block_tables: Sequence[Sequence[int]], positions: np.ndarray) -> DecodeRows:
        """The `DecodeRows` of a dense decode step: sequence i writes position positions[i] and reads
        positions 0..positions[i] (its table covers them), all as index tensors."""
        width = int(positions.max()) + 1
        read = self._slots(block_tables, width)
        write = read[np.arange(len(positions)), positions]
        visible = np.arange(width)[None, :] <= positions[:, None]
        return DecodeRows(*self.flat_layers(), *(torch.from_numpy(a).to(self.device) for a in (write, read, visible)))

    def view(self, block_tables: Sequence[Sequence[int]]) -> PagedCacheView:
        """The `KVCache` of one forward call: sequence i of the batch uses `block_tables[i]`."""
        return PagedCacheView(self, block_tables)


class PagedCacheView:
    """Implements the model's `KVCache` protocol over a `PagedKVCache` for one forward batch.

    Each sequence's slot index (`block * block_size + offset`, for every position its table
    covers) is computed once per call, so `store` and `load` are a single `index_copy_` /
    `index_select` on the flat `[num_blocks * block_size, width]` view of a layer's tensor.
    """

    def __init__(self, cache: PagedKVCache, block_tables: Sequence[Sequence[int]]):
        self.cache = cache
        bs = cache.block_size
        # One [B, max slots] table (one host-to-device copy), so a batched gather is a single
        # indexing op; each sequence's own slots are views of its row.
        self.slot_table = cache.slot_table(block_tables) if block_tables else None
        self.slots = [self.slot_table[i, :len(table) * bs] for i, table in enumerate(block_tables)]
        self.slot_counts = torch.tensor([len(table) * bs for table in block_tables], device=cache.device)
        # A sequence whose blocks are one ascending run (the usual case: the free pool hands out
        # consecutive ids) is read through a view, so the O(T) reads of a long context copy nothing.
        self.first_slot = [table[0] * bs if table and list(table) == list(range(table[0], table[0] + len(table)))
                           else None for table in block_tables]

    def store_tokens(self, layer: int, seqs: torch.Tensor, positions: torch.Tensor, latent: torch.Tensor,
                     k_pe: torch.Tensor, index_k: torch.Tensor | None) -> None:
        """Write every token of the call at once: one index_copy_ per kind, whatever the batch."""
        past = positions >= self.slot_counts[seqs]
        if bool(past.any()):
            i = int(past.nonzero()[0, 0])
            seq = int(seqs[i])
            raise ValueError(f"sequence {seq} has {int(self.slot_counts[seq])} slots in its blocks; "
                             f"position {int(positions[i])} needs more")
        slots = self.slot_table[seqs, positions]
        c = self.cache
        _flat(c.latent[layer]).index_copy_(0, slots, latent.to(c.dtype))
        _flat(c.k_pe[layer]).index_copy_(0, slots, k_pe.to(c.dtype))
        if c.index_k is not None and index_k is not None:
            _flat(c.index_k[layer]).index_copy_(0, slots, index_k.to(torch.bfloat16))
            if c.index_sketch is not None:
                store_sketch(c.index_sketch[layer], slots, index_k)

    def load(self, layer: int, seq: int, end: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Rows `[0, end)` of sequence `seq`: (latent [T, R], k_pe [T, Dr], index_k [T, Di] or None)."""
        c = self.cache
        index_k = self._rows(c.index_k[layer], seq, end) if c.index_k is not None else None
        return self._rows(c.latent[layer], seq, end), self._rows(c.k_pe[layer], seq, end), index_k

    def load_index_keys(self, layer: int, seq: int, end: int) -> torch.Tensor:
        """Indexer keys of rows `[0, end)` of sequence `seq`: [T, Di]."""
        return self._rows(self.cache.index_k[layer], seq, end)

    def load_index_sketch(self, layer: int, seq: int, end: int) -> SketchedKeys | None:
        """The int8 sketch of those keys (read in place, through their slots), or None where this
        cache keeps none."""
        sketch = self.cache.index_sketch
        if sketch is None:
            return None
        return SketchedKeys(sketch[layer], self._slots(seq, end), _flat(self.cache.index_k[layer]))

    def layer_rows(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A layer's latent and k_pe storage by slot: [blocks * block_size, R], [.., Dr] views."""
        c = self.cache
        return _flat(c.latent[layer]), _flat(c.k_pe[layer])

    def slots_of(self, seqs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Slots of positions [B, K] of the sequences seqs [B]: [B, K]."""
        return self.slot_table[seqs[:, None], positions]

    def _rows(self, t: torch.Tensor, seq: int, end: int) -> torch.Tensor:
        """Rows [0, end) of one sequence from a layer tensor: a view when its blocks are one run."""
        slots = self._slots(seq, end)
        first = self.first_slot[seq]
        if first is not None:
            return _flat(t)[first:first + end]
        return _flat(t).index_select(0, slots)

    def _slots(self, seq: int, end: int) -> torch.Tensor:
        """Slots of positions [0, end) of sequence `seq`; a position past its blocks is a caller bug."""
        slots = self.slots[seq]
        if end > slots.shape[0]:
            raise ValueError(f"sequence {seq} has {slots.shape[0]} slots in its blocks; "
                             f"position {end - 1} needs more")
        return slots[:end]


def _flat(t: torch.Tensor) -> torch.Tensor:
    """[num_blocks, block_size, ...] -> [num_blocks * block_size, ...], a view sharing storage."""
    return t.flatten(0, 1)
