"""The DeepSeek-V3.2 prompt encoder (spec §14.1): OpenAI-format messages in, prompt text out.

V3.2 ships no Jinja chat template; DeepSeek's `encoding_dsv32.py` is the reference, and this is
a re-implementation of it. The generation prompt is built in: every user turn ends with
`<｜Assistant｜>` plus `<think>` (thinking mode, latest turn) or `</think>`, and a batch of tool
results ends with the same marker, so the model continues straight after the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from deepseek.tokenizer import ASSISTANT, BOS, EOS, THINK_CLOSE, THINK_OPEN, USER

from .checks import (ChatFormatError, check_conversation, check_tools, find_last_user,
                     message_text, tool_call_arguments)
from .dsml import render_tool_calls
from .prompts import render_response_format, render_tools

FIM_BEGIN, FIM_HOLE, FIM_END = "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"


def encode_messages(messages: list[dict], thinking: bool, context: list[dict] | None = None,
                    drop_thinking: bool = True, add_bos: bool = True) -> str:
    """The prompt for `messages`, ready for the model to write the next assistant turn.

    `context` is an already-encoded conversation that `messages` continues: it decides which
    user turn is the last one but is not rendered again (and no BOS is added).

    `drop_thinking` (thinking mode only): turns before the last user message render without
    their reasoning, as in DeepSeek's encoder. With `drop_thinking=False` every turn renders
    the way it was generated (`<think>` after each user turn and tool batch, then
    `reasoning</think>answer`), which is what training on whole trajectories needs.
    """
    return _encode(list(context or []) + list(messages), len(context or []), thinking,
                   keep_reasoning=thinking and not drop_thinking, add_bos=add_bos)


def encode_request(messages: list[dict], tools: list[dict] | None = None,
                   response_format_schema: dict | None = None, thinking: bool = False,
                   prefix_assistant: dict | None = None) -> str:
    """The prompt for a chat-completion request, whose tools live beside the messages.

    Tools and the response-format schema go on the system message, where V3.2 was trained to
    see them (spec §14.1). When the conversation does not start with a system message, an
    empty one is put in front, so the prompt opens `BOS + "\\n\\n## Tools..."`: that is what
    DeepSeek's encoder renders for tools on a system message with empty content, and what vLLM
    builds. (vLLM always inserts a new one; we use the caller's own system message when there
    is one, so the tools come after its text, as in the golden test.)

    Chat prefix completion (api.md A6): a last message `{"role": "assistant", "prefix": true}`,
    or `prefix_assistant`, is rendered open, without EOS, for the model to continue.
    """
    messages = [dict(message) if isinstance(message, dict) else message for message in messages]
    if prefix_assistant is not None:
        if not isinstance(prefix_assistant, dict) or prefix_assistant.get("role", "assistant") != "assistant":
            raise ChatFormatError("prefix_assistant must be an assistant message")
        messages.append({**prefix_assistant, "role": "assistant", "prefix": True})
    check_tools(tools)
    shift = 0
    if tools or response_format_schema:
        shift = _attach_to_system(messages, tools, response_format_schema)
    return _encode(messages, 0, thinking, keep_reasoning=False, add_bos=True, shift=shift)


def _attach_to_system(messages: list[dict], tools: list[dict] | None, schema: dict | None) -> int:
    """Put tools and schema on the leading system message (made if missing); how many were added."""
    added = 0
    if not (messages and isinstance(messages[0], dict) and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": ""})
        added = 1
    if tools:
        messages[0]["tools"] = tools
    if schema:
        messages[0]["response_format"] = schema
    return added


def continues_in_reasoning(prefix_assistant: dict, thinking: bool) -> bool:
    """Whether the model's continuation of a prefix message is reasoning (else content).

    In thinking mode a prefix with reasoning but no content is left open inside `<think>`;
    the server parses the continuation with `StreamParser(thinking=<this>)`.
    """
    content = message_text(prefix_assistant.get("content"), "prefix", optional=True)
    return thinking and not content


def encode_fim(prompt: str, suffix: str | None) -> str:
    """The fill-in-the-middle prompt (api.md A6): the model writes what goes between."""
    if not isinstance(prompt, str) or not isinstance(suffix, (str, type(None))):
        raise ChatFormatError("FIM prompt and suffix must be strings")
    return f"{BOS}{FIM_BEGIN}{prompt}{FIM_HOLE}{suffix or ''}{FIM_END}"


def _encode(messages: list[dict], start: int, thinking: bool, keep_reasoning: bool,
            add_bos: bool, shift: int = 0) -> str:
    check_conversation(messages, thinking, shift)
    turns = _Turns(messages, thinking, keep_reasoning, find_last_user(messages), shift)
    prompt = BOS if add_bos and start == 0 else ""
    return prompt + "".join(turns.render(i) for i in range(start, len(messages)))


@dataclass(frozen=True)
class _Turns:
    """Renders one message at a time; `last_user` splits history from the current episode."""

    messages: list[dict]
    thinking: bool
    keep_reasoning: bool
    last_user: int
    shift: int

    def render(self, i: int) -> str:
        role = self.messages[i]["role"]
        return getattr(self, f"_{role}")(i, self.messages[i], f"messages[{i - self.shift}] ({role})")

    def _system(self, i: int, message: dict, where: str) -> str:
        return message_text(message.get("content"), where) + self._extras(message)

    def _user(self, i: int, message: dict, where: str) -> str:
        text = message_text(message.get("content"), where)
        return USER + text + ASSISTANT + self._think(i == self.last_user)

    def _developer(self, i: int, message: dict, where: str) -> str:
        text = message_text(message.get("content"), where)
        if not text:
            raise ChatFormatError(f"{where}: a developer message needs content")
        body = self._extras(message) + "\n\n# The user's message is: " + text
        return USER + body + ASSISTANT + self._think(i == self.last_user)

    def _assistant(self, i: int, message: dict, where: str) -> str:
        content = message_text(message.get("content"), where, optional=True)
        reasoning = message.get("reasoning_content") or ""
        shows_reasoning = self.thinking and (i > self.last_user or self.keep_reasoning)
        if message.get("prefix"):
            if message.get("tool_calls"):
                raise ChatFormatError(f"{where}: a prefix message cannot carry tool_calls")
            if shows_reasoning and not content:
                return reasoning  # still inside <think>: the model goes on reasoning
            return (reasoning + THINK_CLOSE if shows_reasoning else "") + content
        calls = tool_call_arguments(message, where)
        return ((reasoning + THINK_CLOSE if shows_reasoning else "") + content
                + (render_tool_calls(calls) if calls else "") + EOS)

    def _tool(self, i: int, message: dict, where: str) -> str:
        first = i
        while self.messages[first - 1]["role"] == "tool":
            first -= 1
        batch = len(self.messages[first - 1]["tool_calls"])  # check_conversation saw it complete
        out = "\n\n<function_results>" if i == first else ""
        out += f"\n<result>{message_text(message.get('content'), where)}</result>"
        if i - first + 1 == batch:
            out += "\n</function_results>\n\n" + self._think(i >= self.last_user)
        return out

    def _think(self, in_episode: bool) -> str:
        # After a user turn or tool batch: open reasoning only where the model will write it.
        return THINK_OPEN if self.thinking and (in_episode or self.keep_reasoning) else THINK_CLOSE

    @staticmethod
    def _extras(message: dict) -> str:
        out = ""
        if message.get("tools"):
            out += "\n\n" + render_tools(message["tools"])
        if message.get("response_format"):
            out += "\n\n" + render_response_format(message["response_format"])
        return out
