"""Retry timing. openai's client runs the retry loop; this module only says how long to wait.

Which failures are retried is openai's rule, unchanged: connection errors, timeouts, 408, 409,
429 and >= 500 (an `x-should-retry` header overrides it); 402 and other 4xx are final. The wait
is the server's `retry-after-ms` or `Retry-After` when it gives one (up to openai's 120 s limit;
a longer hint means "do not retry"), else exponential backoff with jitter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ._constants import INITIAL_RETRY_DELAY, MAX_RETRY_DELAY, RETRY_JITTER


@dataclass(frozen=True)
class Backoff:
    """Delay before retry n (0-based): min(initial * 2**n, maximum), cut by up to `jitter` at random."""

    initial: float = INITIAL_RETRY_DELAY
    maximum: float = MAX_RETRY_DELAY
    jitter: float = RETRY_JITTER

    def __post_init__(self):
        if not 0 <= self.initial <= self.maximum:
            raise ValueError(f"need 0 <= initial <= maximum, got {self.initial} and {self.maximum}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter is a fraction in [0, 1], got {self.jitter}")

    def delay(self, retry: int) -> float:
        base = min(self.initial * 2.0 ** min(retry, 64), self.maximum)   # 2**64 s is past any cap
        return base * (1.0 - self.jitter * random.random())
