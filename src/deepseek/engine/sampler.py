"""Turn one engine step's logits into token ids: penalties, temperature, top-k, top-p, sampling.

One `Sampler.sample` call covers every running sequence. Per row, in the OpenAI/vLLM order:

1. frequency and presence penalties on the raw logits (OpenAI's formula);
2. greedy rows (temperature 0) take the argmax;
3. sampled rows: divide by the temperature, softmax, keep the top-k, then the exact top-p nucleus
   of what is left, and draw one token by inverse-CDF with the row's own `torch.Generator`.

`torch.multinomial` costs about 2 ms per 129k-vocab row on CPU and a full `sort` about 9 ms
(spec/ecosystem.md §1), so neither is used: inverse-CDF needs one uniform per row, and top-p grows
a `topk` window until the nucleus closes instead of sorting the vocabulary.

Logprobs are those of the raw model distribution (log_softmax of the logits before penalties and
temperature), which is what OpenAI reports and vLLM's default `raw_logprobs` mode.

Penalty state lives with the sequence, not here: the engine keeps, per sequence, a
`collections.Counter` of the token ids generated so far in the completion (prompt tokens do not
count) and updates it with one `counts[token] += 1` per step. A dense `[V]` count tensor is
accepted too. Each step the counters of the penalised rows become one sparse scatter, so the cost
is the number of distinct generated tokens, never B x V.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import torch

from deepseek.model import kernels

TOP_LOGPROBS_MAX = 20  # OpenAI's and DeepSeek's limit
TokenCounts = Union[Mapping[int, int], torch.Tensor]


GREEDY_BELOW = 1e-5
SEED_RANGE = (-(2 ** 63), 2 ** 64)   # what torch.Generator.manual_seed accepts


def _check_range(name: str, value: float, low: float, high: float) -> None:
    # written as `not low <= v <= high` so that NaN is refused too
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence picks its tokens and when it stops. Validated once, never mutated.

    `stop`, `stop_token_ids`, `max_tokens` and `ignore_eos` are read by the engine and the
    detokenizer; the sampler reads the rest.
    """

    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = -1  # -1 = off
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        # Requests arrive as JSON: accept a bare string or a list, store tuples (hashable, frozen).
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        _check_range("temperature", self.temperature, 0.0, 2.0)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k != -1 and self.top_k < 1:
            raise ValueError(f"top_k must be -1 (off) or at least 1, got {self.top_k}")
        _check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        if not 0 <= self.top_logprobs <= TOP_LOGPROBS_MAX:
            raise ValueError(f"top_logprobs must be in [0, {TOP_LOGPROBS_MAX}], got {self.top_logprobs}")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=True")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed < SEED_RANGE[1]:
            raise ValueError(f"seed must be in [-2^63, 2^64), got {self.seed}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop strings must be non-empty strings")

    @property
    def greedy(self) -> bool:
        # Below this, logits / temperature overflows fp32 and the softmax turns to NaN (vLLM's cut).
        return self.temperature < GREEDY_BELOW

    @property
    def penalised(self) -> bool:
        return self.frequency_penalty != 0.0 or self.presence_penalty != 0.0

    @property
    def truncated(self) -> bool:
        """Whether top-k or top-p removes any candidate before sampling."""
        return self.top_k != -1 or self.top_p < 1.0


def make_generator(params: SamplingParams, device: str | torch.device = "cpu") -> torch.Generator | None:
    """The per-sequence generator for a seeded request; None means "use torch's global RNG"."""
    if params.seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(params.seed)
    return generator


@dataclass
class SampleOutput:
    """The sampler's answer for a batch of B rows."""

    token_ids: torch.Tensor  # [B] int64
    logprobs: torch.Tensor | None = None  # [B] fp32, raw logprob of the chosen token; None if no row asked
    top_logprob_ids: torch.Tensor | None = None  # [B, k] int64, k = the batch's largest top_logprobs
    top_logprobs: torch.Tensor | None = None  # [B, k] fp32, descending; a row asking for n uses [:, :n]


def apply_penalties(logits: torch.Tensor, params: Sequence[SamplingParams],
                    counts: Sequence[TokenCounts | None] | None) -> torch.Tensor:
    """OpenAI's penalties: logit[j] -= count[j] * frequency + (count[j] > 0) * presence.

    `logits` is [B, V] and is not modified; a penalised copy is returned (or `logits` itself when
    no row is penalised). `counts[i]` holds the completion's token counts for row i.
    """
    rows, token_ids, amounts = [], [], []
    for i, p in enumerate(params):
        if not p.penalised or counts is None or counts[i] is None:
            continue
        ids, n = _sparse_counts(counts[i])
        rows.append(torch.full_like(ids, i))
        token_ids.append(ids)
        amounts.append(p.frequency_penalty * n + p.presence_penalty * (n > 0))
    if not rows:
        return logits
    index = (torch.cat(rows).to(logits.device), torch.cat(token_ids).to(logits.device))
    penalised = logits.clone()
    penalised.index_put_(index, -torch.cat(amounts).to(logits), accumulate=True)
    return penalised


def _sparse_counts(counts: TokenCounts) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids [n] int64, counts [n] float64) of the tokens seen at least once."""
    if isinstance(counts, torch.Tensor):
        ids = counts.nonzero().squeeze(1).cpu()
        return ids, counts.cpu()[ids].double()
    ids = [t for t, n in counts.items() if n > 0]
    return (torch.tensor(ids, dtype=torch.int64),
            torch.tensor([counts[t] for t in ids], dtype=torch.float64))


def inverse_cdf(weights: torch.Tensor, uniforms: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """Column index drawn per row with probability weights / row sum. [N, n], [N] -> [N] int64.

    Two levels: pick a block of `block` columns from the block sums, then a column inside it, each
    with a float64 CDF. A float32 cumsum over a 129k vocabulary loses the tail's mass, and a
    float64 one over the whole row costs about 1 ms per row on CPU; this reads the row once.
    """
    n = weights.shape[1]
    whole = n // block * block
    sums = weights[:, :whole].unflatten(1, (-1, block)).sum(-1).double()
    if whole < n:
        sums = torch.cat([sums, weights[:, whole:].sum(-1, keepdim=True).double()], dim=1)
    chosen, rest = _search(sums, uniforms.double() * sums.sum(-1))
    columns = chosen.unsqueeze(1) * block + torch.arange(block, device=weights.device)
    inside = weights.gather(1, columns.clamp(max=n - 1)).double() * (columns < n)
    offset, _ = _search(inside, rest)
    # Never an id past the row, even for a row of NaN or zero weights (it then picks the last column).
    return (chosen * block + offset).clamp_(max=n - 1)


def _search(weights: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the column whose CDF step holds `targets`, and how far into that step it lies.

    weights [N, m] float64 >= 0, targets [N] in [0, row sum). Columns of zero weight are never
    picked: searchsorted(right=True) skips zero-width steps, and targets are kept strictly below
    the row's total, which rounding could otherwise reach.
    """
    cdf = weights.cumsum(-1)
    total = cdf[:, -1:]
    x = torch.minimum(targets.unsqueeze(1), torch.nextafter(total, torch.zeros_like(total)))
    index = torch.searchsorted(cdf, x, right=True)
    before = torch.cat([torch.zeros_like(total), cdf], dim=1).gather(1, index)
    return index.squeeze(1), (x - before).squeeze(1)


class Sampler:
    """Stateless: everything a row needs arrives with the call. Works on any device."""

    def __init__(self, top_p_window: int = 128) -> None:
        # First topk size tried for top-p; it grows until every row's nucleus is in hand.
        self.top_p_window = top_p_window

    def sample(self, logits: torch.Tensor, params: Sequence[SamplingParams],
               generators: Sequence[torch.Generator | None] | None = None,
               output_token_counts: Sequence[TokenCounts | None] | None = None) -> SampleOutput:
        """logits [B, V] -> one token per row. `generators[i]` seeds row i (None: global RNG).

        `output_token_counts[i]` is row i's completion token counts (a Counter or a dense [V]
        tensor; None or a missing list when no row is penalised). A row draws exactly one uniform
        from its own generator per sampled step, and nothing when greedy, so a seeded sequence
        gives the same tokens whatever else shares its batch.
        """
        batch = logits.shape[0]
        if len(params) != batch:
            raise ValueError(f"{len(params)} SamplingParams for {batch} rows of logits")
        generators = generators if generators is not None else [None] * batch
        logits = logits.float()
        penalised = apply_penalties(logits, params, output_token_counts)
        greedy = [i for i, p in enumerate(params) if p.greedy]
        sampled = [i for i, p in enumerate(params) if not p.greedy]
        if not sampled:
            return _with_logprobs(SampleOutput(kernels.argmax(penalised)), logits, params)
        token_ids = torch.empty(batch, dtype=torch.int64, device=logits.device)
        if greedy:
            _put(token_ids, greedy, kernels.argmax(_take(penalised, greedy)))
        if sampled:
            drawn = self._sample_rows(_take(penalised, sampled), [params[i] for i in sampled],
                                      [generators[i] for i in sampled])
            _put(token_ids, sampled, drawn)
        return _with_logprobs(SampleOutput(token_ids), logits, params)

    def _sample_rows(self, logits: torch.Tensor, params: list[SamplingParams],
                     generators: list[torch.Generator | None]) -> torch.Tensor:
        """Temperature, top-k, top-p and one inverse-CDF draw for each of N rows. [N, V] -> [N]."""
        device, vocab = logits.device, logits.shape[1]
        temperature = torch.tensor([p.temperature for p in params], device=device).unsqueeze(1)
        probs = torch.softmax(logits / temperature, dim=-1)
        uniforms = _uniforms(generators, device)
        out = torch.empty(len(params), dtype=torch.int64, device=device)
        whole = [i for i, p in enumerate(params) if not p.truncated]
        cut = [i for i, p in enumerate(params) if p.truncated]
        if whole:
            _put(out, whole, inverse_cdf(_take(probs, whole), _take(uniforms, whole)))
        if cut:
            top_k = torch.tensor([min(params[i].top_k, vocab) if params[i].top_k != -1 else vocab
                                  for i in cut], device=device)
            top_p = torch.tensor([params[i].top_p for i in cut], dtype=torch.float64, device=device)
            _put(out, cut, self._sample_nucleus(_take(probs, cut), top_k, top_p, _take(uniforms, cut)))
        return out

    def _sample_nucleus(self, probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                        uniforms: torch.Tensor) -> torch.Tensor:
        """Draw from the top-k candidates' smallest prefix holding top_p of their mass. [N] ids.

        probs [N, V]; top_k [N] (V when off); top_p [N] float64. Exact without sorting the
        vocabulary: tokens past a `topk` window are no likelier than its last one, so once the
        window holds top_p of the mass the nucleus is inside it. Rows still short get a wider
        window: at least double, and at least enough tokens of the last one's probability to
        cover the shortfall (one step on flat distributions).
        """
        vocab, device = probs.shape[1], probs.device
        tokens = torch.empty(len(probs), dtype=torch.int64, device=device)
        total = probs.sum(-1).double()  # ~1; the real sum keeps rounding off the edge
        # Start wide enough for every row's top-k, so only rows with top-k off can stay pending.
        limited = top_k[top_k < vocab]
        k = min(vocab, max(self.top_p_window, int(limited.max()) if limited.numel() else 0))
        pending = torch.arange(len(probs), device=device)
        while pending.numel():
            values, ids = _take(probs, pending).topk(k, dim=-1)  # sorted, descending
            in_top_k = torch.arange(k, device=device) < top_k[pending].unsqueeze(1)
            values = values.double() * in_top_k
            cumulative = values.cumsum(-1)
            complete = top_k[pending] <= k  # the row's whole top-k set is in the window
            goal = top_p[pending] * torch.where(complete, cumulative[:, -1], total[pending])
            done = complete | (cumulative[:, -1] >= goal)
            before = torch.cat([torch.zeros_like(cumulative[:, :1]), cumulative[:, :-1]], dim=1)
            nucleus = values * ((before < goal.unsqueeze(1)) & in_top_k)
            if done.any():
                picked = inverse_cdf(nucleus[done], uniforms[pending[done]])
                tokens[pending[done]] = ids[done].gather(1, picked.unsqueeze(1)).squeeze(1)
            shortfall = (goal - cumulative[:, -1])[~done] / values[~done, -1]
            pending = pending[~done]
            if pending.numel():
                k = min(vocab, max(2 * k, k + int(shortfall.max().clamp(max=vocab).ceil())))
        return tokens


def _take(x: torch.Tensor, rows: list[int] | torch.Tensor) -> torch.Tensor:
    """x[rows], without a copy when rows is the whole batch (the common case)."""
    if len(rows) == x.shape[0]:
        return x
    return x[torch.as_tensor(rows, device=x.device)]


def _put(out: torch.Tensor, rows: list[int], values: torch.Tensor) -> None:
    out[torch.as_tensor(rows, device=out.device)] = values


def _uniforms(generators: Sequence[torch.Generator | None], device: torch.device) -> torch.Tensor:
    """One float64 U[0, 1) per row, from the row's generator when it has one. [N]."""
    draws = [torch.rand((), dtype=torch.float64, generator=g, device=device if g is None else g.device)
             for g in generators]
    return torch.stack([u.to(device) for u in draws])


def _with_logprobs(out: SampleOutput, logits: torch.Tensor, params: Sequence[SamplingParams]) -> SampleOutput:
    """Fill the raw-distribution logprobs when any row asked for them (one log_softmax per step)."""
    if not any(p.logprobs for p in params):
        return out
    raw = torch.log_softmax(logits, dim=-1)
    out.logprobs = raw.gather(1, out.token_ids.unsqueeze(1)).squeeze(1)
    k = max(p.top_logprobs for p in params)
    if k:
        out.top_logprobs, out.top_logprob_ids = raw.topk(k, dim=-1)
    return out
