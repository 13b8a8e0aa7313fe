"""The conversation rules the V3.2 prompt format relies on, checked before anything is rendered.

Every violation raises ChatFormatError, which the server answers with HTTP 400 (api.md A9).
Indices in messages count from the first message the caller sent (the first of `context`, when
encode_messages is given one; never the system message encode_request may add).
"""

from __future__ import annotations

import json
from typing import Any

ROLES = ("system", "user", "developer", "assistant", "tool")


class ChatFormatError(ValueError):
    """A conversation the V3.2 chat format cannot express."""


def find_last_user(messages: list[dict]) -> int:
    """Index of the last user or developer message, -1 if none: it splits history from the episode."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") in ("user", "developer"):
            return i
    return -1


def message_text(content: Any, where: str, *, optional: bool = False) -> str:
    """`content` as one string: a string, or a list of `{"type": "text", "text": ...}` parts.

    Parts are joined with "\\n", as vLLM does for text-only content lists.
    """
    if isinstance(content, str):
        return content
    if content is None and optional:
        return ""
    if isinstance(content, list) and all(_is_text_part(part) for part in content):
        return "\n".join(part["text"] for part in content)
    raise ChatFormatError(f"{where}: content must be a string or a list of text parts, "
                          f"not {type(content).__name__}")


def _is_text_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)


def tool_call_arguments(message: dict, where: str) -> list[tuple[str, dict]]:
    """The (name, arguments object) of each OpenAI-format tool call of an assistant message."""
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise ChatFormatError(f"{where}: tool_calls must be a list")
    out = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ChatFormatError(f"{where}: tool_calls[{j}] needs a function with a string name")
        arguments = function.get("arguments") or "{}"
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except (ValueError, RecursionError):
                raise ChatFormatError(f"{where}: tool_calls[{j}].function.arguments is not valid "
                                      f"JSON") from None
        if not isinstance(arguments, dict):
            raise ChatFormatError(f"{where}: tool_calls[{j}].function.arguments must be a JSON object")
        out.append((function["name"], arguments))
    return out


def check_conversation(messages: list[dict], thinking: bool, shift: int = 0) -> None:
    """Raise ChatFormatError unless `messages` can be rendered; `shift` offsets reported indices."""
    def where(i: int) -> str:
        return f"messages[{i - shift}] ({messages[i].get('role')})"

    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ChatFormatError(f"messages[{i - shift}] must be an object")
        if message.get("role") not in ROLES:
            raise ChatFormatError(f"messages[{i - shift}]: unknown role {message.get('role')!r}; "
                                  f"expected one of {', '.join(ROLES)}")
        if message.get("prefix") and (message["role"] != "assistant" or i != len(messages) - 1):
            raise ChatFormatError(f"{where(i)}: prefix is only allowed on the last message, "
                                  f"which must be an assistant message")
        check_tools(message.get("tools"), f"{where(i)}: tools")
        reasoning = message.get("reasoning_content")
        if reasoning is not None and not isinstance(reasoning, str):
            raise ChatFormatError(f"{where(i)}: reasoning_content must be a string")
    _check_tool_batches(messages, where)
    if thinking:
        _check_episode_reasoning(messages, where)


def check_tools(tools: Any, label: str = "tools") -> None:
    """Raise ChatFormatError unless `tools` is a list of OpenAI-format function tools."""
    if not tools:
        return
    for j, tool in enumerate(tools if isinstance(tools, list) else [None]):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ChatFormatError(f"{label}[{j}] must be {{\"type\": \"function\", "
                                  f"\"function\": {{\"name\": ...}}}}")


def _check_tool_batches(messages: list[dict], where) -> None:
    # Results are matched to calls by order, not id, so each batch must be complete.
    i = 0
    while i < len(messages):
        role = messages[i]["role"]
        if role == "tool":
            raise ChatFormatError(f"{where(i)}: a tool message must follow an assistant message "
                                  f"with tool_calls (or another tool message of its batch)")
        if role != "assistant":
            i += 1
            continue
        calls = len(tool_call_arguments(messages[i], where(i)))
        end = i + 1
        while end < len(messages) and messages[end]["role"] == "tool":
            end += 1
        results = end - i - 1
        if results > calls:
            raise ChatFormatError(f"{where(i + calls + 1)}: more tool results than the {calls} "
                                  f"tool calls of the assistant message before them")
        if results < calls and (results > 0 or end < len(messages)):
            raise ChatFormatError(f"{where(i)}: made {calls} tool calls but {results} tool "
                                  f"results follow")
        i = end


def _check_episode_reasoning(messages: list[dict], where) -> None:
    # The API answers 400 here: the model needs its own reasoning to continue an agentic episode.
    for i in range(find_last_user(messages) + 1, len(messages)):
        message = messages[i]
        if message["role"] == "assistant" and not message.get("prefix") \
                and message.get("reasoning_content") is None:
            raise ChatFormatError(f"{where(i)}: in thinking mode an assistant message after the "
                                  f"last user message must carry its reasoning_content "
                                  f"(send back the reasoning_content returned with it)")
