"""The shipped default model, served: one command, no download, answers in the right shape.

These are the README's sample exchanges, run through the official `openai` client against a real
server on the bundled `deepseek-v3.2-nano` (greedy). The nano model has learned the formats (a short
answer, a DSML call the server parses, a JSON object) but not yet to copy the request's values into
them reliably (see `deepseek eval`), so these tests pin the shapes, not the values.
"""

import json

import pytest

from deepseek.assets import NANO, default_model_dir

from server_process import Server

pytestmark = pytest.mark.slow

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "description": "Temperature unit", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}}


def test_the_package_ships_the_nano_model():
    assert default_model_dir() == NANO
    config = json.loads((NANO / "config.json").read_text())
    assert config["quantization_config"]["fmt"] == "e4m3" and config["index_topk"] > 0
    assert sum(f.stat().st_size for f in NANO.iterdir()) <= 50 * 2 ** 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nano")
    s = Server(NANO, tmp / "db.sqlite", tmp / "server.log")
    yield s
    s.stop()


def test_chat(server):
    r = server.client().chat.completions.create(
        model="deepseek-chat", temperature=0, max_tokens=40,
        messages=[{"role": "user", "content": "How many hours are there in 3 days?"}])
    assert r.choices[0].finish_reason == "stop"          # it answers, and stops by itself
    assert any(c.isdigit() for c in r.choices[0].message.content)     # a number for a question of numbers
    assert r.usage.sparse_attention["mode"] == "sparse"


def test_tool_call(server):
    r = server.client().chat.completions.create(
        model="deepseek-chat", temperature=0, max_tokens=120, tools=[WEATHER],
        messages=[{"role": "user", "content": "What is the weather in Lisbon in celsius?"}])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"           # a well-formed DSML call, parsed by the server
    # Under "auto" a call the model begins is held to the offered functions and their schemas.
    call = choice.message.tool_calls[0].function
    arguments = json.loads(call.arguments)
    assert call.name == "get_weather" and "city" in arguments and set(arguments) <= {"city", "unit"}
    assert arguments.get("unit", "celsius") in ("celsius", "fahrenheit")


def test_json_answer(server):
    r = server.client().chat.completions.create(
        model="deepseek-chat", temperature=0, max_tokens=80, response_format={"type": "json_object"},
        messages=[{"role": "user", "content":
                   "Return json with the keys name, age, city: Maria is 31 and lives in Lisbon."}])
    answer = json.loads(r.choices[0].message.content)
    assert isinstance(answer, dict) and answer
