"""One engine step on the model: a scheduled batch in, one sampled token per finishing row out.

The runner flattens the step's new tokens of every sequence into one `ForwardBatch` over the
paged cache and runs `model.step` once; a step in which every sequence decodes one token densely
runs `model.decode` and the LM head instead (the same arithmetic, with tensor-only metadata, as one
function that the engine's `compile` option compiles). Either way it projects only the rows that
need a next token (the last token of a decode or of a prompt's final chunk), applies grammar masks
and sampler-level rules, and samples all rows in one vectorised call. Tensor and expert
parallelism would wrap the model here without changing the scheduler.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from deepseek.model import ForwardBatch, Transformer
from deepseek.model.cache import DecodeRows

from .cache import PagedKVCache
from .request import Sequence, TokenLogprob
from .sampler import Sampler
from .scheduler import ScheduledBatch


class Sampled(NamedTuple):
    token_id: int
    logprob: TokenLogprob | None


class ModelRunner:
    def __init__(self, model: Transformer, kv: PagedKVCache, sampler: Sampler | None = None,
                 num_valid_tokens: int | None = None, compile: bool = False):
        self.model, self.kv = model, kv

        def decode_logits(tokens: torch.Tensor, positions: torch.Tensor, rows: DecodeRows, cos: torch.Tensor,
                          sin: torch.Tensor) -> torch.Tensor:
            return model.logits(model.decode(tokens, positions, rows, (cos, sin)))

        self.compiled = compile
        self.decode_logits = decode_logits
        if compile:
            # Only the batch size and the context width vary (`_decode` marks them dynamic: the
            # weights keep static shapes, and one graph serves every batch >= 2). Guards on the
            # model's own attributes are skipped: its weights never change here. The graph's host
            # code is C++ (`cpp_wrapper`), not Python calling each of its ~100 kernels and ops, and
            # checks no output shapes (inductor's asserts were ~170 Python calls a step). The weights
            # are frozen into the graph as constants (`freezing`, for inference): the time outside
            # the graph's own code fell from ~0.15 to ~0.11 ms a call at batch 1.
            self.decode_logits = torch.compile(decode_logits, options={
                "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe, "cpp_wrapper": True,
                "size_asserts": False, "alignment_asserts": False, "scalar_asserts": False, "freezing": True})
        # Input classes (batch 1?, width 1?, threads) the compiled step has run under full guards.
        self._guarded: set[tuple[bool, bool, int]] = set()
        self.decode_in_place = model.decode_reads_in_place()
        self.sampler = sampler or Sampler()
        self.eos = model.config.eos_token_id
        # Tokenizers may have fewer entries than the model's (padded) vocabulary: never sample those.
        self.num_valid_tokens = num_valid_tokens or model.config.vocab_size

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> dict[Sequence, Sampled]:
        seqs, counts = batch.seqs, batch.num_tokens
        logits, rows = self._decode(seqs) if self._dense_decode(seqs, counts) else self._step(seqs, counts)
        if not rows:
            return {}
        picked = [seqs[i] for i in rows]
        self._constrain(logits, picked)
        out = self.sampler.sample(logits, [s.params for s in picked], [s.generator for s in picked],
                                  [s.output_counts for s in picked])
        token_ids = out.token_ids.tolist()
        if out.logprobs is None:
            return {seq: Sampled(token, None) for seq, token in zip(picked, token_ids)}
        return {seq: Sampled(token_ids[r], _logprob(out, r, seq)) for r, seq in enumerate(picked)}

    def _step(self, seqs: list[Sequence], counts: tuple[int, ...]) -> tuple[torch.Tensor, list[int]]:
        """Any batch through `model.step`: logits [R, V] of the rows that end their known tokens."""
        tokens = [t for s, n in zip(seqs, counts) for t in s.token_ids[s.num_computed:s.num_computed + n]]
        forward = ForwardBatch(
            starts=tuple(s.num_computed for s in seqs), lengths=counts,
            sparse=tuple(s.request.sparse for s in seqs),
            cache=self.kv.view([s.table.blocks for s in seqs]))
        hidden = self.model.step(torch.tensor(tokens, device=self.model.device), forward)
        ends = forward.last_token_indices()
        rows = [i for i, (s, n) in enumerate(zip(seqs, counts)) if s.num_computed + n == len(s.token_ids)]
        return self.model.logits(hidden[[ends[i] for i in rows]]), rows

    def _decode(self, seqs: list[Sequence]) -> tuple[torch.Tensor, list[int]]:
        """One new token per sequence, dense, through `decode_logits` (compiled or not): the cache
        indices are built straight from the block tables. Returns `_step`'s (logits, rows)."""
        computed = [s.num_computed for s in seqs]         # Python ints: numpy scalars index slowly
        starts = np.array(computed)
        tokens = torch.from_numpy(np.array([s.token_ids[p] for s, p in zip(seqs, computed)])).to(self.kv.device)
        rows = self.kv.decode_rows([s.table.blocks for s in seqs], starts)
        positions = torch.from_numpy(starts).to(self.kv.device)
        # The rotary angles' cos and sin, here: compiled, inductor would fuse their computation into
        # every layer's kernels that read them, and recompute them there, per head and layer.
        cos, sin = self.model.rope(positions)
        if self.compiled:       # one graph for every batch size >= 2 and context width
            for t in (tokens, positions, rows.write_slots, rows.read_slots, rows.visible, cos, sin):
                for dim in range(t.dim()):
                    torch._dynamo.maybe_mark_dynamic(t, dim)
        logits = self._call_decode(tokens, positions, rows, cos, sin)
        # A prompt's one-token chunk is a decode-shaped step too, but needs no next token yet.
        rows = [i for i, (s, p) in enumerate(zip(seqs, computed)) if p + 1 == len(s.token_ids)]
        return (logits if len(rows) == len(seqs) else logits[rows]), rows

    def _call_decode(self, tokens: torch.Tensor, positions: torch.Tensor, rows: DecodeRows, cos: torch.Tensor,
                     sin: torch.Tensor) -> torch.Tensor:
        """`decode_logits`. Compiled, the first call of each class of inputs (batch 1 or more,
        context width 1 or more, and the thread count, which inductor's C++ kernels specialize on:
        the only ways the inputs differ) evaluates every guard, compiling where none holds; later
        calls of that class evaluate only the guards that tell the compiled graphs apart (torch's
        `skip_guard_eval_unsafe` stance), whose full check had grown to ~0.14 ms a step at batch 32
        (~0.02 at batch 1): 5% of the step. Should those guards still ask for a new graph, torch
        refuses before running anything, and the call is made again with every guard."""
        if not self.compiled:
            return self.decode_logits(tokens, positions, rows, cos, sin)
        key = (tokens.shape[0] == 1, rows.read_slots.shape[1] == 1, torch.get_num_threads())
        if key in self._guarded:
            try:
                with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                    return self.decode_logits(tokens, positions, rows, cos, sin)
            except RuntimeError as e:
                if "skip_guard_eval_unsafe" not in str(e):
                    raise
        logits = self.decode_logits(tokens, positions, rows, cos, sin)
        self._guarded.add(key)
        return logits

    def _dense_decode(self, seqs: list[Sequence], counts: tuple[int, ...]) -> bool:
        """Whether `decode` runs this step: one new token per sequence, each attending to every
        cached row (dense requests, and sparse ones whose context is still within index_topk,
        where DSA selects every key)."""
        if not all(n == 1 for n in counts) or any(
                s.request.sparse and self.model.uses_indexer(s.num_computed + 1) for s in seqs):
            return False
        # `decode` has no Python per sequence, so it is the cheaper step for any batch (a lone
        # eager sequence: 22% less time per token) where it reads the rows in place; where it
        # would gather every visible row first (no native kernels), `step` reads a lone sequence's
        # rows in place, cheaper at long context.
        return len(seqs) > 1 or self.compiled or self.decode_in_place

    def _constrain(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        if self.num_valid_tokens < logits.shape[1]:
            logits[:, self.num_valid_tokens:] = float("-inf")
        no_eos = [row for row, seq in enumerate(seqs) if seq.params.ignore_eos]
        if len(no_eos) == len(seqs):
            logits[:, self.eos] = float("-inf")
        elif no_eos:
            logits[no_eos, self.eos] = float("-inf")
        for row, seq in enumerate(seqs):
            if seq.grammar_state is not None:
                seq.grammar_state.apply(logits[row])


def _logprob(out, row: int, seq: Sequence) -> TokenLogprob | None:
    if not seq.params.logprobs or out.logprobs is None:
        return None
    n = seq.params.top_logprobs
    top = ()
    if n:
        top = tuple(zip(out.top_logprob_ids[row, :n].tolist(), out.top_logprobs[row, :n].tolist()))
    return TokenLogprob(int(out.token_ids[row]), float(out.logprobs[row]), top)
