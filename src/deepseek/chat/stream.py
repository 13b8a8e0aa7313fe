"""Incremental parsing of a V3.2 completion into reasoning, content and tool-call deltas.

StreamParser reads the grammar in parser.py one text delta at a time. It never emits text that
may still turn out to be markup: a suffix that could begin `</think>`, EOS, the
"\\n\\n<｜DSML｜function_calls" opener or a `</｜DSML｜parameter>` tag waits for the next delta.

Invariant: for any split of a completion into deltas, the concatenated ReasoningDelta texts,
ContentDelta texts, and per-index tool-call names and ToolCallArgumentsDelta texts equal what
`parse_completion` returns for the whole text. One exception, since deltas cannot be taken
back: when the markup turns out malformed (`error` set), the tool calls already started stay
emitted; the markup itself is then sent as content, so reasoning and content still agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

from deepseek.tokenizer import THINK_CLOSE

from .dsml import (CALLS_CLOSE, CALLS_START, INVOKE_CLOSE, INVOKE_OPEN, PARAM_CLOSE, PARAM_OPEN,
                   PARAM_STRING, WHITESPACE, declared_type, json_text, streams_as_string,
                   value_json)
from .parser import ParsedMessage, ToolCall, new_call_id
from .stream_text import EosCut, held_back


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallArgumentsDelta:
    index: int
    text: str


Event = Union[ReasoningDelta, ContentDelta, ToolCallStart, ToolCallArgumentsDelta]


class StreamParser:
    """Feed text deltas, get events; call `finish()` once at the end of generation."""

    def __init__(self, thinking: bool, tools: list[dict] | None = None, *,
                 new_id: Callable[[], str] = new_call_id):
        self._tools, self._new_id = tools, new_id
        self._eos = EosCut()
        self._state = "reasoning" if thinking else "content"
        self._buf = ""  # received, not yet consumed
        self._raw = ""  # markup consumed since the calls opener, given back as content if malformed
        self._final = False
        self._events: list[Event] = []
        self._calls: list[str] = []  # names of the tool calls started
        self._keys: set[str] = set()  # parameters of the current invoke
        self._key, self._is_string, self._pending_head, self._scanned = "", False, "", 0
        self.error: str | None = None

    @property
    def eos_seen(self) -> bool:
        """Whether the model ended its message (finish_reason "stop" rather than "length")."""
        return self._eos.seen

    def feed(self, delta: str) -> list[Event]:
        self._buf += self._eos.feed(delta)
        self._run()
        return self._take()

    def finish(self) -> list[Event]:
        self._buf += self._eos.finish()
        self._final = True
        self._run()
        return self._take()

    def _run(self) -> None:
        while getattr(self, f"_on_{self._state}")():
            pass

    # Plain text: reasoning, content, and content after malformed markup.

    def _on_reasoning(self) -> bool:
        return self._text_until(THINK_CLOSE, ReasoningDelta, "content")

    def _on_content(self) -> bool:
        if not self._text_until(CALLS_START, ContentDelta, "calls_open"):
            return False
        self._raw = CALLS_START  # given back, with what follows, if the markup is malformed
        return True

    def _on_fallback(self) -> bool:
        self._emit(ContentDelta(self._buf))
        self._buf = ""
        return False

    def _text_until(self, marker: str, kind: type, next_state: str) -> bool:
        end = self._buf.find(marker)
        if end >= 0:
            self._emit(kind(self._buf[:end]))
            self._buf = self._buf[end + len(marker):]
            self._state = next_state
            return True
        safe = len(self._buf) - (0 if self._final else held_back(self._buf, marker))
        self._emit(kind(self._buf[:safe]))
        self._buf = self._buf[safe:]
        return False

    # Markup: each state consumes one piece of the grammar or waits for more text.

    def _on_calls_open(self) -> bool:
        return self._expect({">": "invoke"}, skip_space=False)

    def _on_invoke(self) -> bool:
        return self._expect({INVOKE_OPEN: "name"})

    def _on_name(self) -> bool:
        name = self._quoted(then=">")
        if name is None:
            return self.error is not None
        if not name:
            return self._fail("invoke without a function name")
        self._calls.append(name)
        self._keys = set()
        self._emit(ToolCallStart(len(self._calls) - 1, self._new_id(), name))
        self._state = "parameters"
        return True

    def _on_parameters(self) -> bool:
        if not self._expect({PARAM_OPEN: "key", INVOKE_CLOSE: "after_invoke"}):
            return False
        if self._state == "after_invoke":
            self._arguments("}" if self._keys else "{}")
        return True

    def _on_key(self) -> bool:
        key = self._quoted(then="")
        if key is None:
            return self.error is not None
        if key in self._keys:
            return self._fail(f"parameter {key!r} given twice")
        self._key, self._state = key, "string_attribute"
        return True

    def _on_string_attribute(self) -> bool:
        return self._expect({PARAM_STRING: "flag"}, skip_space=False)

    def _on_flag(self) -> bool:
        if not self._expect({'true">': "value", 'false">': "value"}, skip_space=False):
            return False
        self._is_string = self._raw.endswith('true">')
        head = ("{" if not self._keys else ", ") + json_text(self._key) + ": "
        self._keys.add(self._key)
        if streams_as_string(self._is_string, self._declared()):
            self._arguments(head + '"')
            self._state = "string_value"
        else:
            self._pending_head, self._scanned = head, 0
        return True

    def _on_string_value(self) -> bool:
        end = self._buf.find(PARAM_CLOSE)
        if end < 0 and self._final:
            return self._fail("parameter value cut off")
        size = end if end >= 0 else len(self._buf) - held_back(self._buf, PARAM_CLOSE)
        self._arguments(json_text(self._buf[:size])[1:-1])  # JSON escapes one character at a time
        self._consume(size)
        if end < 0:
            return False
        self._consume(len(PARAM_CLOSE))
        self._arguments('"')
        self._state = "parameters"
        return True

    def _on_value(self) -> bool:
        end = self._buf.find(PARAM_CLOSE, self._scanned)
        if end < 0:
            # A long JSON value arrives token by token: search each part of it once.
            self._scanned = max(0, len(self._buf) - len(PARAM_CLOSE) + 1)
            return self._fail("parameter value cut off") if self._final else False
        raw = self._buf[:end]
        self._arguments(self._pending_head + value_json(raw, self._is_string, self._declared()))
        self._consume(end + len(PARAM_CLOSE))
        self._state = "parameters"
        return True

    def _on_after_invoke(self) -> bool:
        return self._expect({INVOKE_OPEN: "name", CALLS_CLOSE: "after_calls"})

    def _on_after_calls(self) -> bool:
        self._skip_space()
        return self._fail("text after the function_calls block") if self._buf else False

    # Helpers.

    def _expect(self, options: dict[str, str], skip_space: bool = True) -> bool:
        """Consume one of `options` (literal -> next state); wait while the text may still match."""
        if skip_space:
            self._skip_space()
        for literal, state in options.items():
            if self._buf.startswith(literal):
                self._consume(len(literal))
                self._state = state
                return True
        if self._final or not any(literal.startswith(self._buf) for literal in options):
            return self._fail(f"expected one of {list(options)}")
        return False

    def _quoted(self, then: str) -> str | None:
        """The text up to the next '"' (which must be followed by `then`); None: wait or failed."""
        end = self._buf.find('"')
        if end < 0 or len(self._buf) < end + 1 + len(then):
            if self._final:
                self._fail("tag cut off")
            return None
        if not self._buf.startswith(then, end + 1):
            self._fail(f"expected {then!r} after a quoted name")
            return None
        text = self._buf[:end]
        self._consume(end + 1 + len(then))
        return text

    def _skip_space(self) -> None:
        self._consume(len(self._buf) - len(self._buf.lstrip(WHITESPACE)))

    def _consume(self, size: int) -> None:
        self._raw += self._buf[:size]
        self._buf = self._buf[size:]

    def _declared(self) -> str | None:
        return declared_type(self._tools, self._calls[-1], self._key)

    def _fail(self, reason: str) -> bool:
        self.error = reason
        self._emit(ContentDelta(self._raw))
        self._state = "fallback"
        return True

    def _arguments(self, text: str) -> None:
        self._emit(ToolCallArgumentsDelta(len(self._calls) - 1, text))

    def _emit(self, event: Event) -> None:
        if isinstance(event, ToolCallStart):
            self._events.append(event)
        elif event.text:
            last = self._events[-1] if self._events else None
            if type(last) is type(event) and getattr(last, "index", None) == getattr(event, "index", None):
                self._events[-1] = type(event)(**{**vars(last), "text": last.text + event.text})
            else:
                self._events.append(event)

    def _take(self) -> list[Event]:
        events, self._events = self._events, []
        return events


def collect(events: list[Event], thinking: bool, error: str | None = None) -> ParsedMessage:
    """The message a whole stream of events spells (what a non-streaming response would hold)."""
    reasoning, content, calls = [], [], []
    for event in events:
        if isinstance(event, ReasoningDelta):
            reasoning.append(event.text)
        elif isinstance(event, ContentDelta):
            content.append(event.text)
        elif isinstance(event, ToolCallStart):
            calls.append([event.id, event.name, ""])
        else:
            calls[event.index][2] += event.text
    tool_calls = [] if error else [ToolCall(*call) for call in calls]
    return ParsedMessage("".join(reasoning) if thinking else None, "".join(content), tool_calls, error)
