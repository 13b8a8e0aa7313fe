"""Fuzz the real server from its own OpenAPI schema: no 5xx, no hang, every error DeepSeek-shaped.

Acceptance: "A fuzz run over the OpenAPI schema (schemathesis or hypothesis) finds no 5xx and no
hang." (perf_and_reliability.md §B4; error contract api.md §A9).

* `test_schema_fuzz_*`: schemathesis loads `/openapi.json` from a running `deepseek serve` and
  generates positive and negative cases for every operation (derandomized: the same cases every
  run). `fuzz_strategies` overlays plausible parts (real model ids, conversations, tools, edge
  values of the sampling knobs) so that cases get past "Model Not Exist" into prompt rendering,
  grammars and the engine, and caps `max_tokens`. Every response must be < 500, arrive (a stream
  read to its end) within REQUEST_TIMEOUT, carry {"error": {message, type, param, code}} when it
  is a 4xx, and a 200 must not be an engine failure (finish_reason insufficient_system_resource)
  nor an event stream that breaks off before `data: [DONE]`; the server must stay healthy.
  Problems are collected over the whole run, one per (operation, cause), each with a curl
  reproducer and the server's traceback; a request that kills the server is reported and the
  server restarted (MAX_RESTARTS), so that one such bug does not hide the others.
* `test_adversarial_body`: hand-written bodies the schema generator would not produce
  (malformed JSON, NaN literals, lone surrogates, deep nesting, wrong content types, ...): each
  gets a 4xx with the error shape (or, where the body is in fact valid, any non-5xx answer).

The module runs its own server (`live`), apart from the session `server` other tests share.
Runtime knobs (the module should stay well under 90 s on 2 CPU cores): EXAMPLES, ALIAS_EXAMPLES,
NEGATIVE_SHARE, fuzz_strategies.MAX_TOKENS_CAP, REQUEST_TIMEOUT. DEEPSEEK_FUZZ_VERBOSE=1 (with -s)
prints every request's status and error message, to see where the examples stop.
"""

from __future__ import annotations

import json
import os
import re
import time

import httpx
import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup

from server_process import Server
from fuzz_strategies import pick_mode, predict_body, tame

pytestmark = pytest.mark.slow

REQUEST_TIMEOUT = 30.0        # seconds for one whole response (a stream read to its end): slower = a hang
# Positive examples per operation; operations not listed (route aliases, GETs) get ALIAS_EXAMPLES.
EXAMPLES = {"POST /v1/chat/completions": 150, "POST /beta/chat/completions": 150, "POST /beta/completions": 80,
            "POST /predict": 40}
ALIAS_EXAMPLES = 5
NEGATIVE_SHARE = 0.4          # negative (schema-violating) examples, as a share of the positive ones
MAX_HANGS = 2                 # after this many hangs the server is wedged: stop sending
MAX_RESTARTS = 2              # servers killed by a request before the fuzz gives up
ERROR_FIELDS = ("message", "type", "param", "code")
VERBOSE = bool(os.environ.get("DEEPSEEK_FUZZ_VERBOSE"))   # print every request's status (run with -s)


class LiveServer:
    """The fuzz's own `deepseek serve` (so what it breaks cannot spill into other tests), restarted
    when a request has killed it, so that one such bug does not hide the ones after it."""

    def __init__(self, checkpoint, folder):
        self.checkpoint, self.folder, self.restarts = checkpoint, folder, 0
        self.server = self._start()
        # One client and one session for the whole run: a new one per request costs ~40 ms (TLS setup).
        self.http = httpx.Client(timeout=REQUEST_TIMEOUT)
        self.session = requests.Session()

    def _start(self) -> Server:
        n = self.restarts
        return Server(self.checkpoint, self.folder / f"ledger{n}.db", self.folder / f"server{n}.log")

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def log(self):
        return self.server.log

    def healthy(self) -> bool:
        if self.server.proc.poll() is not None:
            return False
        try:
            return self.http.get(self.url + "/health", timeout=10).status_code == 200
        except httpx.HTTPError:
            return False

    def restart(self) -> None:
        self.server.proc.kill()      # it is broken: no graceful drain to wait for
        self.server.proc.wait()
        self.restarts += 1
        self.server = self._start()

    def stop(self) -> None:
        self.server.stop()
        self.http.close()
        self.session.close()


@pytest.fixture(scope="module")
def live(tiny_checkpoint, tmp_path_factory):
    s = LiveServer(tiny_checkpoint, tmp_path_factory.mktemp("fuzz"))
    yield s
    s.stop()


# ---------------------------------------------------------------------------------------------
# What every response must satisfy


def error_shape_problem(body) -> str | None:
    """Why `body` is not DeepSeek's error body, or None when it is."""
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        return f"not {{'error': {{...}}}}: {str(body)[:300]}"
    err = body["error"]
    missing = [f for f in ERROR_FIELDS if f not in err]
    if missing:
        return f"error object lacks {missing}: {err}"
    if not isinstance(err["message"], str) or not err["message"]:
        return f"error.message is not a non-empty string: {err}"
    if not isinstance(err["type"], str) or not err["type"]:
        return f"error.type is not a non-empty string: {err}"
    if err["param"] is not None and not isinstance(err["param"], str):
        return f"error.param is neither null nor a string: {err}"
    if err["code"] is not None and not isinstance(err["code"], str):
        return f"error.code is neither null nor a string: {err}"
    return None


def response_problem(status: int, content_type: str, content: bytes) -> str | None:
    """Everything but the 5xx and timing checks, on a response as raw parts."""
    if 400 <= status < 500:
        try:
            body = json.loads(content)
        except ValueError:
            return f"{status} with a body that is not JSON: {content[:300]!r}"
        problem = error_shape_problem(body)
        return f"{status} with a malformed error body: {problem}" if problem else None
    if status == 200 and b'"finish_reason":"insufficient_system_resource"' in content.replace(b" ", b""):
        return ("200 with finish_reason insufficient_system_resource: the engine failed while running this "
                f"request: ...{content[-300:]!r}")
    if status == 200 and content_type.startswith("text/event-stream"):
        if not content.rstrip().endswith(b"data: [DONE]"):
            return f"200 event stream does not end with 'data: [DONE]' (broken mid-stream?): ...{content[-400:]!r}"
        return None
    if status == 200 and content_type.startswith("application/json"):
        try:
            body = json.loads(content)
        except ValueError:
            return f"200 with a body that is not JSON: {content[:300]!r}"
        for prediction in body.get("predictions", []) if isinstance(body, dict) else []:
            if isinstance(prediction, dict) and "error" in prediction:    # Vertex: one failed instance
                problem = error_shape_problem(prediction)
                if problem:
                    return f"a failed Vertex prediction has a malformed error body: {problem}"
    return None


def deepseek_error_shape(ctx, response, case):
    """A schemathesis check: 4xx bodies are DeepSeek errors; 200 streams end with [DONE]."""
    problem = response_problem(response.status_code, response.headers.get("content-type", [""])[0],
                               response.content)
    assert problem is None, problem


# ---------------------------------------------------------------------------------------------
# The schema fuzz


class LogCursor:
    """Reads what the server logged since `skip()` (its tracebacks explain a 5xx)."""

    def __init__(self, live: LiveServer):
        self.live, self.log, self.offset = live, None, 0
        self.skip()

    def skip(self) -> None:
        self.log = self.live.log
        self.offset = self.log.stat().st_size if self.log.exists() else 0

    def new_tracebacks(self, lines_kept: int = 14) -> tuple[str, str]:
        """(the last line of the first new traceback, or "", and the tails of all of them for a report)."""
        data = b""
        for _ in range(10):   # uvicorn may log an unhandled error just after the 500 has gone out
            with open(self.log, "rb") as f:
                f.seek(self.offset)
                data = f.read()
            if b"Traceback" in data:
                break
            time.sleep(0.03)
        self.offset += len(data)
        tails, last = [], ""
        for block in data.decode(errors="replace").split("Traceback (most recent call last):")[1:]:
            lines = block.strip("\n").splitlines()
            if not lines:
                continue
            # The frames are indented; the first line that is not is the exception itself.
            end = next((i for i, line in enumerate(lines) if line.strip() and not line[0].isspace()), len(lines) - 1)
            last = last or lines[end].strip()
            tails.append("\n".join(lines[max(0, end + 1 - lines_kept):end + 1]))
        if not tails:
            return "", ""
        return last, f"\n--- server traceback ({self.log}):\n" + "\n...\n".join(dict.fromkeys(tails))


def signature(text: str) -> str:
    """A short signature of a problem, so that repeats of one bug collapse into one finding."""
    first = text.strip().splitlines()[0] if text.strip() else text
    return re.sub(r"0x[0-9a-f]+|[0-9a-f]{8,}|\d+", "#", first)[:110]


class Findings:
    """Problems seen over the whole run, one per (operation, signature), with a reproducer each."""

    def __init__(self, live: LiveServer):
        self.live = live
        self.items: dict[tuple, str] = {}
        self.count: dict[tuple, int] = {}
        self.hangs = 0
        self.gave_up = False         # too many requests killed the server: stop sending
        self.requests = 0
        self.statuses: dict[str, dict[int, int]] = {}
        self.seconds: dict[str, float] = {}
        self.log = LogCursor(live)

    def add(self, label: str, kind: str, detail: str) -> None:
        key = (label, kind)
        self.count[key] = self.count.get(key, 0) + 1
        self.items.setdefault(key, detail)

    @property
    def stop(self) -> bool:
        return self.hangs >= MAX_HANGS or self.gave_up

    def report(self) -> str:
        lines = [f"{len(self.items)} distinct problem(s) in {self.requests} requests "
                 f"({self.live.restarts} server restart(s)):"]
        lines += [f"  {label}: statuses {dict(sorted(s.items()))}, {self.seconds[label]:.1f} s"
                  for label, s in self.statuses.items()]
        for (label, kind), detail in self.items.items():
            lines.append(f"\n=== {label}: {kind} (x{self.count[(label, kind)]})\n{detail}")
        return "\n".join(lines)


def send(findings: Findings, case, label: str) -> None:
    """Send one case, check the answer, record any problem (never raise: the run goes on)."""
    if findings.stop:
        return
    findings.requests += 1
    findings.log.skip()
    live = findings.live
    started = time.monotonic()
    try:
        response = case.call(base_url=live.url, session=live.session, timeout=REQUEST_TIMEOUT)
    except requests.exceptions.Timeout:
        findings.hangs += 1
        findings.add(label, "hang: no answer", f"no response within {REQUEST_TIMEOUT} s\n"
                     f"{case.as_curl_command(base_url=live.url)}{findings.log.new_tracebacks()[1]}")
        response = None
    except requests.exceptions.RequestException as e:
        last, tracebacks = findings.log.new_tracebacks()
        findings.add(label, f"transport error {type(e).__name__} (stream broken?): {signature(last)}",
                     f"{e}\n{case.as_curl_command(base_url=live.url)}{tracebacks}")
        response = None
    elapsed = time.monotonic() - started
    seen = findings.statuses.setdefault(label, {})
    status = response.status_code if response is not None else 0
    seen[status] = seen.get(status, 0) + 1
    if VERBOSE and response is not None:    # for tuning the strategies: where do the examples stop?
        print("FUZZ", label, status, response.text[:160].replace("\n", " "), "<-",
              json.dumps(case.body)[:400] if isinstance(case.body, dict) else repr(case.body)[:100])
    findings.seconds[label] = findings.seconds.get(label, 0.0) + elapsed
    if response is not None and (response.stream_cut_short or elapsed > REQUEST_TIMEOUT):
        findings.hangs += 1
        findings.add(label, "hang: stream did not finish",
                     f"{elapsed:.1f} s, stream cut short={response.stream_cut_short}\n"
                     f"{case.as_curl_command(base_url=live.url)}{findings.log.new_tracebacks()[1]}")
    elif response is not None:
        try:
            case.validate_response(response, checks=[not_a_server_error, deepseek_error_shape],
                                   transport_kwargs={"base_url": live.url})
        except FailureGroup as group:
            last, tracebacks = findings.log.new_tracebacks()
            for failure in group.exceptions:
                if response.status_code >= 500:
                    kind = f"{response.status_code}: " + signature(last or response.text)
                else:
                    kind = signature(str(failure.message or failure.title))
                findings.add(label, kind, f"{str(group)[:8000]}{tracebacks}")
    if not live.healthy():     # this request killed the engine (or the process): say so, start afresh
        findings.add(label, "the server is unhealthy after this request",
                     f"{case.as_curl_command(base_url=live.url)}\nlast log lines:\n"
                     + live.log.read_text(errors="replace")[-2500:])
        if live.restarts < MAX_RESTARTS:
            live.restart()
            findings.log.skip()
        else:
            findings.gave_up = True
            findings.add("fuzz", "gave up", f"{MAX_RESTARTS + 1} requests killed the server; fix those first")


def draw_body(data, op, mode: GenerationMode, kind: str, beta: bool):
    """A body for `op`: generated by schemathesis and tamed, or (mode "plausible only") our own."""
    how = pick_mode(data.draw, mode == GenerationMode.NEGATIVE)
    if how == "plausible only":      # skip the schemathesis draw: its body would be thrown away
        return tame(data.draw, how, None, kind, beta), None
    case = data.draw(op.as_strategy(mode))
    if isinstance(case.body, dict):
        case.body = tame(data.draw, how, case.body, kind, beta)
    return case.body, case


def fuzz_operation(findings: Findings, op, mode: GenerationMode, examples: int, predict_chat=None) -> None:
    label = op.label
    kind = "fim" if label.endswith("/completions") and "chat" not in label else "chat"

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data):
        if predict_chat is not None:      # /predict has no body in the schema: chat bodies as instances
            n = data.draw(st.integers(1, 3))
            instances = [draw_body(data, predict_chat, mode, "chat", True)[0] for _ in range(n)]
            instances = [i for i in instances if isinstance(i, (dict, list, str, int, float, bool, type(None)))] or [{}]
            case = op.Case(body=data.draw(predict_body(instances)), media_type="application/json")
        elif op.method.upper() == "POST":
            body, case = draw_body(data, op, mode, kind, beta="/beta" in label)
            case = case or op.Case(body=body, media_type="application/json")
        else:
            case = data.draw(op.as_strategy(mode))
        send(findings, case, f"{label} [{mode.value}]")

    try:
        run()
    except Unsatisfiable:      # nothing negative to generate (an operation without parameters)
        pass


def load_schema(server: LiveServer):
    config = schemathesis.Config.from_dict({"base-url": server.url, "request-timeout": REQUEST_TIMEOUT,
                                            "max-stream-events": 100_000,
                                            "output": {"sanitization": {"enabled": False}}})
    return schemathesis.openapi.from_url(server.url + "/openapi.json", config=config)


def test_schema_fuzz_finds_no_5xx_no_hang_and_deepseek_errors(live):
    schema = load_schema(live)
    ops = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in ops}
    assert {"POST /v1/chat/completions", "POST /beta/chat/completions", "POST /beta/completions",
            "GET /v1/models", "POST /predict"} <= labels, labels
    chat = next(op for op in ops if op.label == "POST /v1/chat/completions")
    findings = Findings(live)
    for op in ops:
        n = EXAMPLES.get(op.label, ALIAS_EXAMPLES)
        extra = {"predict_chat": chat} if op.label == "POST /predict" else {}
        fuzz_operation(findings, op, GenerationMode.POSITIVE, n, **extra)
        fuzz_operation(findings, op, GenerationMode.NEGATIVE, max(1, round(n * NEGATIVE_SHARE)), **extra)
    print(findings.report())
    assert not findings.items, findings.report()
    assert findings.requests >= sum(EXAMPLES.values()), findings.requests
    # The fuzz must get past validation often enough to be worth its time (else the strategies rotted).
    generated = findings.statuses["POST /v1/chat/completions [positive]"].get(200, 0)
    assert generated >= EXAMPLES["POST /v1/chat/completions"] // 10, findings.report()


# ---------------------------------------------------------------------------------------------
# Hand-written adversarial bodies

CHAT = "/v1/chat/completions"
BETA = "/beta/chat/completions"
FIM = "/beta/completions"
PREDICT = "/predict"
JSON_CT = {"content-type": "application/json"}
USER = [{"role": "user", "content": "hi"}]


def chat(**fields) -> bytes:
    return json.dumps({"model": "deepseek-chat", "messages": USER, "max_tokens": 4, **fields}).encode()


def fim(**fields) -> bytes:
    return json.dumps({"model": "deepseek-chat", "prompt": "def f(", "max_tokens": 2, **fields}).encode()


def raw_chat(fields: str) -> bytes:
    """A chat body with `fields` spliced in verbatim (for what json.dumps cannot write)."""
    return ('{"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, '
            + fields + "}").encode()


def raw_message(messages: str) -> bytes:
    """A chat body whose messages list is `messages`, verbatim."""
    return ('{"model": "deepseek-chat", "max_tokens": 4, "messages": [' + messages + "]}").encode()


def nested(depth: int, leaf="x") -> str:
    return "[" * depth + json.dumps(leaf) + "]" * depth


def tool_round(arguments, **result) -> list:
    """user -> assistant calling get_weather(arguments) -> the tool's result (`result` edits it)."""
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    tool = {"role": "tool", "tool_call_id": "c1", "content": "sunny", **result}
    return [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
            {k: v for k, v in tool.items() if v is not None}]


def strict_tool(params) -> list:
    return [{"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": params}}]


def strict_object(**properties) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


PREFIX = {"role": "assistant", "prefix": True, "content": "x"}
SURROGATE_CALL = ('{"role": "user", "content": "w"}, {"role": "assistant", "tool_calls": [{"id": "c", "function": '
                  '{"name": "\\ud800", "arguments": "{}"}}]}, {"role": "tool", "tool_call_id": "c", "content": "x"}')
SPECIAL_TOKENS = "<｜end▁of▁sentence｜><｜Assistant｜></think><｜DSML｜function_calls>"

# (id, path, body bytes, headers, expect): expect "4xx" = a DeepSeek error; "any" = anything but a 5xx
# (for bodies that are in fact valid); an int = that exact status.
ADVERSARIAL = [
    # -- not a JSON object at all
    ("malformed-json", CHAT, b'{"model": "deepseek-chat", "messages": [', JSON_CT, 400),
    ("trailing-garbage", CHAT, chat() + b"}}", JSON_CT, 400),
    ("json-array-body", CHAT, b"[" + chat() + b"]", JSON_CT, 400),
    ("json-string-body", CHAT, b'"hello"', JSON_CT, 400),
    ("json-null-body", CHAT, b"null", JSON_CT, 400),
    ("json-number-body", CHAT, b"42", JSON_CT, 400),
    ("empty-body-json-ct", CHAT, b"", JSON_CT, 400),
    ("empty-body-no-ct", CHAT, b"", {}, "4xx"),
    ("invalid-utf8", CHAT, raw_message('{"role": "user", "content": "@@"}').replace(b"@@", b"\xff\xfe"), JSON_CT,
     "4xx"),
    ("utf16-body", CHAT, chat().decode().encode("utf-16"), JSON_CT, "any"),     # json.loads detects UTF-16
    # -- wrong content types
    ("text-plain-ct", CHAT, chat(), {"content-type": "text/plain"}, "any"),
    ("form-ct", CHAT, b"model=deepseek-chat&messages=hi", {"content-type": "application/x-www-form-urlencoded"},
     "4xx"),
    ("multipart-ct", CHAT, b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nx\r\n--b--\r\n',
     {"content-type": "multipart/form-data; boundary=b"}, "4xx"),
    ("xml-ct", CHAT, b"<model>deepseek-chat</model>", {"content-type": "application/xml"}, "4xx"),
    ("vendor-json-ct", CHAT, chat(), {"content-type": "application/vnd.api+json"}, "any"),
    ("json-ct-utf16-charset", CHAT, chat(), {"content-type": "application/json; charset=utf-16"}, "any"),
    # -- huge and tiny numbers
    ("max-tokens-1e30", CHAT, chat(max_tokens=10**30), JSON_CT, 422),
    ("max-tokens-1e400", CHAT, raw_chat('"max_tokens": 1e400'), JSON_CT, "4xx"),
    ("max-tokens-float", CHAT, chat(max_tokens=4.5), JSON_CT, "4xx"),
    ("max-tokens-zero", CHAT, chat(max_tokens=0), JSON_CT, 422),
    ("max-tokens-negative", CHAT, chat(max_tokens=-1), JSON_CT, 422),
    ("temperature-1e308", CHAT, chat(temperature=1e308), JSON_CT, 422),
    ("temperature-1e-308", CHAT, chat(temperature=1e-308), JSON_CT, "any"),     # 0 in float32
    ("temperature-1e-40", CHAT, chat(temperature=1e-40), JSON_CT, "any"),       # logits / T overflow float32
    ("temperature-5e-324", CHAT, chat(temperature=5e-324, stream=True), JSON_CT, "any"),
    ("top-p-1e-308", CHAT, chat(top_p=1e-308), JSON_CT, "any"),
    ("fim-temperature-1e-300", FIM, fim(temperature=1e-300), JSON_CT, "any"),
    ("temperature-1e400", CHAT, raw_chat('"temperature": 1e400'), JSON_CT, "4xx"),
    ("seed-2**64", CHAT, chat(seed=2**64), JSON_CT, "any"),
    ("seed-2**64-stream", CHAT, chat(seed=2**64, stream=True), JSON_CT, "any"),
    ("seed-1e30", CHAT, chat(seed=10**30), JSON_CT, "any"),
    ("seed-negative-huge", CHAT, chat(seed=-(10**30)), JSON_CT, "any"),
    ("seed-1000-digits", CHAT, raw_chat('"seed": ' + "9" * 1000), JSON_CT, "any"),
    ("seed-5000-digits", CHAT, raw_chat('"seed": ' + "9" * 5000), JSON_CT, "4xx"),   # past Python's int limit
    ("top-logprobs-1e30", CHAT, chat(logprobs=True, top_logprobs=10**30), JSON_CT, 422),
    ("n-1e30", CHAT, chat(n=10**30), JSON_CT, 422),
    ("fim-max-tokens-1e30", FIM, fim(max_tokens=10**30), JSON_CT, 422),
    ("fim-seed-1e30", FIM, fim(seed=10**30), JSON_CT, "any"),
    # -- NaN / Infinity literals (not JSON, but Python's parser takes them)
    ("temperature-nan", CHAT, raw_chat('"temperature": NaN'), JSON_CT, "4xx"),
    ("top-p-infinity", CHAT, raw_chat('"top_p": Infinity'), JSON_CT, "4xx"),
    ("penalty-minus-infinity", CHAT, raw_chat('"frequency_penalty": -Infinity'), JSON_CT, "4xx"),
    ("max-tokens-nan", CHAT, raw_chat('"max_tokens": NaN'), JSON_CT, "4xx"),
    ("seed-infinity", CHAT, raw_chat('"seed": Infinity'), JSON_CT, "4xx"),
    ("nan-in-tool-params", CHAT, raw_chat('"tools": [{"type": "function", "function": {"name": "f", "parameters": '
                                          '{"type": "object", "properties": {"a": {"default": NaN}}}}}]'),
     JSON_CT, "any"),
    ("nan-in-strict-schema", BETA, raw_chat('"tools": [{"type": "function", "function": {"name": "f", "strict": true, '
                                            '"parameters": {"type": "object", "properties": {"a": {"enum": [NaN]}}, '
                                            '"required": ["a"], "additionalProperties": false}}}], '
                                            '"tool_choice": "required"'), JSON_CT, "any"),
    # -- deep nesting
    ("extra-field-nested-100k", CHAT, raw_chat('"extra": ' + nested(100_000)), JSON_CT, "4xx"),
    ("content-nested-100k", CHAT, raw_message('{"role": "user", "content": ' + nested(100_000) + "}"), JSON_CT, "4xx"),
    ("content-nested-500", CHAT, chat(messages=[{"role": "user", "content": json.loads(nested(500))}]), JSON_CT,
     "4xx"),
    ("kwargs-nested-objects-900", CHAT, raw_chat('"chat_template_kwargs": ' + '{"a": ' * 900 + "1" + "}" * 900),
     JSON_CT, "any"),
    ("tool-params-nested-900", CHAT, raw_chat('"tools": [{"type": "function", "function": {"name": "f", "parameters": '
                                              + '{"a": ' * 900 + "1" + "}" * 900 + "}}]"), JSON_CT, "any"),
    ("strict-schema-nested-items-300", BETA, chat(tools=strict_tool(json.loads(
        '{"type": "array", "items": ' * 300 + '{"type": "string"}' + "}" * 300))), JSON_CT, "any"),
    ("tool-args-nested-100k", CHAT, chat(messages=tool_round('{"a": ' + nested(100_000) + "}")), JSON_CT, "4xx"),
    ("predict-nested-100k", PREDICT, ('{"instances": ' + nested(100_000) + "}").encode(), JSON_CT, "4xx"),
    # -- roles and message shapes
    ("unknown-role", CHAT, chat(messages=[{"role": "wizard", "content": "hi"}]), JSON_CT, 400),
    ("missing-role", CHAT, chat(messages=[{"content": "hi"}]), JSON_CT, 400),
    ("role-not-string", CHAT, chat(messages=[{"role": ["user"], "content": "hi"}]), JSON_CT, 400),
    ("role-null", CHAT, chat(messages=[{"role": None, "content": "hi"}]), JSON_CT, 400),
    ("message-not-object", CHAT, chat(messages=["hi"]), JSON_CT, "4xx"),
    ("message-null", CHAT, chat(messages=[None]), JSON_CT, "4xx"),
    ("messages-empty", CHAT, chat(messages=[]), JSON_CT, "4xx"),
    ("messages-object", CHAT, chat(messages={"role": "user", "content": "hi"}), JSON_CT, "4xx"),
    ("messages-string", CHAT, chat(messages="hi"), JSON_CT, "4xx"),
    ("content-missing", CHAT, chat(messages=[{"role": "user"}]), JSON_CT, 400),
    ("content-number", CHAT, chat(messages=[{"role": "user", "content": 5}]), JSON_CT, 400),
    ("only-system", CHAT, chat(messages=[{"role": "system", "content": "be brief"}]), JSON_CT, "any"),
    ("only-assistant", CHAT, chat(messages=[{"role": "assistant", "content": "hello"}]), JSON_CT, "any"),
    ("developer-empty", CHAT, chat(messages=[{"role": "developer", "content": ""}]), JSON_CT, 400),
    # -- content lists of parts
    ("content-text-parts", CHAT, chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]), JSON_CT, "any"),
    ("content-parts-empty-list", CHAT, chat(messages=[{"role": "user", "content": []}]), JSON_CT, "any"),
    ("content-image-part", CHAT, chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]), JSON_CT, 400),
    ("content-part-not-object", CHAT, chat(messages=[{"role": "user", "content": ["a", 1, None]}]), JSON_CT, 400),
    ("content-part-text-not-string", CHAT, chat(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]),
     JSON_CT, 400),
    ("assistant-parts-prefix", BETA, chat(messages=USER + [{**PREFIX, "content": [{"type": "text", "text": "Sure"}]}]),
     JSON_CT, "any"),
    ("prefix-content-number", BETA, chat(messages=USER + [{**PREFIX, "content": 5}]), JSON_CT, 400),
    ("prefix-reasoner-content-number", BETA,
     chat(model="deepseek-reasoner", messages=USER + [{**PREFIX, "content": 5}]), JSON_CT, 400),
    ("prefix-not-last", BETA, chat(messages=[PREFIX] + USER), JSON_CT, 400),
    ("prefix-on-v1", CHAT, chat(messages=USER + [PREFIX]), JSON_CT, 400),
    ("prefix-with-tool-calls", BETA,
     chat(messages=USER + [{**PREFIX, "tool_calls": tool_round("{}")[1]["tool_calls"]}]), JSON_CT, 400),
    # -- tool calls and tool messages
    ("tool-args-not-json", CHAT, chat(messages=tool_round("{'city': Paris")), JSON_CT, 400),
    ("tool-args-json-array", CHAT, chat(messages=tool_round("[1, 2]")), JSON_CT, 400),
    ("tool-args-object-not-string", CHAT, chat(messages=tool_round({"city": "Paris"})), JSON_CT, "any"),
    ("tool-args-nan", CHAT, chat(messages=tool_round('{"days": NaN}')), JSON_CT, "any"),   # json.loads reads NaN
    ("tool-args-1e400", CHAT, chat(messages=tool_round('{"days": 1e400}')), JSON_CT, "any"),
    ("tool-calls-not-list", CHAT, chat(messages=[USER[0], {"role": "assistant", "tool_calls": "get_weather()"},
                                                 tool_round("{}")[2]]), JSON_CT, 400),
    ("tool-call-no-function", CHAT, chat(messages=[USER[0], {"role": "assistant", "tool_calls": [{"id": "c1"}]},
                                                   tool_round("{}")[2]]), JSON_CT, 400),
    ("tool-message-first", CHAT, chat(messages=[tool_round("{}")[2]]), JSON_CT, 400),
    ("tool-message-after-user", CHAT, chat(messages=USER + [tool_round("{}")[2]]), JSON_CT, 400),
    ("tool-message-no-id", CHAT, chat(messages=tool_round("{}", tool_call_id=None)), JSON_CT, "any"),
    ("too-many-tool-results", CHAT, chat(messages=tool_round("{}") + [tool_round("{}")[2]]), JSON_CT, 400),
    ("tool-choice-without-tools", CHAT, chat(tool_choice="required"), JSON_CT, 400),
    ("tool-choice-unknown-name", CHAT, chat(tools=[{"type": "function", "function": {"name": "f"}}],
                                            tool_choice={"type": "function", "function": {"name": "nope"}}),
     JSON_CT, "4xx"),
    ("tool-name-bad-pattern", CHAT, chat(tools=[{"type": "function", "function": {"name": "a b"}}]), JSON_CT, 422),
    ("tools-not-list", CHAT, chat(tools={"type": "function"}), JSON_CT, "4xx"),
    ("tools-129", CHAT, chat(tools=[{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]),
     JSON_CT, "4xx"),
    ("tool-params-list", CHAT, chat(tools=[{"type": "function", "function": {"name": "f", "parameters": [1]}}]),
     JSON_CT, "4xx"),
    # -- strict tool schemas (beta) that are not schemas
    ("strict-properties-not-object", BETA, chat(tools=strict_tool({"type": "object", "properties": 5})), JSON_CT, 400),
    ("strict-properties-list", BETA, chat(tools=strict_tool({"type": "object", "properties": ["a"]})), JSON_CT, 400),
    ("strict-required-not-list", BETA, chat(tools=strict_tool({**strict_object(), "required": 5})), JSON_CT, 400),
    ("strict-property-schema-not-object", BETA, chat(tools=strict_tool(strict_object(a=5))), JSON_CT, 400),
    ("strict-anyof-not-list", BETA, chat(tools=strict_tool({"anyOf": 5})), JSON_CT, 400),
    ("strict-anyof-of-numbers", BETA, chat(tools=strict_tool({"anyOf": [1, 2]})), JSON_CT, 400),
    ("strict-type-list", BETA, chat(tools=strict_tool({"type": ["object", "null"], "properties": {}})), JSON_CT, "any"),
    ("strict-unknown-type", BETA, chat(tools=strict_tool(strict_object(a={"type": "wizard"})), tool_choice="required"),
     JSON_CT, "any"),
    ("strict-ref", BETA, chat(tools=strict_tool(strict_object(a={"$ref": "#/nowhere"})), tool_choice="required"),
     JSON_CT, "any"),
    ("strict-params-string", BETA, chat(tools=strict_tool("object")), JSON_CT, "4xx"),
    # -- unicode surrogates and odd characters
    ("content-lone-surrogate", CHAT, raw_message('{"role": "user", "content": "a\\ud800b"}'), JSON_CT, "4xx"),
    ("content-low-surrogate", CHAT, raw_message('{"role": "user", "content": "\\udfff"}'), JSON_CT, "4xx"),
    ("content-surrogate-pair", CHAT, raw_message('{"role": "user", "content": "\\ud83d\\ude00"}'), JSON_CT, "any"),
    ("model-surrogate", CHAT, b'{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}', JSON_CT, "4xx"),
    ("stop-surrogate", CHAT, raw_chat('"stop": ["\\ud800"]'), JSON_CT, "any"),
    ("stop-surrogate-stream", CHAT, raw_chat('"stop": ["\\ud800"], "stream": true'), JSON_CT, "any"),
    ("system-surrogate", CHAT,
     raw_message('{"role": "system", "content": "\\udc00"}, {"role": "user", "content": "hi"}'), JSON_CT, "4xx"),
    ("tool-name-surrogate", CHAT, raw_message(SURROGATE_CALL), JSON_CT, "4xx"),
    ("fim-prompt-surrogate", FIM, b'{"model": "deepseek-chat", "prompt": "\\ud800", "max_tokens": 2}', JSON_CT, "4xx"),
    ("fim-suffix-surrogate", FIM, b'{"model": "deepseek-chat", "prompt": "a", "suffix": "\\udbff", "max_tokens": 2}',
     JSON_CT, "4xx"),
    ("predict-surrogate", PREDICT, b'{"instances": [{"messages": [{"role": "user", "content": "\\ud800"}], '
                                   b'"max_tokens": 2}]}', JSON_CT, "any"),
    ("content-nul", CHAT, chat(messages=[{"role": "user", "content": "a\x00b"}]), JSON_CT, "any"),
    ("content-special-tokens", CHAT, chat(messages=[{"role": "user", "content": SPECIAL_TOKENS}]), JSON_CT, "any"),
    # -- very long strings
    ("content-1mb", CHAT, chat(messages=[{"role": "user", "content": "a" * 1_000_000}]), JSON_CT, "4xx"),
    ("content-1mb-varied", CHAT, chat(messages=[{"role": "user", "content": "héllo wörld 你好 " * 60_000}]),
     JSON_CT, "4xx"),
    ("model-100kb", CHAT, chat(model="m" * 100_000), JSON_CT, "4xx"),
    ("stop-100kb", CHAT, chat(stop=["s" * 100_000]), JSON_CT, "any"),
    ("tool-name-10kb", CHAT, chat(tools=[{"type": "function", "function": {"name": "f" * 10_000}}]), JSON_CT, "4xx"),
    ("key-100kb", CHAT, raw_chat('"' + "k" * 100_000 + '": 1'), JSON_CT, "any"),
    ("fim-prompt-1mb", FIM, fim(prompt="x = 1\n" * 170_000), JSON_CT, "4xx"),
    ("many-messages", CHAT, chat(messages=[{"role": "user", "content": ""}] * 20_000), JSON_CT, "4xx"),
    # -- other parameter combinations
    ("response-format-json-schema", CHAT, chat(response_format={"type": "json_schema", "json_schema": {}}),
     JSON_CT, 422),
    ("response-format-unknown", CHAT, chat(response_format={"type": "yaml"}), JSON_CT, 422),
    ("logprobs-on-reasoner", CHAT, chat(model="deepseek-reasoner", logprobs=True), JSON_CT, 400),
    ("stream-options-without-stream", CHAT, chat(stream_options={"include_usage": True}), JSON_CT, 400),
    ("stream-string", CHAT, chat(stream="true"), JSON_CT, "4xx"),
    ("stop-17", CHAT, chat(stop=[f"s{i}" for i in range(17)]), JSON_CT, 422),
    ("stop-empty-string", CHAT, chat(stop=""), JSON_CT, "4xx"),
    ("thinking-bad-type", CHAT, chat(thinking={"type": "maybe"}), JSON_CT, 422),
    ("model-number", CHAT, chat(model=3), JSON_CT, "4xx"),
    ("model-missing", CHAT, json.dumps({"messages": USER}).encode(), JSON_CT, "4xx"),
    ("fim-reasoner", FIM, fim(model="deepseek-reasoner"), JSON_CT, 400),
    ("fim-prompt-list", FIM, fim(prompt=["a", "b"]), JSON_CT, "4xx"),
    ("fim-logprobs-21", FIM, fim(logprobs=21), JSON_CT, 422),
    # -- Vertex predict (one bad instance gets an error prediction; the batch still answers)
    ("predict-malformed", PREDICT, b'{"instances": [', JSON_CT, 400),
    ("predict-array", PREDICT, b"[]", JSON_CT, 400),
    ("predict-empty-body", PREDICT, b"", JSON_CT, 400),
    ("predict-no-instances", PREDICT, b"{}", JSON_CT, 400),
    ("predict-instances-object", PREDICT, b'{"instances": {"messages": []}}', JSON_CT, 400),
    ("predict-instance-not-object", PREDICT, b'{"instances": [1, null, "x"]}', JSON_CT, "any"),
    ("predict-nan", PREDICT, b'{"instances": [{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN, '
                             b'"max_tokens": 2}]}', JSON_CT, "any"),
    ("predict-invalid-instance", PREDICT, json.dumps({"instances": [{"messages": "hi"}, {"model": "nope"}]}).encode(),
     JSON_CT, "any"),
    ("predict-instance-seed-2**64", PREDICT, json.dumps({"instances": [
        {"messages": USER, "max_tokens": 2}, {"messages": USER, "max_tokens": 2, "seed": 2**64}]}).encode(),
     JSON_CT, "any"),
    ("predict-instance-strict-bad", PREDICT, json.dumps({"instances": [
        {"messages": USER, "max_tokens": 2, "tools": strict_tool({"type": "object", "properties": 5})}]}).encode(),
     JSON_CT, "any"),
    ("predict-text-plain", PREDICT, b'{"instances": []}', {"content-type": "text/plain"}, "4xx"),
]


@pytest.fixture
def fuzz_server(live):
    """The fuzz server, restarted first if the previous test's request killed it."""
    if not live.healthy():
        live.restart()
    return live


@pytest.mark.parametrize("name, path, body, headers, expect", ADVERSARIAL, ids=[c[0] for c in ADVERSARIAL])
def test_adversarial_body(fuzz_server, name, path, body, headers, expect):
    log = LogCursor(fuzz_server)
    started = time.monotonic()
    try:
        r = fuzz_server.http.post(fuzz_server.url + path, content=body, headers=headers)
    except httpx.TimeoutException:
        pytest.fail(f"hang: no answer to {name} within {REQUEST_TIMEOUT} s{log.new_tracebacks()[1]}")
    except httpx.HTTPError as e:    # e.g. a 200 stream that broke off mid-way
        pytest.fail(f"POST {path} {name}: transport error {e!r}{log.new_tracebacks()[1]}")
    elapsed = time.monotonic() - started
    where = f"POST {path} {name}: {r.status_code} in {elapsed:.2f} s: {r.text[:500]}"
    assert r.status_code < 500, where + log.new_tracebacks()[1]
    assert elapsed < REQUEST_TIMEOUT, where
    problem = response_problem(r.status_code, r.headers.get("content-type", ""), r.content)
    assert problem is None, f"{where}\n{problem}{log.new_tracebacks()[1]}"
    assert fuzz_server.healthy(), f"{where}\nthe server is unhealthy after this request{log.new_tracebacks()[1]}"
    if expect == "4xx":
        assert 400 <= r.status_code < 500, where
    elif isinstance(expect, int):
        assert r.status_code == expect, where
    if path == PREDICT and r.status_code == 200:
        assert all(isinstance(p, dict) and ("choices" in p or "error" in p) for p in r.json()["predictions"]), where


def test_server_survives_the_fuzz(live):
    """Last in the module: the server that took the adversarial bodies still answers a plain request."""
    assert live.healthy(), live.log.read_text(errors="replace")[-3000:]
    r = live.http.post(live.url + CHAT, content=chat(), headers=JSON_CT)
    assert r.status_code == 200, r.text
    assert 1 <= r.json()["usage"]["completion_tokens"] <= 4


@pytest.mark.parametrize("status, content_type, content, ok", [
    (400, "application/json", b'{"error": {"message": "x", "type": "t", "param": null, "code": null}}', True),
    (422, "application/json", b'{"detail": [{"loc": ["body"], "msg": "x"}]}', False),      # FastAPI's own shape
    (400, "application/json", b'{"error": {"message": "x", "type": "t"}}', False),          # param, code missing
    (404, "text/plain", b"Not Found", False),
    (200, "text/event-stream", b'data: {"choices": []}\n\ndata: [DONE]\n\n', True),
    (200, "text/event-stream", b'data: {"choices": []}\n\n', False),                       # broken off
    (200, "application/json", b'{"choices": [{"finish_reason": "insufficient_system_resource"}]}', False),
    (200, "application/json", b'{"predictions": [{"error": {"message": "x"}}]}', False),
])
def test_the_response_checks_themselves(status, content_type, content, ok):
    """No server: the checks above catch what they are meant to (so a green fuzz means something)."""
    assert (response_problem(status, content_type, content) is None) == ok
