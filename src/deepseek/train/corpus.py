"""Token streams for training and evaluation: the tokenizer, then documents packed end to end.

A document is a stdlib source file (`BOS + text + EOS`) or one synthetic conversation
(`prompt + completion`, which already carry BOS and EOS). Training reads windows of `context + 1`
tokens packed from them (attention may cross a document boundary; the BOS tells the model where a
new one begins), but a conversation is never cut: its tool schema, request and answer always share
a window. The windows are cached in the work folder as safetensors, so a resumed run reads the very
same tokens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from deepseek.tokenizer import BOS, EOS, load_tokenizer, train_byte_bpe, write_tokenizer

from . import data


@dataclass(frozen=True)
class Mixture:
    """How many tokens to draw, and the share of them that is Python source."""

    tokens: int
    code_share: float
    seed: int
    chat_weights: tuple = ()     # (kind, weight) pairs for the conversations; () = data.DEFAULT_WEIGHTS
    invented: float = 0.0        # share of tool and JSON conversations made up (`data.examples`)


def code_document(text: str) -> str:
    return BOS + text + EOS


def chat_document(example: data.Example) -> str:
    return example.prompt + example.completion


def build_tokenizer(folder: Path, vocab_size: int, max_length: int, seed: int, code_bytes: int = 3_000_000,
                    chat_examples: int = 6000):
    """Train (once) a byte-level BPE on a sample of both kinds of text; saved as tokenizer.json."""
    if (folder / "tokenizer.json").exists():
        return load_tokenizer(folder)
    files = data.stdlib_files("train")
    random.Random(seed).shuffle(files)
    texts, size = [], 0
    for _, text in files:
        texts.append(text)
        size += len(text)
        if size >= code_bytes:
            break
    texts += [chat_document(e) for e in data.mixture(chat_examples, "train", seed)]
    tokenizer = train_byte_bpe(texts, vocab_size)
    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer(tokenizer, folder, max_length)
    return load_tokenizer(folder)


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def _code_documents(tokenizer, split: str, budget: int, rng: random.Random) -> list[list[int]]:
    files = data.stdlib_files(split)
    rng.shuffle(files)
    docs, total = [], 0
    for i in range(0, len(files), 64):
        for ids in _encode(tokenizer, [code_document(text) for _, text in files[i:i + 64]]):
            docs.append(ids)
            total += len(ids)
            if total >= budget:
                return docs
    return docs          # the split holds fewer tokens than asked: use all of it


def _chat_documents(tokenizer, split: str, budget: int, seed: int,
                    weights: dict[str, float] | None = None, invented: float = 0.0) -> list[list[int]]:
    docs, total, batch = [], 0, 0
    while total < budget:
        examples = data.mixture(2000, split, seed * 1000 + batch, weights, invented)
        for ids in _encode(tokenizer, [chat_document(e) for e in examples]):
            docs.append(ids)
            total += len(ids)
        batch += 1
    return docs


def pack(code: list[list[int]], chat: list[list[int]], length: int, rng: random.Random) -> torch.Tensor:
    """Windows [N, length] int32: every conversation whole inside one window (a tool call never loses
    its schema to a window boundary), the space left after them filled with Python source, which
    also fills the remaining windows on its own. Conversations longer than a window are dropped."""
    source = [t for doc in code for t in doc]
    cursor, rows, row = 0, [], []
    for doc in chat:
        if len(doc) > length:
            continue
        if len(row) + len(doc) > length:
            take = source[cursor:cursor + length - len(row)]
            cursor += len(take)
            rows.append(row + take)
            row = []
        row = row + doc
    rows.append(row)
    while cursor < len(source):
        rows.append(source[cursor:cursor + length])
        cursor += length
    rows = [r for r in rows if len(r) == length]        # only the last one of each kind can be short
    rng.shuffle(rows)
    return torch.tensor(rows, dtype=torch.int32).view(-1, length)


def build_windows(tokenizer, split: str, mixture: Mixture, length: int) -> torch.Tensor:
    """About `mixture.tokens` tokens as shuffled windows [N, length] int32."""
    rng = random.Random(mixture.seed)
    code = _code_documents(tokenizer, split, int(mixture.tokens * mixture.code_share), rng)
    code_tokens = sum(map(len, code))
    chat = _chat_documents(tokenizer, split, max(0, mixture.tokens - code_tokens), mixture.seed,
                           dict(mixture.chat_weights) if mixture.chat_weights else None, mixture.invented)
    return pack(code, chat, length, rng)


def cached_tensors(path: Path, make) -> dict[str, torch.Tensor]:
    """The named tensors saved at `path`, made (once) by `make()`."""
    from safetensors.torch import load_file, save_file

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(make(), str(path))
    return load_file(str(path))


SFT_WEIGHTS = {"tool_call": 0.4, "tool_answer": 0.2, "json": 0.2, "qa": 0.1, "thinking": 0.1}

# Loss weight of a reply token that starts a copied item (`data.copy_sources`). Those few tokens
# decide whether a call carries the request's values; at weight 1 the model wrote each key's usual
# value instead. Held-out first value tokens (teacher-forced), with made-up values: 35% at weight 5,
# 42% at 10; 23% before either.
COPY_WEIGHT = 10


def build_sft_windows(tokenizer, split: str, count: int, length: int, seed: int,
                      eos_id: int, invented: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Post-training windows: whole conversations only, each window's tail padded with EOS.
    `invented`: the share of tool and JSON conversations with made-up names and values (`data.examples`).

    Returns (tokens [count, length] int32, loss weights [count, length] uint8): the supervised loss
    counts only the assistant's replies, weight 1 per token and `COPY_WEIGHT` on a token that starts
    an item the reply copies from the prompt; 0 elsewhere."""
    rows, masks, row, mask, batch = [], [], [], [], 0
    while len(rows) < count:
        examples = data.mixture(2000, split, seed * 1000 + batch, SFT_WEIGHTS, invented)
        prompts = tokenizer.encode_batch([e.prompt for e in examples], add_special_tokens=False)
        replies = tokenizer.encode_batch([e.completion for e in examples], add_special_tokens=False)
        for example, prompt, reply in zip(examples, prompts, replies):
            size = len(prompt.ids) + len(reply.ids)
            if size > length:
                continue
            if len(row) + size > length:
                pad = length - len(row)
                rows.append(row + [eos_id] * pad)
                masks.append(mask + [0] * pad)
                row, mask = [], []
                if len(rows) == count:
                    break
            weights = [1] * len(reply.ids)
            for at_reply, _ in data.copy_sources(example):
                weights[_token_at(reply.offsets, at_reply)] = COPY_WEIGHT
            row += prompt.ids + reply.ids
            mask += [0] * len(prompt.ids) + weights
        batch += 1
    return torch.tensor(rows, dtype=torch.int32), torch.tensor(masks, dtype=torch.uint8)


def _token_at(offsets: list[tuple[int, int]], char: int) -> int:
    """The index of the token whose text holds character `char` (offsets: per token, [start, end))."""
    return next(i for i, (a, b) in enumerate(offsets) if a <= char < b)


def heldout_windows(tokenizer, kind: str, count: int, length: int, seed: int) -> torch.Tensor:
    """`count` held-out windows of one kind ("code" or "chat"): [count, length] int64."""
    mixture = Mixture(tokens=(count + 2) * length, code_share=1.0 if kind == "code" else 0.0, seed=seed)
    if kind == "chat":      # conversations only: pad each window's tail with more conversations
        docs = _chat_documents(tokenizer, "heldout", mixture.tokens, seed)
        stream = torch.tensor([t for doc in docs for t in doc])
        rows = stream[:count * length].view(-1, length) if stream.numel() >= count * length else None
    else:
        rows = build_windows(tokenizer, "heldout", mixture, length)
    if rows is None or len(rows) < count:
        raise ValueError(f"the held-out {kind} split has fewer than {count} windows of {length} tokens")
    return rows[:count].long()


def repeat_spans(windows: torch.Tensor, share: float, seed: int, spans: int = 3,
                 lengths: tuple[int, int] = (8, 96)) -> torch.Tensor:
    """Copy practice: in about `share` of the windows [B, S], up to `spans` stretches of L tokens (L
    in `lengths`) are overwritten by a copy of an earlier stretch of the same window, so predicting
    them rewards finding the earlier occurrence and reading on from it (induction), which is what
    copying a value from the user's message into a tool call needs. Deterministic in `seed`."""
    if share <= 0:
        return windows
    g = torch.Generator().manual_seed(seed)
    out = windows.clone()
    s_len = windows.shape[1]
    for row in range(windows.shape[0]):
        if torch.rand((), generator=g) >= share:
            continue
        for _ in range(int(torch.randint(1, spans + 1, (), generator=g))):
            span = int(torch.randint(lengths[0], min(lengths[1], s_len // 2) + 1, (), generator=g))
            src = int(torch.randint(0, s_len - 2 * span + 1, (), generator=g))
            dst = int(torch.randint(src + span, s_len - span + 1, (), generator=g))
            out[row, dst:dst + span] = out[row, src:src + span].clone()
    return out


def copy_rows(rows: int, length: int, vocab: int, seed: int, spans: tuple[int, int] = (6, 48),
              first_id: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure copy practice: rows [rows, length] of random tokens in which every stretch (L tokens, L
    drawn from `spans`) is followed at once by itself, and a mask [rows, length] that is 1 on the
    second copies after their first token: the only tokens that copying predicts. The offsets vary,
    so a fixed positional head cannot solve it; matching content (an induction head) can. Random
    tokens carry no prior to fall back on. Deterministic in `seed`."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.empty(rows, length, dtype=torch.long)
    mask = torch.zeros(rows, length, dtype=torch.uint8)
    for r in range(rows):
        pos = 0
        while pos < length:
            n = int(torch.randint(spans[0], spans[1] + 1, (), generator=g))
            span = torch.randint(first_id, vocab, (n,), generator=g)
            piece = torch.cat((span, span))[:length - pos]
            tokens[r, pos:pos + len(piece)] = piece
            mask[r, pos + n + 1:pos + len(piece)] = 1
            pos += len(piece)
    return tokens, mask
