"""The fixed texts V3.2's encoder adds to a system (or developer) message: tools and response format.

TOOLS_BLOCK follows DeepSeek's golden rendering (spec §14.3) byte for byte, blank lines included;
the copies vendored in vLLM and SGLang drop the blank lines, which is not what the model saw.
"""

from __future__ import annotations

from typing import Any

from deepseek.tokenizer import DSML, THINK_CLOSE, THINK_OPEN

from .dsml import json_text

TOOLS_BLOCK = f"""## Tools

You have access to a set of tools you can use to answer the user's question.
You can invoke functions by writing a "<{DSML}function_calls>" block like the following as part of your reply to the user:
<{DSML}function_calls>
<{DSML}invoke name="$FUNCTION_NAME">
<{DSML}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</{DSML}parameter>
...
</{DSML}invoke>
<{DSML}invoke name="$FUNCTION_NAME2">
...
</{DSML}invoke>
</{DSML}function_calls>

String and scalar parameters should be specified as is without any escaping or quotes, while lists and objects should use JSON format. The "string" attribute should be set to "true" for string type parameters and "false" for other types (numbers, booleans, arrays, objects).

If the thinking_mode is enabled, then after function results you should strongly consider outputting a thinking block. Here is an example:

<{DSML}function_calls>
...
</{DSML}function_calls>

<function_results>
...
</function_results>

{THINK_OPEN}...thinking about results{THINK_CLOSE}

Here are the functions available in JSONSchema format:
<functions>
{{functions}}
</functions>
"""

RESPONSE_FORMAT = ("## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n"
                   "{schema}")

# The keys the model was trained on, in the golden order; others (e.g. `strict`) stay out.
_FUNCTION_KEYS = ("name", "description", "parameters")


def render_tools(tools: list[dict]) -> str:
    """TOOLS_BLOCK for OpenAI-format tools (`{"type": "function", "function": {...}}`)."""
    lines = []
    for tool in tools:
        function = tool["function"]
        lines.append(json_text({key: function[key] for key in _FUNCTION_KEYS if key in function}))
    return TOOLS_BLOCK.replace("{functions}", "\n".join(lines))


def render_response_format(schema: Any) -> str:
    """The section that pins the reply to a JSON schema."""
    return RESPONSE_FORMAT.format(schema=json_text(schema))
