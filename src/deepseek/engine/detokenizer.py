"""Token ids in, text deltas out: safe to stream, UTF-8 complete, stop strings cut off.

One `IncrementalDetokenizer` per sequence. Each `push(token_id)` returns the text that can be sent
to the client now; `finish()` returns what was held back when the sequence ends for any reason
other than a stop string.

Two things are held back:

- **Incomplete characters.** A byte-level BPE token can end inside a multi-byte UTF-8 character;
  decoding it then ends in U+FFFD. As in vLLM, only a small window of recent ids is decoded
  (`_prefix_offset` .. end, where `_read_offset` marks what has been emitted), and text is
  released only when the window no longer ends in U+FFFD. Each push decodes a handful of tokens,
  never the whole output.
- **Possible stop-string starts.** The longest tail of the text that is a proper prefix of a stop
  string is kept until it either completes the stop string or stops matching. When one completes,
  the text before it is emitted, the stop string itself is not (OpenAI semantics), `stopped`
  becomes True and every later push returns "".

"First occurrence" means the first stop string to *complete* as the text grows (for equal end
positions, the longest one). That choice depends only on the text, never on how it was split into
tokens, and the output can then never contain a stop string.
"""

from __future__ import annotations

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
        self._ids = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:]) if prompt_ids else []
        self._prefix_offset = 0  # start of the decoding window
        self._read_offset = len(self._ids)  # ids before this have been released as text
        self._held = ""  # decoded text withheld because it may start a stop string
        self.stopped = False
        self.stop_string: str | None = None  # the stop string that ended the sequence

    def push(self, token_id: int) -> str:
        """Add one generated token; return the new text that is safe to emit (often "")."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        return self._release(self._decode_window(final=False))

    def finish(self) -> str:
        """Flush everything held back; call once when the sequence ends without a stop string."""
        if self.stopped:
            return ""
        text = self._release(self._decode_window(final=True))
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
