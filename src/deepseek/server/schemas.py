"""Request bodies of the DeepSeek API (api.md §A2, §A6), validated by pydantic.

Ranges follow the contract; unknown fields are accepted and ignored, as DeepSeek does for OpenAI
parameters it lacks. Message shapes are checked by `deepseek.chat` (it knows the conversation
rules); here they only need to be JSON objects. Response bodies are plain dicts built in routes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

MAX_STOP = 16
MAX_TOOLS = 128

Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionDef(_Open):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class Tool(_Open):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(_Open):
    name: str


class NamedToolChoice(_Open):
    type: Literal["function"] = "function"
    function: NamedFunction


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


class Thinking(_Open):
    type: Literal["enabled", "disabled"]


class StreamOptions(_Open):
    include_usage: StrictBool | None = False


class _Sampling(_Open):
    frequency_penalty: Penalty | None = 0.0
    presence_penalty: Penalty | None = 0.0
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = 1.0
    seed: Annotated[int, Field(ge=-(2 ** 63), lt=2 ** 64)] | None = None   # an extension, as in vLLM
    n: Annotated[int, Field(ge=1, le=1)] | None = 1

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, v):
        items = [v] if isinstance(v, str) else (v or [])
        if any(s == "" for s in items):
            raise ValueError("stop strings must be non-empty")
        return v


class ChatRequest(_Sampling):
    model: str
    messages: Annotated[list[dict[str, Any]], Field(min_length=1)]
    thinking: Thinking | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = True   # OpenAI's switch; false = at most one call
    logprobs: StrictBool | None = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None


class CompletionRequest(_Sampling):
    """FIM (`POST /beta/completions`): the model fills the hole between `prompt` and `suffix`."""

    model: str
    prompt: str
    suffix: str | None = None
    echo: StrictBool | None = False
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
