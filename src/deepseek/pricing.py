"""Token prices and exact cost arithmetic, shared by the server's ledger and the SDK.

Prices are quoted the way DeepSeek publishes them: USD per 1M tokens, in three columns (input on a
cache hit, input on a cache miss, output; reasoning tokens bill as output). Costs are integers in
nano-dollars (1e-9 USD) so that a ledger is a sum of integers: the total of many requests equals the
sum of their per-request costs exactly, with no float drift. Each request's cost is rounded once,
half up, to the nearest nano-dollar; with published prices (at most 3 decimals per 1M tokens, i.e.
a whole number of nano-dollars per token) that rounding never changes anything.

No torch here: the SDK imports this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Union

NANO_PER_USD = 10**9
TOKENS_PER_PRICE_UNIT = 10**6   # prices are per 1M tokens

Amount = Union[Decimal, str, int, float]


def _decimal(value: Amount) -> Decimal:
    # str() first: Decimal(0.028) would carry the binary float's 50-digit expansion.
    try:
        d = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, TypeError) as e:
        raise ValueError(f"not an amount: {value!r}") from e
    if not d.is_finite():
        raise ValueError(f"not a finite amount: {value!r}")
    return d


def usd_to_nano(usd: Amount) -> int:
    """USD (e.g. "12.50") as integer nano-dollars; refuses amounts finer than a nano-dollar."""
    nano = _decimal(usd) * NANO_PER_USD
    if nano != nano.to_integral_value():
        raise ValueError(f"{usd!r} USD is not a whole number of nano-dollars")
    return int(nano)


def format_usd(nano_usd: int, places: int = 2, rounding: str = ROUND_HALF_EVEN) -> str:
    """Nano-dollars as a plain decimal string with `places` digits: 1_234_000_000 -> "1.23"."""
    quantum = Decimal(1).scaleb(-places)
    # scaleb is exact; format "f" because str() switches to exponent notation for small amounts.
    amount = Decimal(nano_usd).scaleb(-9).quantize(quantum, rounding=rounding)
    return format(abs(amount) if amount == 0 else amount, "f")   # never "-0.00"


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens: input served from the prefix cache, input computed, output (incl. reasoning)."""

    cache_hit: Decimal
    cache_miss: Decimal
    output: Decimal

    def __post_init__(self):
        for f in fields(self):
            value = _decimal(getattr(self, f.name))
            if value < 0:
                raise ValueError(f"price {f.name} must be >= 0, got {value}")
            # Whole nano-dollars per 1M tokens keeps cost_nano in pure integer arithmetic.
            usd_to_nano(value)
            object.__setattr__(self, f.name, value)

    def nano_per_million(self) -> tuple[int, int, int]:
        """(cache_hit, cache_miss, output) in nano-dollars per 1M tokens, as exact integers."""
        return usd_to_nano(self.cache_hit), usd_to_nano(self.cache_miss), usd_to_nano(self.output)

    def to_dict(self) -> dict[str, str]:
        return {f.name: str(getattr(self, f.name)) for f in fields(self)}


V32_PRICE = Price(Decimal("0.028"), Decimal("0.28"), Decimal("0.42"))
# DeepSeek-V3 chat as published in early 2025 (before the V3.1 change), without the night discount.
V3_PRICE = Price(Decimal("0.07"), Decimal("0.27"), Decimal("1.10"))

DEFAULT_PRICES: dict[str, Price] = {
    "deepseek-v3.2": V32_PRICE,
    "deepseek-chat": V32_PRICE,
    "deepseek-reasoner": V32_PRICE,
    "deepseek-v3": V3_PRICE,
}


def cost_nano_usd(price: Price, cache_hit_tokens: int, cache_miss_tokens: int, output_tokens: int) -> int:
    """One request's cost in integer nano-dollars, rounded once (half up) from the exact value."""
    counts = (cache_hit_tokens, cache_miss_tokens, output_tokens)
    if any(not isinstance(n, int) or n < 0 for n in counts):
        raise ValueError(f"token counts must be non-negative integers, got {counts}")
    exact = sum(n * p for n, p in zip(counts, price.nano_per_million()))  # nano-USD * 1M
    return (exact + TOKENS_PER_PRICE_UNIT // 2) // TOKENS_PER_PRICE_UNIT


def load_prices(path: str | Path, base: dict[str, Price] | None = None) -> dict[str, Price]:
    """DEFAULT_PRICES (or `base`) overridden by a JSON file.

    The file maps model ids to prices, amounts as strings or numbers in USD per 1M tokens:
    `{"deepseek-chat": {"cache_hit": "0.028", "cache_miss": "0.28", "output": "0.42"}}`.
    A model in the file replaces the default entry whole; all three columns are required.
    """
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object mapping model ids to prices")
    prices = dict(DEFAULT_PRICES if base is None else base)
    for model, entry in raw.items():
        if not isinstance(entry, dict) or set(entry) != {"cache_hit", "cache_miss", "output"}:
            raise ValueError(f"{path}: {model!r} needs exactly cache_hit, cache_miss and output")
        prices[model] = Price(**{k: _decimal(v) for k, v in entry.items()})
    return prices
