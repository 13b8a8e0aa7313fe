"""A/B comparison of two models on the same prompts: answers, similarity, latency, tokens, cost.

With our server, `deepseek-v3` vs `deepseek-v3.2` is dense vs sparse attention on the same weights.
Each prompt is sent to both models (greedy by default, so differences come from the models, not
from sampling); which model goes first alternates from prompt to prompt, so neither side always
gets the other's warm prefix cache. A failure on either side is recorded in that side's result.

Similarity is difflib's ratio over the two answers' words (1.0 = same words in the same order),
reasoning excluded: cheap, dependency-free, and enough to see where two models part ways.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from openai.types.chat import ChatCompletion

from .batch import error_record
from .costs import Charge, UsageTotals, charge


@dataclass(frozen=True)
class Prompt:
    index: int
    label: str                     # what the table shows
    messages: list


@dataclass
class Answer:
    model: str
    latency_s: float
    text: str = ""
    reasoning: str = ""
    charge: Optional[Charge] = None
    response: Optional[dict] = None
    error: Optional[dict] = None


@dataclass
class Row:
    prompt: Prompt
    answers: dict[str, Answer] = field(default_factory=dict)

    @property
    def similarity(self) -> Optional[float]:
        a, b = self.answers.values()
        return None if a.error or b.error else similarity(a.text, b.text)


def read_prompts(path: Path) -> list[Prompt]:
    """One prompt per non-blank line: plain text, or JSON with "prompt" or "messages"."""
    prompts = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        obj = None
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                obj = None
        if isinstance(obj, dict) and isinstance(obj.get("messages"), list):
            messages = obj["messages"]
            label = str(obj.get("id") or messages[-1].get("content", ""))
        elif isinstance(obj, dict) and "prompt" in obj:
            messages = [{"role": "user", "content": str(obj["prompt"])}]
            label = str(obj.get("id") or obj["prompt"])
        else:
            messages, label = [{"role": "user", "content": line}], line
        prompts.append(Prompt(len(prompts), label, messages))
    return prompts


def similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a.split(), b.split(), autojunk=False).ratio()


async def ask(client, model: str, prompt: Prompt, params: dict, prices: dict) -> Answer:
    start = time.perf_counter()
    try:
        r = await client.post("/chat/completions", cast_to=ChatCompletion,
                              body={**params, "model": model, "messages": prompt.messages})
    except Exception as e:  # noqa: BLE001 - a failed side is part of the comparison
        return Answer(model, time.perf_counter() - start, error=error_record(e))
    answer = Answer(model, time.perf_counter() - start, response=r.to_dict())
    if r.choices:
        message = r.choices[0].message
        answer.text, answer.reasoning = message.content or "", message.reasoning_content or ""
    if r.usage is not None:
        # Priced under the model we asked for: that is the id the server bills (and echoes).
        answer.charge = charge(r.usage, model, prices)
    return answer


async def run_compare(client, models: tuple[str, str], prompts: list[Prompt], params: dict,
                      prices: dict, concurrency: int = 1, on_row=lambda row: None) -> list[Row]:
    """Every prompt on both models; rows in prompt order. `concurrency` prompts run at once."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(prompt: Prompt) -> Row:
        async with semaphore:
            order = models if prompt.index % 2 == 0 else models[::-1]
            row = Row(prompt)
            for model in order:
                row.answers[model] = await ask(client, model, prompt, params, prices)
            row.answers = {m: row.answers[m] for m in models}     # always A, then B
            on_row(row)
            return row

    return list(await asyncio.gather(*(one(p) for p in prompts)))


@dataclass
class Summary:
    models: tuple[str, str]
    mean_similarity: Optional[float]
    mean_latency_s: dict[str, Optional[float]]
    totals: dict[str, UsageTotals]
    failures: dict[str, int]

    def ratio(self, what: str) -> Optional[float]:
        """B / A for "latency" (mean seconds) or "cost" (total dollars); None if undefined."""
        a, b = self.models
        if what == "latency":
            x, y = self.mean_latency_s[a], self.mean_latency_s[b]
        else:
            x, y = self.totals[a].cost_nano, self.totals[b].cost_nano
        return None if not x or y is None else y / x


def summarize(rows: list[Row], models: tuple[str, str]) -> Summary:
    sims = [r.similarity for r in rows if r.similarity is not None]
    totals = {m: UsageTotals() for m in models}
    failures = {m: 0 for m in models}
    latency: dict[str, list[float]] = {m: [] for m in models}
    for row in rows:
        for m, answer in row.answers.items():
            if answer.error:
                failures[m] += 1
                continue
            latency[m].append(answer.latency_s)
            if answer.charge is not None:
                totals[m].add(answer.charge)
    mean = {m: (sum(v) / len(v) if v else None) for m, v in latency.items()}
    return Summary(models, sum(sims) / len(sims) if sims else None, mean, totals, failures)


def write_log(rows: list[Row], path: Path) -> None:
    """The full record: one JSON line per prompt with both sides' whole responses or errors."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            sides: dict[str, Any] = {}
            for m, a in row.answers.items():
                sides[m] = {"latency_s": round(a.latency_s, 4), "error": a.error, "response": a.response,
                            "cost_nano": a.charge.cost_nano if a.charge else None}
            f.write(json.dumps({"index": row.prompt.index, "prompt": row.prompt.label,
                                "messages": row.prompt.messages, "similarity": row.similarity,
                                "results": sides}, ensure_ascii=False) + "\n")
