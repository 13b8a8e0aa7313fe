"""Vertex AI prediction routes, with the AIP_* variables Vertex sets on a custom container."""

from __future__ import annotations

import httpx

from server_process import Server, free_port


def test_vertex_predict_and_health_routes(tiny_checkpoint, tmp_path):
    env = {"AIP_HTTP_PORT": str(free_port()), "AIP_PREDICT_ROUTE": "/v1/endpoints/42:predict",
           "AIP_HEALTH_ROUTE": "/ping"}
    server = Server(tiny_checkpoint, tmp_path / "db.sqlite", tmp_path / "log.txt", env=env)
    try:
        assert server.port == int(env["AIP_HTTP_PORT"])
        assert httpx.get(server.url + "/ping").json() == {"status": "ok"}
        body = {"instances": [
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
            {"model": "deepseek-v3", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2},
            {"messages": [{"role": "user", "content": "x"}], "temperature": 9},
        ]}
        r = httpx.post(server.url + env["AIP_PREDICT_ROUTE"], json=body, timeout=60)
        assert r.status_code == 200
        first, second, bad = r.json()["predictions"]
        assert first["object"] == "chat.completion" and first["usage"]["completion_tokens"] == 3
        assert second["usage"]["sparse_attention"]["mode"] == "dense"
        assert bad["error"]["type"] == "invalid_request_error"
        assert httpx.post(server.url + env["AIP_PREDICT_ROUTE"], json={"rows": []}).status_code == 400
    finally:
        server.stop()
