"""Typed extras: openai's response models, subclassed with the fields DeepSeek adds.

The client builds every chat completion, chunk and FIM completion as these subclasses, so
`isinstance(r, openai.types.chat.ChatCompletion)` still holds and the extra fields are typed:

- `message.reasoning_content` / `delta.reasoning_content` (thinking mode; vLLM's `reasoning` is
  accepted as an alias);
- `usage.prompt_cache_hit_tokens`, `usage.prompt_cache_miss_tokens`, `usage.sparse_attention`;
- `finish_reason == "insufficient_system_resource"`;
- `Balance` for `GET /user/balance` (the amounts are decimal strings, as DeepSeek sends them).
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional

from openai import BaseModel
from openai.types import Completion, CompletionChoice, CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call",
                       "insufficient_system_resource"]


class SparseAttention(BaseModel):
    """How much of the context DeepSeek Sparse Attention looked at (our server's usage extension)."""

    mode: Optional[str] = None                 # "sparse" or "dense"
    index_topk: Optional[int] = None
    context_tokens: Optional[int] = None
    attended_tokens: Optional[float] = None    # mean keys attended per query
    density: Optional[float] = None            # attended / context


class Usage(CompletionUsage):
    """prompt_tokens = prompt_cache_hit_tokens + prompt_cache_miss_tokens; hits bill at the cache price."""

    prompt_cache_hit_tokens: Optional[int] = None
    prompt_cache_miss_tokens: Optional[int] = None
    sparse_attention: Optional[SparseAttention] = None


class Message(ChatCompletionMessage):
    reasoning_content: Optional[str] = None


class ChatChoice(Choice):
    finish_reason: FinishReason            # type: ignore[assignment]
    message: Message


class ChatCompletionResponse(ChatCompletion):
    choices: List[ChatChoice]              # type: ignore[assignment]
    usage: Optional[Usage] = None


class Delta(ChoiceDelta):
    reasoning_content: Optional[str] = None


class ChatChunkChoice(ChunkChoice):
    delta: Delta
    finish_reason: Optional[FinishReason] = None   # type: ignore[assignment]


class ChatCompletionChunkResponse(ChatCompletionChunk):
    choices: List[ChatChunkChoice]         # type: ignore[assignment]
    usage: Optional[Usage] = None


class FIMChoice(CompletionChoice):
    finish_reason: FinishReason            # type: ignore[assignment]


class FIMCompletion(Completion):
    choices: List[FIMChoice]               # type: ignore[assignment]
    usage: Optional[Usage] = None


class BalanceInfo(BaseModel):
    currency: str
    total_balance: str
    granted_balance: str
    topped_up_balance: str


class Balance(BaseModel):
    is_available: bool
    balance_infos: List[BalanceInfo]


# openai type -> the DeepSeek subclass the client builds instead.
RESPONSE_TYPES: Dict[type, type] = {
    ChatCompletion: ChatCompletionResponse,
    ChatCompletionChunk: ChatCompletionChunkResponse,
    Completion: FIMCompletion,
}


def alias_reasoning(data: Any) -> Any:
    """Copy vLLM's `reasoning` into `reasoning_content` where only the former is present."""
    if isinstance(data, dict):
        for choice in data.get("choices") or ():
            part = isinstance(choice, dict) and (choice.get("message") or choice.get("delta"))
            if isinstance(part, dict) and "reasoning" in part and part.get("reasoning_content") is None:
                part["reasoning_content"] = part["reasoning"]
    return data
