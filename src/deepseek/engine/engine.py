"""The synchronous engine: requests in, one batched step at a time, streamed outputs back.

`LLMEngine.step()` schedules a batch, runs it, and turns each sampled token into a
`RequestOutput` (text delta, finish reason, usage and sparse-attention figures). It is not
thread-safe; `AsyncEngine` runs it on its own thread for the server, `LLM` drives it offline.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from deepseek.model import Transformer

from .blocks import BlockManager
from .cache import PagedKVCache
from .detokenizer import IncrementalDetokenizer
from .request import Request, RequestOutput, Sequence
from .runner import ModelRunner, Sampled
from .scheduler import Scheduler, SchedulerConfig


def freeze_startup_heap() -> None:
    """Collect, then move every object alive now (the model, tokenizer, compiled graphs) out of the
    garbage collector's view, as vLLM does once its engine is up: the collector's full passes then
    walk only what serving allocates (they were ~4% of a batch-32 decode step here). Call it once,
    after start-up; objects frozen here are still freed when their last reference goes. Also
    `keep_freed_memory()`."""
    gc.collect()
    gc.freeze()
    keep_freed_memory()


def keep_freed_memory(block: int = 32 << 20, keep: int = 1 << 30) -> bool:
    """glibc's malloc: serve blocks up to `block` bytes from the heap and keep freed memory there (up
    to `keep`), rather than mapping each large block fresh and unmapping it when freed. A step's
    intermediate tensors (MBs each) otherwise page-fault on every first touch: batch-32 generation
    ran 9-15% faster with this (the same process, alternating), batch 1 the same; training, whose
    activations run to hundreds of MB, twice as fast (`deepseek train`). The process's RSS then
    stays near its peak. False where the C library has no `mallopt` or refuses the values."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3       # <malloc.h>
    return all(mallopt(option, value) == 1 for option, value in
               ((m_mmap_threshold, block), (m_trim_threshold, keep), (m_top_pad, 64 << 20)))


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 512
    block_size: int = 16
    cache_bytes: int = 256 << 20         # KV + indexer cache budget
    max_model_len: int | None = None     # default: the model's max_position_embeddings
    # torch.compile the dense decode step and LM head (two graphs: batch 1, and every batch >= 2;
    # any context length).
    # The first steps of each new shape class pay the compile, tens of seconds on a CPU.
    compile: bool = False


class LLMEngine:
    def __init__(self, model: Transformer, tokenizer=None, config: EngineConfig = EngineConfig()):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        mc = model.config
        wanted_len = config.max_model_len or mc.max_position_embeddings
        per_budget = PagedKVCache.blocks_for_budget(mc, model.num_cache_layers, config.block_size,
                                                    model.dtype, config.cache_bytes, model.device)
        # Never more blocks than every sequence at full length could use.
        num_blocks = min(per_budget, math.ceil(config.max_num_seqs * wanted_len / config.block_size))
        self.max_model_len = min(wanted_len, num_blocks * config.block_size, mc.max_position_embeddings)
        self.blocks = BlockManager(num_blocks, config.block_size)
        self.kv = PagedKVCache(mc, model.num_cache_layers, num_blocks, config.block_size,
                               model.dtype, model.device)
        self.scheduler = Scheduler(SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens),
                                   self.blocks)
        valid = min(mc.vocab_size, tokenizer.get_vocab_size()) if tokenizer is not None else None
        model.prepare_inference()
        self.runner = ModelRunner(model, self.kv, num_valid_tokens=valid, compile=config.compile)
        self.seqs: dict[str, Sequence] = {}

    @classmethod
    def from_pretrained(cls, path: str | Path, config: EngineConfig = EngineConfig(),
                        dtype: torch.dtype = torch.bfloat16, device: str = "cpu", **kwargs) -> "LLMEngine":
        from deepseek.tokenizer import load_tokenizer

        model = Transformer.from_pretrained(path, dtype=dtype, device=device, mtp=False, **kwargs)
        return cls(model, load_tokenizer(path), config)

    # ----- requests -----
    def validate(self, request: Request) -> None:
        """Raise ValueError for a request that can never run (the server's 400). Reads config only."""
        prompt = request.prompt_token_ids
        if not prompt:
            raise ValueError("the prompt is empty")
        if len(prompt) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(prompt)} tokens; this model's context is "
                             f"{self.max_model_len} tokens, including the completion")
        if min(prompt) < 0 or max(prompt) >= self.model.config.vocab_size:
            raise ValueError("prompt token ids must lie in [0, vocab_size)")
        if request.sparse and not self.model.config.has_indexer:
            raise ValueError("this model has no lightning indexer: only dense attention")

    def add_request(self, request: Request) -> None:
        """Queue a request; raises ValueError for one that can never run, or a duplicate id."""
        if request.request_id in self.seqs:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        self.validate(request)
        prompt = request.prompt_token_ids
        detok = None
        if self.tokenizer is not None:
            detok = IncrementalDetokenizer(self.tokenizer, prompt, stop=request.params.stop)
        seq = Sequence(request, detok)
        if seq.grammar_active:
            seq.grammar_state = request.grammar.matcher()
        self.seqs[request.request_id] = seq
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request at once and free its blocks; None if it is unknown or already finished."""
        seq = self.seqs.pop(request_id, None)
        if seq is None:
            return None
        self.scheduler.finish(seq, "abort")
        return self._output(seq, "", (), (), finished=True)

    def warm_up(self) -> None:
        """Run throw-away requests at batch sizes 1 and 2 (its own prefix-cache salt, so no tenant
        ever hits them): a compiled decode step then compiles here, not on a client's first request."""
        from .sampler import SamplingParams

        params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
        for n in (1, 2):
            for i in range(n):
                self.add_request(Request(f"warm-up-{n}-{i}", (self.model.config.bos_token_id,) * (2 + i),
                                         params, sparse=False, salt=b"warm-up"))
            while self.has_unfinished():
                self.step()

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    def check_integrity(self) -> None:
        """Every block accounted for, and every live sequence where the scheduler says it is."""
        self.blocks.check_integrity()
        live = set(self.scheduler.waiting) | set(self.scheduler.running)
        assert live == set(self.seqs.values()), "engine and scheduler disagree on live sequences"
        for seq in self.scheduler.running:
            assert seq.table is not None and seq.table.num_tokens >= seq.num_computed

    # ----- the loop -----
    def step(self) -> list[RequestOutput]:
        batch = self.scheduler.schedule()
        if not batch:
            return []
        sampled = self.runner.run(batch)
        outputs, bs = [], self.blocks.block_size
        for seq, n in zip(batch.seqs, batch.num_tokens):
            seq.num_computed += n
            if seq.num_computed // bs > len(seq.table.digests):     # a block filled up: digest it
                self.blocks.register(seq.table, seq.token_ids, seq.num_computed)
            if seq in sampled:
                outputs.append(self._append(seq, sampled[seq]))
        return outputs

    def _append(self, seq: Sequence, sampled: Sampled) -> RequestOutput:
        token, params, cfg, detok, ids = sampled.token_id, seq.params, self.model.config, seq.detokenizer, seq.token_ids
        context = len(ids)      # keys visible to the query that produced this token
        seq.attended_sum += min(cfg.index_topk, context) if seq.request.sparse else context
        seq.context_sum += context
        ids.append(token)
        seq.output_counts[token] += 1
        if seq.request.grammar is not None:     # (no grammar: no call)
            self._advance_grammar(seq, token)
        is_stop_token = (token == cfg.eos_token_id and not params.ignore_eos) or token in params.stop_token_ids
        text = detok.push(token) if detok is not None and not is_stop_token else ""
        reason = None
        if is_stop_token or (detok is not None and detok.stopped):
            reason = "stop"
        elif (params.max_tokens is not None and context + 1 - seq.num_prompt_tokens >= params.max_tokens) \
                or context + 1 >= self.max_model_len:
            reason = "length"
        if reason is not None:
            if detok is not None:
                text += detok.finish()
            self.scheduler.finish(seq, reason)
            del self.seqs[seq.request_id]
        logprobs = (sampled.logprob,) if sampled.logprob is not None else ()
        return self._output(seq, text, (token,), logprobs, finished=reason is not None)

    def _advance_grammar(self, seq: Sequence, token: int) -> None:
        if seq.grammar_state is not None:
            seq.grammar_state.accept(token)
        elif seq.request.grammar is not None and token == seq.request.grammar_after_token:
            seq.grammar_state = seq.request.grammar.matcher()   # e.g. JSON starts after </think>

    def _output(self, seq: Sequence, text: str, tokens: tuple, logprobs: tuple,
                finished: bool) -> RequestOutput:
        return RequestOutput(
            request_id=seq.request_id, text=text, token_ids=tokens, logprobs=logprobs,
            finished=finished, finish_reason=seq.finish_reason if finished else None,
            prompt_tokens=seq.num_prompt_tokens, cached_prompt_tokens=seq.cached_prompt_tokens or 0,
            completion_tokens=seq.num_output_tokens,
            sparse=seq.sparse_stats(self.model.config.index_topk) if finished else None,
            queue_time=(seq.first_scheduled_time - seq.arrival_time
                        if finished and seq.first_scheduled_time is not None else None))

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

