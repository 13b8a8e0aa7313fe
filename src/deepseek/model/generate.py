"""A plain greedy loop over the cache: prefill once, then one decode step per token.

Enough for `deepseek generate` and tests until the engine (batching, sampling) takes over.
"""

from __future__ import annotations

from typing import Iterator

import torch

from .cache import ForwardBatch
from .transformer import Transformer


@torch.inference_mode()
def greedy_generate(model: Transformer, prompt: list[int], max_tokens: int,
                    stop_ids: tuple[int, ...] | None = None) -> Iterator[int]:
    """Yield up to `max_tokens` greedy tokens after `prompt`; stops after an EOS (yielded)."""
    stop_ids = (model.config.eos_token_id,) if stop_ids is None else stop_ids
    sparse = (model.attention == "sparse",)
    cache = model.new_cache(1, len(prompt) + max_tokens)
    tokens, start = torch.tensor(prompt, device=model.device), 0
    for _ in range(max_tokens):
        batch = ForwardBatch(starts=(start,), lengths=(len(tokens),), sparse=sparse, cache=cache)
        hidden = model.step(tokens, batch)
        token = int(model.logits(hidden[-1]).argmax())
        yield token
        if token in stop_ids:
            return
        start += len(tokens)
        tokens = torch.tensor([token], device=model.device)
