"""Prices and cost arithmetic: integer nano-dollars, so ledger sums are exact."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import ROUND_FLOOR, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deepseek.pricing import (DEFAULT_PRICES, NANO_PER_USD, Price, cost_nano_usd, format_usd, load_prices,
                              usd_to_nano)

tokens = st.integers(min_value=0, max_value=10**9)
requests = st.lists(st.tuples(tokens, tokens, tokens), max_size=50)


def test_default_prices_are_deepseeks_published_ones():
    for model in ("deepseek-v3.2", "deepseek-chat", "deepseek-reasoner"):
        assert DEFAULT_PRICES[model] == Price(Decimal("0.028"), Decimal("0.28"), Decimal("0.42"))
    assert DEFAULT_PRICES["deepseek-v3"] == Price(Decimal("0.07"), Decimal("0.27"), Decimal("1.10"))


def test_float_prices_are_read_as_their_decimal_text():
    assert Price(0.028, 0.28, 0.42) == DEFAULT_PRICES["deepseek-chat"]
    assert Price("0.07", 0.27, "1.1").nano_per_million() == (70_000_000, 270_000_000, 1_100_000_000)


def test_one_million_tokens_cost_the_list_price():
    price = DEFAULT_PRICES["deepseek-chat"]
    assert cost_nano_usd(price, 10**6, 0, 0) == usd_to_nano("0.028")
    assert cost_nano_usd(price, 0, 10**6, 0) == usd_to_nano("0.28")
    assert cost_nano_usd(price, 0, 0, 10**6) == usd_to_nano("0.42")
    assert cost_nano_usd(price, 0, 0, 0) == 0


@given(tokens, tokens, tokens)
def test_published_prices_are_whole_nano_dollars_per_token(hit, miss, out):
    # $0.028 / 1M tokens = 28 nano-dollars per token: no rounding ever happens.
    assert cost_nano_usd(DEFAULT_PRICES["deepseek-v3.2"], hit, miss, out) == 28 * hit + 280 * miss + 420 * out
    assert cost_nano_usd(DEFAULT_PRICES["deepseek-v3"], hit, miss, out) == 70 * hit + 270 * miss + 1100 * out


@given(requests)
def test_with_published_prices_per_request_costs_sum_to_the_cost_of_the_summed_tokens(rows):
    price = DEFAULT_PRICES["deepseek-chat"]
    summed = [sum(col) for col in zip(*rows)] or [0, 0, 0]
    assert sum(cost_nano_usd(price, *r) for r in rows) == cost_nano_usd(price, *summed)


@given(requests, st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9))
def test_fine_grained_prices_round_each_request_once_by_at_most_half_a_nano_dollar(rows, a, b, c):
    # Prices with 9 decimals per 1M tokens are fractions of a nano-dollar per token, so the sum of
    # rounded per-request costs may differ from the exact total, but by at most 1/2 per request.
    price = Price(Decimal(a).scaleb(-9), Decimal(b).scaleb(-9), Decimal(c).scaleb(-9))
    costs = [cost_nano_usd(price, *r) for r in rows]
    assert all(isinstance(x, int) and x >= 0 for x in costs)
    exact = sum(Decimal(h) * price.cache_hit + Decimal(m) * price.cache_miss + Decimal(o) * price.output
                for h, m, o in rows) * NANO_PER_USD / 10**6
    assert abs(sum(costs) - exact) <= Decimal(len(rows)) / 2


def test_rounding_is_half_up_to_the_nano_dollar():
    price = Price("0.0005", "0", "0")            # half a nano-dollar per token
    assert [cost_nano_usd(price, n, 0, 0) for n in (1, 2, 3)] == [1, 1, 2]


def test_costs_refuse_negative_or_fractional_token_counts():
    with pytest.raises(ValueError):
        cost_nano_usd(DEFAULT_PRICES["deepseek-chat"], -1, 0, 0)
    with pytest.raises(ValueError):
        cost_nano_usd(DEFAULT_PRICES["deepseek-chat"], 1.5, 0, 0)


def test_prices_must_be_non_negative_whole_nano_dollars_per_million():
    with pytest.raises(ValueError):
        Price("-0.01", "0", "0")
    with pytest.raises(ValueError):
        Price("0.0000000001", "0", "0")
    with pytest.raises(ValueError):
        Price("NaN", "0", "0")


def test_usd_strings_are_exact():
    assert usd_to_nano("110.00") == 110 * NANO_PER_USD
    assert format_usd(110 * NANO_PER_USD) == "110.00"
    assert format_usd(1_234_999_999) == "1.23"
    assert format_usd(1_235_000_001) == "1.24"
    assert format_usd(-5_000_000, rounding=ROUND_FLOOR) == "-0.01"
    assert format_usd(28, places=9) == "0.000000028"
    with pytest.raises(ValueError):
        usd_to_nano("0.0000000001")
    with pytest.raises(ValueError):
        usd_to_nano("ten dollars")


def test_a_price_file_overrides_only_the_models_it_names(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"deepseek-chat": {"cache_hit": "0.01", "cache_miss": 0.1, "output": "1"},
                                "my-finetune": {"cache_hit": 0, "cache_miss": 0, "output": 0}}))
    prices = load_prices(path)
    assert prices["deepseek-chat"] == Price("0.01", "0.1", "1")
    assert prices["my-finetune"] == Price(0, 0, 0)
    assert prices["deepseek-reasoner"] == DEFAULT_PRICES["deepseek-reasoner"]
    assert DEFAULT_PRICES["deepseek-chat"] == Price("0.028", "0.28", "0.42")   # defaults untouched


@pytest.mark.parametrize("content", ['[]', '{"m": {"cache_hit": 1}}', '{"m": {"cache_hit": 1, "cache_miss": 1,'
                                     ' "output": 1, "extra": 1}}', '{"m": {"cache_hit": "x", "cache_miss": 1,'
                                     ' "output": 1}}'])
def test_a_malformed_price_file_is_refused(tmp_path, content):
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(ValueError):
        load_prices(path)


def test_pricing_does_not_import_torch():
    code = "import sys, deepseek.pricing; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
