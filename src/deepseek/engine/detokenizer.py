"""Token ids in, text deltas out: safe to stream, UTF-8 complete, stop strings cut off.

One `IncrementalDetokenizer` per sequence. Each `push(token_id)` returns the text that can be sent
to the client now; `finish()` returns what was held back when the sequence ends for any reason
other than a stop string.

Two things are held back:

- **Incomplete characters.** A byte-level BPE token can end inside a multi-byte UTF-8 character.
  With a plain byte-level decoder (GPT-2's, DeepSeek's) every token is a fixed byte string
  (`token_bytes`), so a push appends its bytes to an incremental UTF-8 decoder, which holds an
  unfinished character back and replaces invalid bytes as the tokenizer's own lossy decode does.
  With any other decoder, as in vLLM, a small window of recent ids is decoded (`_prefix_offset`
  .. end, where `_read_offset` marks what has been emitted), and text is released only when the
  window no longer ends in U+FFFD. Either way a push costs a handful of tokens, never the output.
- **Possible stop-string starts.** The longest tail of the text that is a proper prefix of a stop
  string is kept until it either completes the stop string or stops matching. When one completes,
  the text before it is emitted, the stop string itself is not (OpenAI semantics), `stopped`
  becomes True and every later push returns "".

"First occurrence" means the first stop string to *complete* as the text grows (for equal end
positions, the longest one). That choice depends only on the text, never on how it was split into
tokens, and the output can then never contain a stop string.
"""

from __future__ import annotations

import codecs
import json
from typing import Sequence

# Prompt tokens kept as decoding context: enough for decoders whose output depends on the previous
# token (SentencePiece's leading space), as in vLLM.
PROMPT_CONTEXT_TOKENS = 5
REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Incremental, stop-aware decoding of one sequence over an HF `tokenizers.Tokenizer`."""

    def __init__(self, tokenizer, prompt_ids: Sequence[int] | None = None,
                 skip_special_tokens: bool = False, stop: Sequence[str] = ()) -> None:
        if any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.stop = tuple(stop)
        self._bytes = token_bytes(tokenizer, skip_special_tokens)
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace") if self._bytes is not None else None
        self._ids = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:]) if prompt_ids and self._bytes is None else []
        self._prefix_offset = 0  # start of the decoding window
        self._read_offset = len(self._ids)  # ids before this have been released as text
        self._held = ""  # decoded text withheld because it may start a stop string
        self.stopped = False
        self.stop_string: str | None = None  # the stop string that ended the sequence

    def push(self, token_id: int) -> str:
        """Add one generated token; return the new text that is safe to emit (often "")."""
        if self.stopped:
            return ""
        if self._utf8 is not None:
            return self._release(self._utf8.decode(self._bytes[token_id]))
        self._ids.append(token_id)
        return self._release(self._decode_window(final=False))

    def finish(self) -> str:
        """Flush everything held back; call once when the sequence ends without a stop string."""
        if self.stopped:
            return ""
        flushed = self._utf8.decode(b"", final=True) if self._utf8 is not None else self._decode_window(final=True)
        text = self._release(flushed)
        if not self.stopped:
            text, self._held = text + self._held, ""
        return text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _decode_window(self, final: bool) -> str:
        """Text of the ids after `_read_offset`, or "" while it would end in a partial character."""
        prefix = self._decode(self._ids[self._prefix_offset:self._read_offset])
        text = self._decode(self._ids[self._prefix_offset:])
        if not final and (len(text) <= len(prefix) or text.endswith(REPLACEMENT_CHAR)):
            return ""
        # The window ends on a character boundary: the released ids become the next window's
        # context, and the ids before them are no longer needed.
        del self._ids[:self._read_offset]
        self._prefix_offset, self._read_offset = 0, len(self._ids)
        return text[len(prefix):]

    def _release(self, delta: str) -> str:
        """Apply the stop strings to newly decoded text; return the part that can be emitted."""
        if not self.stop:
            return delta
        text = self._held + delta
        found = first_stop(text, self.stop)
        if found is not None:
            start, self.stop_string = found
            self.stopped, self._held = True, ""
            return text[:start]
        keep = partial_stop_length(text, self.stop)
        self._held = text[len(text) - keep:]
        return text[:len(text) - keep]


_TOKEN_BYTES: dict[tuple[int, bool], tuple[object, list[bytes] | None]] = {}


def token_bytes(tokenizer, skip_special_tokens: bool = False) -> list[bytes] | None:
    """Each token id's bytes, where the tokenizer's decoder is plain byte-level (then decoding ids
    is joining their bytes and decoding UTF-8 with replacement); None for any other decoder. As
    `tokenizers`' ByteLevel decoder: a token whose characters all lie in the byte alphabet maps back
    to those bytes, any other (an added token) to its own UTF-8; skipped special tokens to b"".
    Built once per tokenizer."""
    key = (id(tokenizer), skip_special_tokens)
    if key not in _TOKEN_BYTES:
        table = None
        decoder = json.loads(tokenizer.to_str()).get("decoder") if hasattr(tokenizer, "to_str") else None
        if decoder is not None and decoder.get("type") == "ByteLevel":
            alphabet = _byte_alphabet()
            special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
            table = []
            for i in range(tokenizer.get_vocab_size(with_added_tokens=True)):
                token = tokenizer.id_to_token(i)
                if token is None or (skip_special_tokens and i in special):
                    table.append(b"")
                elif all(c in alphabet for c in token):
                    table.append(bytes(alphabet[c] for c in token))
                else:
                    table.append(token.encode())
        _TOKEN_BYTES[key] = (tokenizer, table)     # (holding the tokenizer keeps its id unique)
    return _TOKEN_BYTES[key][1]


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the character that stands for each byte. Printable bytes stand
    for themselves; the other 68 map to code points 256 and up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def first_stop(text: str, stop: Sequence[str]) -> tuple[int, str] | None:
    """(start, stop string) of the occurrence that ends first in `text` (longest on a tie), or None."""
    best = None
    for s in stop:
        start = text.find(s)
        if start >= 0:
            key = (start + len(s), -len(s))
            if best is None or key < best[0]:
                best = (key, start, s)
    return None if best is None else (best[1], best[2])


def partial_stop_length(text: str, stop: Sequence[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of some stop string."""
    longest = min(len(text), max(len(s) for s in stop) - 1)
    for n in range(longest, 0, -1):
        tail = text[-n:]
        if any(s.startswith(tail) for s in stop):
            return n
    return 0
