"""The DeepSeek SDK: openai's clients configured and extended for the DeepSeek API.

    from deepseek import DeepSeek
    client = DeepSeek()                      # DEEPSEEK_API_KEY, DEEPSEEK_BASE_URL
    r = client.chat.completions.create(model="deepseek-chat", messages=[...], timeout=30)
    r.choices[0].message.reasoning_content, r.usage.prompt_cache_hit_tokens
    client.user.balance(); client.beta.completions.create(model=..., prompt=..., suffix=...)

Needs only the base install (openai); never imports torch.
"""

from ._client import AsyncDeepSeek, DeepSeek
from ._constants import API_KEY_ENV, BASE_URL_ENV, DEFAULT_BASE_URL
from .costs import Charge, CostTracker, ThresholdCrossed, UsageTotals, charge
from .errors import (DeepSeekError, InsufficientBalanceError, InsufficientSystemResourceError,
                     MissingAPIKeyError)
from .retries import Backoff

__all__ = [
    "DeepSeek", "AsyncDeepSeek", "Backoff", "CostTracker", "Charge", "UsageTotals", "ThresholdCrossed",
    "charge", "DeepSeekError", "MissingAPIKeyError", "InsufficientBalanceError",
    "InsufficientSystemResourceError", "API_KEY_ENV", "BASE_URL_ENV", "DEFAULT_BASE_URL",
]
