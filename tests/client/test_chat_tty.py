"""`deepseek chat` driven in a pseudo-terminal, as a person would use it."""

from __future__ import annotations

import io
import os
import re
import select
import subprocess
import sys
import time

import pytest
from sdk_helpers import USER, WEATHER

from deepseek.cli.chat import ChatSession, printable

ANSI = re.compile(r"\x1b\[[0-9;]*m|[\x01\x02]")
FOOTER = re.compile(r"\[([\w.-]+): [1-8] tokens, finish (?:length|stop)\]")   # a random model may stop early


class Terminal:
    """A child process on a pty. `expect` waits for text after a cursor (like pexpect), so a prompt
    that arrived in the same read as earlier output is still found, and found only once."""

    def __init__(self, argv: list[str], env: dict):
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
                                     start_new_session=True)
        os.close(slave)
        self.raw = ""             # everything the child wrote, ANSI codes included
        self.pos = 0              # cursor in the ANSI-free text
        self.sent_at = 0          # len(raw) when the last line was sent

    def expect(self, text: str, timeout: float = 30) -> str:
        """Wait for `text` after the cursor, move the cursor past it, return the plain text up to it."""
        deadline = time.monotonic() + timeout
        while True:
            plain = ANSI.sub("", self.raw)
            found = plain.find(text, self.pos)
            if found >= 0:
                seen, self.pos = plain[self.pos:found + len(text)], found + len(text)
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not seen; got {plain[self.pos:]!r}")
            if select.select([self.master], [], [], 0.2)[0]:
                try:
                    self.raw += os.read(self.master, 4096).decode(errors="replace")
                except OSError:       # the child closed the terminal
                    raise AssertionError(f"{text!r} not seen before exit; got {plain[self.pos:]!r}") from None

    def send(self, line: str) -> None:
        self.sent_at = len(self.raw)
        os.write(self.master, (line + "\r").encode())

    def raw_since_send(self) -> str:
        return self.raw[self.sent_at:]

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=15)
        finally:
            os.close(self.master)


@pytest.fixture
def chat(sdk_server):
    env = {**os.environ, "DEEPSEEK_API_KEY": sdk_server.key, "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    term = Terminal([sys.executable, "-m", "deepseek.cli.chat", "--base-url", sdk_server.url,
                     "--model", "deepseek-chat", "--max-tokens", "8", "--temperature", "0"], env)
    yield term
    if term.proc.poll() is None:
        term.proc.kill()


def test_one_streamed_exchange_then_model_switch_reasoning_reset_and_exit(chat):
    chat.expect("you> ")
    chat.send("Hello there")
    assert FOOTER.search(chat.expect("you> ")).group(1) == "deepseek-chat"

    chat.send("/model")
    assert "deepseek-reasoner" in chat.expect("you> ")
    chat.send("/model deepseek-reasoner")
    assert "(model: deepseek-reasoner)" in chat.expect("you> ")
    chat.send("Why?")
    assert FOOTER.search(chat.expect("you> ")).group(1) == "deepseek-reasoner"
    assert chat.raw_since_send().count("\x1b[2m") >= 2       # dimmed: the reasoning, then the footer

    chat.send("/reset")
    assert "(conversation cleared)" in chat.expect("you> ")
    chat.send("/exit")
    assert chat.close() == 0


def test_an_api_error_is_shown_and_the_session_goes_on(chat):
    chat.expect("you> ")
    chat.send("/model no-such-model")
    chat.expect("you> ")
    chat.send("Hi")
    assert "Model Not Exist" in chat.expect("this turn was not kept")
    chat.expect("you> ")
    chat.send("/model deepseek-chat")
    chat.expect("you> ")
    chat.send("Hi again")
    chat.expect("finish ")
    chat.expect("you> ")
    os.write(chat.master, b"\x04")                 # Ctrl-D
    assert chat.close() == 0


def test_tool_calls_are_shown_and_their_typed_results_sent_back(sdk):
    out, prompts = io.StringIO(), []
    named = {"type": "function", "function": {"name": "get_weather"}}
    session = ChatSession(sdk, "deepseek-chat", {"max_tokens": 150, "temperature": 0, "tool_choice": named},
                          tools=[WEATHER], out=out, ask=lambda p: prompts.append(p) or '{"temp_c": 21}',
                          max_tool_rounds=1)
    session.send(USER[0]["content"])
    shown = out.getvalue()
    assert "→ tool call get_weather({" in shown and "stopped after 1 rounds of tool calls" in shown
    roles = [m["role"] for m in session.history]
    assert roles == ["user", "assistant", "tool", "assistant", "tool"] and "get_weather" in prompts[0]
    assert session.history[2]["tool_call_id"] == session.history[1]["tool_calls"][0]["id"]
    session.command("/reset")
    assert session.history == []


def test_model_text_cannot_drive_the_terminal():
    assert printable("ok\x1b]0;pwned\x07\tend\n") == "ok\\x1b]0;pwned\\x07\tend\n"


def test_a_tool_call_cut_off_by_max_tokens_is_not_run(sdk):
    out, prompts = io.StringIO(), []
    named = {"type": "function", "function": {"name": "get_weather"}}
    session = ChatSession(sdk, "deepseek-chat", {"max_tokens": 45, "temperature": 0, "tool_choice": named},
                          tools=[WEATHER], out=out, ask=lambda p: prompts.append(p) or "{}")
    session.send(USER[0]["content"])
    shown = out.getvalue()
    assert "finish length" in shown and "cut off before it was complete: not run" in shown
    assert prompts == [] and "→ tool call" not in shown
    assert [m["role"] for m in session.history] == ["user", "assistant"]
    assert "tool_calls" not in session.history[1] and session.history[1]["content"]
