"""Two small pieces of incremental text matching that StreamParser is built from."""

from __future__ import annotations

from deepseek.tokenizer import EOS


def held_back(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`.

    That many characters must wait: the next delta may complete the marker.
    """
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


class EosCut:
    """Passes text through up to the first EOS and drops everything after it.

    The engine stops at EOS, so text after it only shows up in replays and tests; cutting it
    first keeps EOS out of every later state of the parser.
    """

    def __init__(self) -> None:
        self.seen = False
        self._tail = ""

    def feed(self, delta: str) -> str:
        if self.seen:
            return ""
        text = self._tail + delta
        end = text.find(EOS)
        if end >= 0:
            self.seen, self._tail = True, ""
            return text[:end]
        safe = len(text) - held_back(text, EOS)
        self._tail = text[safe:]
        return text[:safe]

    def finish(self) -> str:
        tail, self._tail = self._tail, ""
        return tail
