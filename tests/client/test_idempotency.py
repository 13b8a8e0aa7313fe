"""Idempotent retries end to end: a tool-result request whose answer is lost on the way back is
retried by the SDK with the same Idempotency-Key, and the server replays the stored answer: one
generation, one ledger row, one charge."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from sdk_helpers import USER, WEATHER, ledger_rows

from deepseek import DeepSeek
from deepseek.client import Backoff


class LossyProxy:
    """Forwards to the real server; the first POST's answer is swallowed and replaced by a 502,
    as when a gateway times out after the server did the work."""

    def __init__(self, upstream: str):
        self.seen: list[dict] = []
        self.swallowed: dict | None = None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type",
                                                                                  "idempotency-key")}
                r = httpx.post(upstream + self.path, content=body, headers=headers, timeout=60)
                proxy.seen.append({"key": self.headers.get("Idempotency-Key"),
                                   "replayed": r.headers.get("idempotent-replayed"), "id": r.json().get("id")})
                status, data = r.status_code, r.content
                if proxy.swallowed is None:
                    proxy.swallowed = r.json()
                    status, data = 502, b'{"error": {"message": "Bad Gateway"}}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_retried_tool_result_request_is_generated_and_charged_once(sdk_server, new_key):
    secret, key_id = new_key()
    direct = DeepSeek(api_key=secret, base_url=sdk_server.url, max_retries=0)
    first = direct.chat.completions.create(
        model="deepseek-chat", messages=USER, tools=[WEATHER], max_tokens=150, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = first.choices[0].message.tool_calls[0]
    messages = [*USER, first.choices[0].message.to_dict(),
                {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}]
    assert len(ledger_rows(sdk_server.db, key_id)) == 1

    proxy = LossyProxy(sdk_server.url)
    try:
        client = DeepSeek(api_key=secret, base_url=proxy.url, max_retries=2, backoff=Backoff(initial=0.05))
        answer = client.chat.completions.create(model="deepseek-chat", messages=messages, tools=[WEATHER],
                                                tool_choice="none", max_tokens=8)
    finally:
        proxy.close()

    assert [s["key"] for s in proxy.seen] == [proxy.seen[0]["key"]] * 2     # the retry reused the key
    assert [s["replayed"] for s in proxy.seen] == [None, "true"]
    assert answer.id == proxy.swallowed["id"] and answer.to_dict() == proxy.swallowed
    rows = ledger_rows(sdk_server.db, key_id)
    assert len(rows) == 2                 # the tool-call turn and ONE tool-result generation
    assert rows[1]["completion_tokens"] == answer.usage.completion_tokens
