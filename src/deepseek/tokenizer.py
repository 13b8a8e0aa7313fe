"""DeepSeek's special tokens and byte-level BPE tokenizers built with HF `tokenizers`.

Every checkpoint folder carries a `tokenizer.json`. Ours put the specials first so that
BOS = 0 and EOS = 1, as in DeepSeek's config. The special strings use FULLWIDTH VERTICAL LINE
(U+FF5C) and LOWER ONE EIGHTH BLOCK (U+2581), never ASCII look-alikes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
DSML = "｜DSML｜"

# BOS and EOS must stay at ids 0 and 1.
SPECIAL_TOKENS = [
    BOS, EOS, PAD, USER, ASSISTANT, THINK_OPEN, THINK_CLOSE,
    "<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>",
    "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>",
    "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>",
    "<｜tool▁output▁end｜>", "<｜tool▁sep｜>", DSML,
]


def train_byte_bpe(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE of `vocab_size` entries (specials included) trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def sample_corpus(max_bytes: int = 400_000) -> list[str]:
    """Deterministic text that exists on every machine: the interpreter's own stdlib sources."""
    import os

    root = Path(os.__file__).parent
    texts, size = [], 0
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        size += len(text)
        if size >= max_bytes:
            break
    return texts


def write_tokenizer(tokenizer, out_dir: Path, model_max_length: int) -> None:
    """Save tokenizer.json plus a tokenizer_config.json in DeepSeek's shape (no chat template)."""
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {"add_bos_token": False, "add_eos_token": False, "bos_token": BOS, "eos_token": EOS,
              "pad_token": EOS, "model_max_length": model_max_length,
              "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def load_tokenizer(folder: str | Path):
    """The `tokenizers.Tokenizer` of a checkpoint folder."""
    from tokenizers import Tokenizer

    path = Path(folder) / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer.json in {folder}")
    return Tokenizer.from_file(str(path))
