"""The offline API: `LLM(model_dir).generate(prompts, params)`, like vLLM's.

Prompts are text (encoded after a BOS token) or token ids (used as given). All prompts run
together through continuous batching; results come back in prompt order.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence as Seq

import torch

from .engine import EngineConfig, LLMEngine, freeze_startup_heap
from .request import Request, SparseStats, TokenLogprob
from .sampler import SamplingParams


@dataclass(frozen=True)
class Completion:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    text: str
    finish_reason: str
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    sparse: SparseStats
    logprobs: tuple[TokenLogprob, ...] = ()


class LLM:
    def __init__(self, model: str | Path, attention: Literal["sparse", "dense"] = "sparse",
                 dtype: torch.dtype = torch.bfloat16, config: EngineConfig = EngineConfig(), **load_kwargs):
        self.engine = LLMEngine.from_pretrained(model, config, dtype=dtype, **load_kwargs)
        self.attention = attention
        self._ids = itertools.count()
        freeze_startup_heap()

    def encode(self, prompt: str | Seq[int]) -> tuple[int, ...]:
        if isinstance(prompt, str):
            bos = self.engine.model.config.bos_token_id
            return (bos, *self.engine.tokenizer.encode(prompt, add_special_tokens=False).ids)
        return tuple(int(t) for t in prompt)

    def generate(self, prompts: str | Seq[int] | list, params: SamplingParams | list[SamplingParams] | None = None,
                 attention: Literal["sparse", "dense"] | None = None, salt: bytes = b"") -> list[Completion]:
        single = isinstance(prompts, str) or (bool(prompts) and isinstance(prompts[0], int))
        prompts = [prompts] if single else list(prompts)
        params = params or SamplingParams()
        params = params if isinstance(params, list) else [params] * len(prompts)
        sparse = (attention or self.attention) == "sparse"
        requests = [Request(f"offline-{next(self._ids)}", self.encode(p), sp, sparse=sparse, salt=salt)
                    for p, sp in zip(prompts, params)]
        return self.run(requests)

    def run(self, requests: list[Request]) -> list[Completion]:
        """Run fully built requests (grammars, stop rules, ...) together; results in request order.
        Every request is validated before any is queued, so a bad one cannot strand the others."""
        for r in requests:
            self.engine.validate(r)
        for r in requests:
            self.engine.add_request(r)
        parts = {r.request_id: ([], [], []) for r in requests}
        done = {}
        while len(done) < len(requests):
            for out in self.engine.step():
                text, tokens, logprobs = parts[out.request_id]
                text.append(out.text)
                tokens.extend(out.token_ids)
                logprobs.extend(out.logprobs)
                if out.finished:
                    done[out.request_id] = out
        result = []
        for r in requests:
            out, (text, tokens, logprobs) = done[r.request_id], parts[r.request_id]
            result.append(Completion(r.request_id, r.prompt_token_ids, tuple(tokens), "".join(text),
                                     out.finish_reason, out.prompt_tokens, out.cached_prompt_tokens,
                                     out.completion_tokens, out.sparse, tuple(logprobs)))
        return result
