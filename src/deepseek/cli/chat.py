"""`deepseek chat`: an interactive terminal chat over the SDK.

Answers stream as they are generated; reasoning (thinking mode, e.g. `deepseek-reasoner`) is shown
dimmed before the answer; tool calls are shown with their arguments, and with `--tools FILE` you
type each tool's result and the model continues. The conversation is kept until `/reset`;
`/model NAME` switches models mid-conversation. Ctrl-C stops an answer, Ctrl-D (or /exit) quits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HELP = """commands:
  /reset         forget the conversation (the --system prompt stays)
  /model [NAME]  show the model and the ones available, or switch to NAME
  /help          this text
  /exit, /quit   leave (Ctrl-D works too)"""


class Style:
    """ANSI styling when writing to a terminal (and NO_COLOR is unset); plain text otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def _wrap(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.enabled and text else text

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def cyan(self, text: str) -> str:
        return self._wrap("36", text)

    def prompt(self, code: str, text: str) -> str:
        """For input(): readline must be told (\\001 ... \\002) that escapes take no columns."""
        return f"\001\x1b[{code}m\002{text}\001\x1b[0m\002" if self.enabled else text


# Model text must not drive the terminal: an ESC or other control byte in an answer could move the
# cursor, retitle the window or worse. Everything but newline and tab is shown as a visible escape.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if c not in (0x09, 0x0A)}


def printable(text: str) -> str:
    return text.translate(_CONTROL)


class Rollback(Exception):
    """The turn could not finish (interrupt, error, abandoned tool call): undo its messages."""


class ChatSession:
    def __init__(self, client, model: str, params: dict, system: str | None = None,
                 tools: list | None = None, out=sys.stdout, ask=input, style: Style | None = None,
                 max_tool_rounds: int = 8):
        self.client, self.model, self.params = client, model, params
        self.max_tool_rounds = max_tool_rounds
        self.system, self.tools = system, tools
        self.out, self.ask = out, ask
        self.style = style or Style(False)
        self.history: list[dict] = []
        self.reset()

    def reset(self) -> None:
        self.history = [{"role": "system", "content": self.system}] if self.system else []

    def write(self, text: str) -> None:
        self.out.write(text)   # callers pass model text through printable() first
        self.out.flush()

    def command(self, line: str) -> bool:
        """Handle a /command; False means quit."""
        name, _, arg = line.strip().partition(" ")
        if name in ("/exit", "/quit"):
            return False
        if name == "/reset":
            self.reset()
            self.write(self.style.dim("(conversation cleared)") + "\n")
        elif name == "/model" and arg.strip():
            self.model = arg.strip()
            self.write(self.style.dim(f"(model: {self.model})") + "\n")
        elif name == "/model":
            try:
                available = ", ".join(m.id for m in self.client.models.list())
            except Exception as e:  # noqa: BLE001 - listing is a courtesy
                available = f"unavailable ({e})"
            self.write(f"model: {self.model}\navailable: {available}\n")
        else:
            self.write(HELP + "\n")
        return True

    def send(self, text: str) -> None:
        """One user turn, plus as many model turns as its tool calls need."""
        mark = len(self.history)
        self.history.append({"role": "user", "content": text})
        try:
            for _ in range(self.max_tool_rounds + 1):
                message = self._stream_turn()
                self.history.append(message)
                if not message.get("tool_calls"):
                    return
                for call in message["tool_calls"]:
                    self.history.append({"role": "tool", "tool_call_id": call["id"],
                                         "content": self._tool_result(call)})
            # A model that keeps calling tools would otherwise never hand the turn back.
            self.write(self.style.dim(f"(stopped after {self.max_tool_rounds} rounds of tool calls)") + "\n")
        except Rollback as e:
            del self.history[mark:]
            self.write(self.style.dim(printable(f"\n({e}; this turn was not kept)")) + "\n")

    def _tool_result(self, call: dict) -> str:
        try:
            return self.ask(self.style.prompt("36", f"result of {call['function']['name']}> ")) or "(no result)"
        except (EOFError, KeyboardInterrupt):
            raise Rollback("tool call abandoned") from None

    def _stream_turn(self) -> dict:
        kwargs = {"tools": self.tools} if self.tools else {}
        try:
            stream = self.client.chat.completions.create(
                model=self.model, messages=self.history, stream=True,
                stream_options={"include_usage": True}, **kwargs, **self.params)
            with stream:
                return self._render(stream)
        except KeyboardInterrupt:
            raise Rollback("interrupted") from None
        except Exception as e:  # noqa: BLE001 - show it and keep the session alive
            raise Rollback(f"error: {e}") from None

    def _render(self, stream) -> dict:
        reasoning, content, calls = [], [], {}
        finish, usage, in_reasoning = None, None, False
        for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                d = choice.delta
                finish = choice.finish_reason or finish
                if d.reasoning_content:
                    in_reasoning = True
                    reasoning.append(d.reasoning_content)
                    self.write(self.style.dim(printable(d.reasoning_content)))
                if d.content:
                    if in_reasoning:
                        self.write("\n\n")
                        in_reasoning = False
                    content.append(d.content)
                    self.write(printable(d.content))
                for tc in d.tool_calls or ():
                    entry = calls.setdefault(tc.index, {"id": "", "type": "function",
                                                        "function": {"name": "", "arguments": ""}})
                    entry["id"] = tc.id or entry["id"]
                    if tc.function is not None:
                        entry["function"]["name"] += tc.function.name or ""
                        entry["function"]["arguments"] += tc.function.arguments or ""
        message = {"role": "assistant", "content": "".join(content) or None}
        if reasoning:   # DeepSeek needs it sent back on turns with tool calls; ignored otherwise
            message["reasoning_content"] = "".join(reasoning)
        if calls and finish == "tool_calls":
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        self._footer(message, finish, usage)
        if calls and finish != "tool_calls":
            # Cut off (max_tokens) mid-call: the server ends such an answer with its raw text as
            # content, and the streamed arguments are incomplete JSON that no tool could run.
            self.write(self.style.dim("(the tool call was cut off before it was complete: not run)") + "\n")
        return message

    def _footer(self, message: dict, finish, usage) -> None:
        self.write("\n")
        for call in message.get("tool_calls", ()):
            text = f"→ tool call {call['function']['name']}({call['function']['arguments']})"
            self.write(self.style.cyan(printable(text)) + "\n")
        tokens = f"{usage.completion_tokens} tokens, " if usage is not None else ""
        self.write(self.style.dim(f"[{self.model}: {tokens}finish {finish}]") + "\n")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from deepseek.client._args import add_client_arguments

    p.add_argument("--model", default="deepseek-chat", help="model id (default: deepseek-chat)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--tools", type=Path, default=None, metavar="FILE",
                   help="JSON list of tools (OpenAI format) the model may call; you type their results")
    p.add_argument("--max-tokens", type=int, default=None, help="per answer (default: the server's)")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--thinking", action="store_true", help='send thinking: {"type": "enabled"}')
    p.add_argument("--no-color", action="store_true", help="plain output (also: NO_COLOR=1)")
    add_client_arguments(p)


def run(args: argparse.Namespace) -> int:
    from deepseek.client._args import client_from_args

    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    params = {k: v for k, v in (("max_tokens", args.max_tokens), ("temperature", args.temperature)) if v is not None}
    if args.thinking:
        params["extra_body"] = {"thinking": {"type": "enabled"}}
    tools = json.loads(args.tools.read_text()) if args.tools else None
    style = Style(sys.stdout.isatty() and not args.no_color and not os.environ.get("NO_COLOR"))
    with client_from_args(args) as client:
        session = ChatSession(client, args.model, params, args.system, tools, style=style)
        print(style.dim(f"deepseek chat with {args.model} at {client.base_url} — /help for commands"))
        while True:
            try:
                line = input(style.prompt("1", "you> "))
            except EOFError:
                print()
                return 0
            except KeyboardInterrupt:
                print()
                continue
            if line.startswith("/"):
                if not session.command(line):
                    return 0
            elif line.strip():
                session.send(line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="deepseek chat", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
