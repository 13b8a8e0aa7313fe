"""Continuous batching with chunked prefill and preemption by recomputation.

Every step the scheduler fills a token budget:
1. running sequences first, decodes (one token) before prefill chunks, oldest first; a sequence
   whose next tokens need a new block and find none preempts the newest running sequence (its
   blocks are freed; it goes back to the front of the queue and is recomputed later);
2. then waiting sequences are admitted while the budget, the sequence cap and the free blocks
   allow. A whole prompt's blocks are reserved on admission, reusing its longest cached prefix;
   a long prompt is then prefilled in chunks across steps while decodes keep flowing.

Invariants: a sequence is in exactly one of `waiting`, `running` or neither (finished); every
running sequence holds a live block table covering `num_computed` positions.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from .blocks import BlockManager
from .request import Sequence, Status


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 512     # chunked-prefill budget per step

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be >= 1")


@dataclass(frozen=True)
class ScheduledBatch:
    """The sequences of one step and how many new tokens each one computes."""

    seqs: tuple[Sequence, ...]
    num_tokens: tuple[int, ...]

    def __bool__(self) -> bool:
        return bool(self.seqs)


class Scheduler:
    def __init__(self, config: SchedulerConfig, blocks: BlockManager):
        self.config, self.blocks = config, blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        budget = self.config.max_num_batched_tokens
        seqs, counts = [], []
        preemptions_before = self.num_preemptions
        # Decodes first (lowest latency), then sequences still prefilling; stable, so oldest first.
        for seq in sorted(list(self.running), key=lambda s: s.num_uncomputed > 1):
            if budget == 0:
                break
            if seq.status is not Status.RUNNING:      # preempted earlier in this loop
                continue
            n = min(seq.num_uncomputed, budget)
            if not self._reserve(seq, n):
                continue
            seqs.append(seq)
            counts.append(n)
            budget -= n
        # Admitting right after a preemption would only thrash: the freed blocks are needed to grow.
        preempted = self.num_preemptions > preemptions_before
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs and not preempted:
            seq = self.waiting[0]
            if not self.blocks.can_allocate(seq.token_ids, seq.request.salt):
                break
            self.waiting.popleft()
            self._admit(seq)
            n = min(seq.num_uncomputed, budget)
            seqs.append(seq)
            counts.append(n)
            budget -= n
        return ScheduledBatch(tuple(seqs), tuple(counts))

    def finish(self, seq: Sequence, reason: str) -> None:
        """End a sequence (finished, stopped or aborted) and give its blocks back."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if seq.table is not None:
            self.blocks.free(seq.table)
            seq.table = None
        seq.status, seq.finish_reason = Status.FINISHED, reason

    def _admit(self, seq: Sequence) -> None:
        seq.table = self.blocks.allocate(seq.token_ids, seq.request.salt)
        seq.num_computed = seq.table.num_cached_tokens
        if seq.cached_prompt_tokens is None:
            seq.cached_prompt_tokens = min(seq.table.num_cached_tokens, seq.num_prompt_tokens)
        seq.status = Status.RUNNING
        if seq.first_scheduled_time is None:
            seq.first_scheduled_time = time.monotonic()
        self.running.append(seq)

    def _reserve(self, seq: Sequence, n: int) -> bool:
        """Make room for `n` more positions of `seq`, preempting newer sequences if needed."""
        need = seq.num_computed + n - seq.table.num_tokens
        if need <= 0:
            return True
        while not self.blocks.can_append(seq.table, need):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        self.blocks.append(seq.table, need)
        return True

    def _preempt(self, seq: Sequence) -> None:
        """Free a running sequence's blocks and requeue it at the front; it is recomputed later."""
        self.running.remove(seq)
        self.blocks.free(seq.table)
        seq.table, seq.num_computed, seq.status = None, 0, Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
