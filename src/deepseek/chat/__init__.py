"""The chat layer between the HTTP routes and the engine, for DeepSeek-V3.2.

Going in, `encoding` turns OpenAI-format messages (and the request's tools, response format and
prefix) into the prompt text the model was trained on (spec §14.1); `encode_fim` builds
fill-in-the-middle prompts. Coming out, `parse_completion` splits a finished completion into
reasoning, content and DSML tool calls, and `StreamParser` does the same delta by delta.
"""

from .checks import ChatFormatError
from .encoding import continues_in_reasoning, encode_fim, encode_messages, encode_request
from .parser import ParsedMessage, ToolCall, new_call_id, parse_completion
from .prompts import TOOLS_BLOCK, render_tools
from .stream import (ContentDelta, Event, ReasoningDelta, StreamParser, ToolCallArgumentsDelta,
                     ToolCallStart, collect)

__all__ = ["ChatFormatError", "ContentDelta", "Event", "ParsedMessage", "ReasoningDelta",
           "StreamParser", "TOOLS_BLOCK", "ToolCall", "ToolCallArgumentsDelta", "ToolCallStart",
           "collect", "continues_in_reasoning", "encode_fim", "encode_messages", "encode_request",
           "new_call_id", "parse_completion", "render_tools"]
