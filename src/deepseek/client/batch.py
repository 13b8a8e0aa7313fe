"""Batch runs: a JSONL file of chat requests, sent concurrently, written back in input order.

Input: one request per line, either a chat completion body (`{"model": ..., "messages": [...]}`)
or OpenAI's batch shape (`{"custom_id": ..., "body": {...}}`). Output: one record per input line,
`{"index", "custom_id", "response", "error"}`, exactly one of the last two non-null.

Invariant that makes resuming simple: records are written in input order and only as a complete
line, so after an interruption the output holds exactly the first k results (a line cut short by a
kill is dropped on resume). A resumed run skips every index already present and appends the rest,
again in order. An item's failure (bad JSON, HTTP error, timeout) is its record, never the run's.
Each request carries an Idempotency-Key derived from (output file, index, body): a request that
was answered while an interrupted run went down is replayed by the server on resume, not re-billed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from openai.types.chat import ChatCompletion

from ._constants import IDEMPOTENCY_HEADER
from .costs import CostTracker


@dataclass(frozen=True)
class Item:
    index: int
    custom_id: Optional[str]
    body: Optional[dict]
    error: Optional[str] = None            # the line could not be used as a request


@dataclass
class Summary:
    total: int = 0
    skipped: int = 0                       # already in the output when this run started
    succeeded: int = 0
    failed: int = 0
    tracker: CostTracker = field(default_factory=CostTracker)


def parse_line(index: int, line: str, default_model: str | None) -> Item:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return Item(index, None, None, f"invalid JSON: {e}")
    if not isinstance(obj, dict):
        return Item(index, None, None, "a line must be a JSON object")
    custom_id = obj.get("custom_id")
    body = dict(obj["body"]) if isinstance(obj.get("body"), dict) else {k: v for k, v in obj.items()
                                                                       if k != "custom_id"}
    body.pop("stream", None)               # a batch stores whole answers
    body.pop("stream_options", None)
    if default_model and not body.get("model"):
        body["model"] = default_model
    if not body.get("model") or not isinstance(body.get("messages"), list):
        return Item(index, custom_id, None, "a request needs a model (or --model) and a messages list")
    return Item(index, custom_id, body)


def read_items(path: Path, default_model: str | None = None) -> list[Item]:
    """Every non-blank line of the input; `index` is the line's position among them."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    return [parse_line(i, line, default_model) for i, line in enumerate(lines)]


def read_done(out: Path) -> list[dict]:
    """The complete records already in `out`; a trailing partial line (a killed write) is cut off."""
    if not out.exists():
        return []
    data = out.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        with open(out, "r+b") as f:
            f.truncate(keep)
    return [json.loads(line) for line in data[:keep].decode().splitlines() if line.strip()]


def error_record(e: BaseException) -> dict:
    return {"type": type(e).__name__, "status": getattr(e, "status_code", None), "message": str(e)}


class OrderedWriter:
    """Holds finished records until every earlier one is written; each line is flushed whole."""

    def __init__(self, f, order: Iterable[int]):
        self.f = f
        self.order = list(order)
        self.next = 0
        self.ready: dict[int, dict] = {}

    def put(self, record: dict) -> int:
        """Buffer one record; write the in-order run it completes. Returns how many were written."""
        self.ready[record["index"]] = record
        written = 0
        while self.next < len(self.order) and self.order[self.next] in self.ready:
            rec = self.ready.pop(self.order[self.next])
            self.f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            self.next += 1
            written += 1
        if written:
            self.f.flush()
        return written


def idempotency_key(out: Path, item: Item) -> str:
    """The same for the same request at the same place of the same output file, so a resumed run
    gets a stored answer back (no second generation, no second charge) for a request that was
    answered while the interrupted run was going down; a new output file asks afresh."""
    seed = json.dumps([str(Path(out).resolve()), item.index, item.body], sort_keys=True)
    return "batch-" + hashlib.sha256(seed.encode()).hexdigest()[:40]


async def _answer(client, item: Item, out: Path) -> dict:
    record: dict[str, Any] = {"index": item.index, "custom_id": item.custom_id, "response": None, "error": None}
    if item.body is None:
        record["error"] = {"type": "InvalidRequest", "status": None, "message": item.error}
        return record
    try:
        # The raw body goes out as written (DeepSeek-only fields included); openai's client still
        # does the retries (all carrying this key) and the typed parsing.
        response = await client.post("/chat/completions", body=item.body, cast_to=ChatCompletion,
                                     options={"headers": {IDEMPOTENCY_HEADER: idempotency_key(out, item)}})
        record["response"] = response.to_dict()
    except Exception as e:  # noqa: BLE001 - one item's failure is recorded, never fatal
        record["error"] = error_record(e)
    return record


async def run_batch(client, items: list[Item], out: Path, concurrency: int, prices: dict | None = None,
                    progress: Callable[[int], None] = lambda n: None,
                    stop: asyncio.Event | None = None) -> Summary:
    """Answer the items not yet in `out` with `concurrency` workers; append them in input order.
    Once `stop` is set, no worker starts another item; those in flight are finished and written."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    done = {rec["index"] for rec in read_done(out)}
    todo = [item for item in items if item.index not in done]
    progress(len(items) - len(todo))
    queue = iter(todo)

    with open(out, "a", encoding="utf-8") as f:
        writer = OrderedWriter(f, (item.index for item in todo))

        async def worker():
            for item in queue:             # one shared iterator: each item goes to one worker
                if stop is not None and stop.is_set():
                    return
                progress(writer.put(await _answer(client, item, out)))

        await asyncio.gather(*(worker() for _ in range(min(concurrency, max(len(todo), 1)))))
    return summarize(out, len(items), skipped=len(items) - len(todo), prices=prices)


def summarize(out: Path, total: int, skipped: int = 0, prices: dict | None = None) -> Summary:
    """Tokens, cost and failures over every record in `out` (this run's and earlier ones)."""
    summary = Summary(total=total, skipped=skipped, tracker=CostTracker(prices))
    for rec in read_done(out):
        response = rec.get("response")
        if rec.get("error") is not None or not response:
            summary.failed += 1
            continue
        summary.succeeded += 1
        if response.get("usage"):
            summary.tracker.record(usage=response["usage"], model=response.get("model"))
    return summary
