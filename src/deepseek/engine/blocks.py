"""Block bookkeeping for the paged KV cache: who owns which block, and which blocks hold a known prefix.

A sequence's attention state lives in fixed-size blocks of `block_size` token slots. Its `BlockTable`
maps logical block i (positions `[i*B, (i+1)*B)`) to a physical block id; the same id addresses the
latent, k_pe and indexer-key rows of every layer (storage: `cache.PagedKVCache`). No tensors here.

Prefix caching. A block that is full *and computed* gets a chained digest

    digest_i = blake2b(salt, digest_{i-1}, token ids of block i)

so one digest names the whole prefix up to the block's end, under one tenant's salt: two API keys
with different salts can never meet in the digest map. A new prompt walks its own digests and reuses
the longest run of hits. Only full, computed blocks become shareable, so a shared block is never
written again: new tokens always land in a block the sequence owns alone (no copy-on-write).

Every block is in exactly one state, and `check_integrity()` proves it:
* free       — in the free pool, no digest;
* referenced — refcount = number of live block tables holding it (with or without a digest);
* cached     — refcount 0 but a digest: still reusable; evicted least-recently-released first when
               a fresh block is needed.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

# 128 bits: even 2^40 cached blocks collide with odds ~1e-15, so digests stand in for token ids.
_DIGEST_BYTES = 16
_ROOT = bytes(_DIGEST_BYTES)    # the parent digest of a sequence's first block


def block_digest(salt: bytes, parent: bytes, token_ids: Sequence[int]) -> bytes:
    """The stable digest of one full block: tenant salt, the parent block's digest, int64 token ids.

    Not Python's `hash()`, which is salted per process and only 64 bits.
    """
    h = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    h.update(struct.pack("<I", len(salt)))   # length prefix: salt bytes can't bleed into the parent
    h.update(salt)
    h.update(parent)
    h.update(struct.pack(f"<{len(token_ids)}q", *token_ids))
    return h.digest()


@dataclass(eq=False)   # identity semantics: the manager keeps a set of live tables
class BlockTable:
    """One sequence's blocks. The scheduler's sequence record holds it; only the manager changes it.

    Position p lives in slot `blocks[p // block_size] * block_size + p % block_size`, and
    `len(blocks) == ceil(num_tokens / block_size)`. After `free` the table is empty and dead.
    """

    salt: bytes
    blocks: list[int] = field(default_factory=list)
    num_tokens: int = 0             # positions [0, num_tokens) have a slot
    num_cached_tokens: int = 0      # prompt tokens found in the prefix cache at allocation
    digests: list[bytes] = field(default_factory=list)  # chain digest of each full, computed block


class BlockManager:
    """Hands out blocks, shares computed prefixes, and takes blocks back. Pure bookkeeping.

    A scheduler drives it with verb pairs: `can_allocate`/`allocate` to admit a prompt,
    `can_append`/`append` to grow a running sequence, `register` after each forward pass, and
    `free` on finish, abort or preemption. `check_integrity` may be called at any point.
    """

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"need num_blocks > 0 and block_size > 0, got {num_blocks}, {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self._refs = [0] * num_blocks
        self._digest: list[bytes | None] = [None] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._cached: OrderedDict[int, None] = OrderedDict()   # refcount 0 with a digest, LRU first
        self._by_digest: dict[bytes, int] = {}
        self._tables: set[BlockTable] = set()                  # live tables: integrity, double free

    @property
    def num_free_blocks(self) -> int:
        """Blocks a new allocation can take: the free pool plus cached blocks nobody references."""
        return len(self._free) + len(self._cached)

    def usage(self) -> float:
        """Fraction of blocks held by live sequences (unreferenced cached blocks count as free)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def can_allocate(self, token_ids: Sequence[int], salt: bytes = b"") -> bool:
        """Whether `allocate(token_ids, salt)` would succeed now."""
        return self._shortfall(token_ids, self._prefix_hits(token_ids, salt)) <= 0

    def allocate(self, token_ids: Sequence[int], salt: bytes = b"") -> BlockTable:
        """Reserve slots for a whole prompt, reusing the longest cached prefix for this salt.

        The returned table's `num_cached_tokens` (a multiple of block_size, < len(token_ids)) says
        which positions already hold their KV rows; the caller computes from there. The whole
        prompt is reserved up front so an admitted prompt never stalls mid-prefill for blocks.
        """
        if not token_ids:
            raise ValueError("a prompt needs at least one token")
        hits = self._prefix_hits(token_ids, salt)
        if self._shortfall(token_ids, hits) > 0:
            raise RuntimeError(f"not enough free blocks for {len(token_ids)} tokens; ask can_allocate first")
        table = BlockTable(salt)
        for block, digest in hits:   # claim hits before taking fresh blocks: taking may evict them
            self._cached.pop(block, None)
            self._refs[block] += 1
            table.blocks.append(block)
            table.digests.append(digest)
        table.blocks += [self._take() for _ in range(self._blocks_for(len(token_ids)) - len(hits))]
        table.num_tokens = len(token_ids)
        table.num_cached_tokens = len(hits) * self.block_size
        self._tables.add(table)
        return table

    def can_append(self, table: BlockTable, num_new: int = 1) -> bool:
        """Whether `append(table, num_new)` would succeed now."""
        return self._blocks_for(table.num_tokens + num_new) - len(table.blocks) <= self.num_free_blocks

    def append(self, table: BlockTable, num_new: int = 1) -> None:
        """Reserve slots for `num_new` more positions (a decode step, or draft tokens to verify)."""
        self._check_live(table)
        fresh = self._blocks_for(table.num_tokens + num_new) - len(table.blocks)   # usually 0
        if num_new <= 0 or fresh > self.num_free_blocks:
            raise RuntimeError(f"cannot append {num_new} tokens; ask can_append first")
        table.num_tokens += num_new
        for _ in range(fresh):
            table.blocks.append(self._take())

    def register(self, table: BlockTable, token_ids: Sequence[int], num_computed: int) -> None:
        """Record that positions `[0, num_computed)` hold computed KV rows of `token_ids`.

        Each newly full block gets its digest and becomes reusable by later prompts with the same
        salt. Call it only after the forward pass that wrote the rows: a digest promises they are
        there, which is also why an aborted prefill leaves nothing half-written in the cache.
        If another block already has the same digest (equal prompts computed side by side), that
        one stays the cached copy and this block is simply freed with its table later.
        """
        self._check_live(table)
        if not 0 <= num_computed <= min(table.num_tokens, len(token_ids)):
            raise ValueError(f"num_computed={num_computed} outside the table's {table.num_tokens} slots")
        bs = self.block_size
        for i in range(len(table.digests), num_computed // bs):
            parent = table.digests[-1] if table.digests else _ROOT
            digest = block_digest(table.salt, parent, token_ids[i * bs:(i + 1) * bs])
            table.digests.append(digest)
            if digest not in self._by_digest:
                self._by_digest[digest] = table.blocks[i]
                self._digest[table.blocks[i]] = digest

    def free(self, table: BlockTable) -> None:
        """Release a finished, aborted or preempted sequence's blocks; the table is dead afterwards.

        Blocks with a digest stay cached until evicted; the rest return to the free pool. Release
        runs last block first, so a prefix's tail is evicted before its head and the surviving
        heads stay reachable (a lookup stops at the first missing block).
        """
        self._check_live(table)
        self._tables.remove(table)
        for block in reversed(table.blocks):
            self._refs[block] -= 1
            if self._refs[block] == 0:
                if self._digest[block] is None:
                    self._free.append(block)
                else:
                    self._cached[block] = None   # most recently released: evicted last
        table.blocks, table.digests, table.num_tokens = [], [], 0

    def check_integrity(self) -> None:
        """Assert that every block is in exactly one state and every count and digest agrees.

        O(num_blocks + total table length): cheap enough for tests and a scheduler debug flag.
        """
        holders = [0] * self.num_blocks
        for table in self._tables:
            self._check_table(table)
            for block in table.blocks:
                holders[block] += 1
        free, cached = set(self._free), set(self._cached)
        assert len(free) == len(self._free), "a block appears twice in the free pool"
        for b in range(self.num_blocks):
            states = {"free": b in free, "cached": b in cached, "referenced": holders[b] > 0}
            where = [name for name, yes in states.items() if yes]
            assert len(where) == 1, f"block {b} must be in exactly one state, is in {where or 'none'}"
            assert self._refs[b] == holders[b], \
                f"block {b} has refcount {self._refs[b]} but {holders[b]} live block tables hold it"
            digest = self._digest[b]
            assert digest is not None or b not in cached, f"cached block {b} has no digest"
            assert digest is None or b not in free, f"free block {b} still has a digest"
            assert digest is None or self._by_digest.get(digest) == b, \
                f"block {b}'s digest maps to block {self._by_digest.get(digest)} in the prefix map"
        for digest, b in self._by_digest.items():
            assert self._digest[b] == digest, f"the prefix map names block {b}, which has another digest"

    # -- internals -----------------------------------------------------------------------------

    def _blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _prefix_hits(self, token_ids: Sequence[int], salt: bytes) -> list[tuple[int, bytes]]:
        """The longest run of cached blocks at the start of a prompt, as (block, digest) pairs.

        The block holding the last prompt token is never reused, even when it is full: the model
        must compute at least that token to produce next-token logits, and computing it writes
        its row, which must not happen in a shared block. So L tokens reuse at most (L-1)//B blocks.
        """
        hits, parent, bs = [], _ROOT, self.block_size
        for i in range((len(token_ids) - 1) // bs):
            parent = block_digest(salt, parent, token_ids[i * bs:(i + 1) * bs])
            block = self._by_digest.get(parent)
            if block is None:
                break
            hits.append((block, parent))
        return hits

    def _shortfall(self, token_ids: Sequence[int], hits: list[tuple[int, bytes]]) -> int:
        """Blocks missing to allocate this prompt; a revived cached hit is no longer evictable."""
        fresh = self._blocks_for(len(token_ids)) - len(hits)
        revived = sum(1 for block, _ in hits if self._refs[block] == 0)
        return fresh - (self.num_free_blocks - revived)

    def _take(self) -> int:
        """A fresh block with refcount 1: from the free pool, else by evicting the LRU cached block."""
        if self._free:
            block = self._free.popleft()
        else:
            block, _ = self._cached.popitem(last=False)
            del self._by_digest[self._digest[block]]
            self._digest[block] = None
        self._refs[block] = 1
        return block

    def _check_live(self, table: BlockTable) -> None:
        if table not in self._tables:
            raise ValueError("this block table is not live here (already freed, or another manager's)")

    def _check_table(self, table: BlockTable) -> None:
        assert len(table.blocks) == self._blocks_for(table.num_tokens), \
            f"a table with {table.num_tokens} tokens holds {len(table.blocks)} blocks"
        assert len(set(table.blocks)) == len(table.blocks), f"a table holds a block twice: {table.blocks}"
        assert all(0 <= b < self.num_blocks for b in table.blocks), f"block id out of range: {table.blocks}"
        assert len(table.digests) <= table.num_tokens // self.block_size, "a digest for a block not full"
        for i, block in enumerate(table.blocks):
            digest = self._digest[block]
            assert digest is None or (i < len(table.digests) and table.digests[i] == digest), \
                f"block {block} at index {i} of a table is cached under another prefix"
