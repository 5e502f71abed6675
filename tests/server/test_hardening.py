"""The gateway's defences on a live uvicorn: 500s inside the middleware, JSON-only POSTs, the loopback Host check,
log lines that cannot be forged, /health under an API key, the body deadline, the connection cap, and CORS."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from minigpt_core.checkpoint import load_checkpoint
from minigpt_core.engine import Engine
from server.__main__ import settings_from_args
from server.app import create_app
from server.settings import Settings
from tests.server.conftest import MODEL_NAME, LiveServer, live_server, serve_app
from tests.server.test_errors import envelope

MSGS = [{"role": "user", "content": "hi"}]
ORIGIN = "http://app.example:3000"


class LogWatch(logging.Handler):
    """Collects records and sets an event when a message containing `until` is logged (no sleeping)."""

    def __init__(self, until: str) -> None:
        super().__init__(logging.DEBUG)
        self.until = until
        self.records: list[logging.LogRecord] = []
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if self.until in record.getMessage():
            self.seen.set()


@contextlib.contextmanager
def watch_logs(until: str) -> Iterator[LogWatch]:
    handler = LogWatch(until)
    root = logging.getLogger()
    before = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(before)


def serve(app: FastAPI, **options: Any) -> contextlib.AbstractContextManager[str]:
    """`app` behind a real uvicorn whose loggers propagate to the root (log_config=None), for `watch_logs`."""
    return serve_app(app, log_config=None, **options)


@pytest.fixture(scope="module")
def engine(tiny_checkpoint: Path) -> Iterator[Engine]:
    model, _ = load_checkpoint(tiny_checkpoint, "cpu")
    eng = Engine(model, max_num_seqs=2, max_model_len=512)
    eng.start()
    yield eng
    eng.shutdown()


def test_unhandled_error_is_a_500_with_request_id_counted_and_logged_once(
    tiny_checkpoint: Path, engine: Engine
) -> None:
    app = create_app(Settings(model=tiny_checkpoint, served_model_name=MODEL_NAME), engine=engine)

    async def boom() -> None:
        raise RuntimeError("a bug in a route")

    app.add_api_route("/boom", boom)
    with serve(app) as url, httpx.Client(base_url=url) as c, watch_logs("/boom -> 500") as logs:
        r = c.get("/boom", headers={"X-Request-Id": "req-500"})
        assert logs.seen.wait(10), [rec.getMessage() for rec in logs.records]
        metrics = c.get("/metrics").text
    err = envelope(r, 500)
    assert err["type"] == "server_error" and "a bug" not in err["message"]
    assert r.headers["x-request-id"] == "req-500"
    assert 'minigpt_requests_total{endpoint="other",status="500"} 1' in metrics
    assert 'status="499"' not in metrics
    tracebacks = [rec for rec in logs.records if rec.exc_info is not None]
    assert len(tracebacks) == 1 and "req-500" in tracebacks[0].getMessage(), [t.getMessage() for t in tracebacks]


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_post_bodies_must_be_json(live: LiveServer, content_type: str | None) -> None:
    # What a page on any origin may send cross-origin without a preflight: it must not run a tool.
    raw = b'{"name": "calculator", "arguments": {"expression": "6*7"}}'
    headers = {"content-type": content_type} if content_type else {}
    with live.client() as c:
        err = envelope(c.post("/web/tools/call", content=raw, headers=headers), 415, "unsupported_media_type")
        assert "application/json" in err["message"]
        body = b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}'
        envelope(c.post("/v1/chat/completions", content=body, headers=headers), 415)


def test_json_content_types_are_accepted(live: LiveServer) -> None:
    raw = b'{"name": "calculator", "arguments": {"expression": "6*7"}}'
    with live.client() as c:
        for content_type in ("application/json", "application/json; charset=utf-8", "Application/JSON"):
            r = c.post("/web/tools/call", content=raw, headers={"content-type": content_type})
            assert r.status_code == 200 and r.json()["content"] == "42", r.text


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.evil.example", "10.0.0.1:8000"])
def test_foreign_host_is_refused_on_loopback(live: LiveServer, host: str) -> None:
    with live.client() as c:
        envelope(c.get("/v1/models", headers={"Host": host}), 400, "invalid_host")
        envelope(c.get("/health", headers={"Host": host}), 400, "invalid_host")


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:1234", "127.0.0.1", "127.0.0.2:80", "[::1]:8000", "[::1]"])
def test_loopback_hosts_are_served(live: LiveServer, host: str) -> None:
    with live.client() as c:
        assert c.get("/v1/models", headers={"Host": host}).status_code == 200


def test_host_is_not_checked_when_bound_beyond_loopback(tiny_checkpoint: Path, engine: Engine) -> None:
    app = create_app(Settings(model=tiny_checkpoint, served_model_name=MODEL_NAME, host="0.0.0.0"), engine=engine)
    with serve(app) as url, httpx.Client(base_url=url) as c:
        assert c.get("/v1/models", headers={"Host": "minigpt.lan:8000"}).status_code == 200


def test_control_characters_cannot_forge_log_lines(live: LiveServer) -> None:
    forged = "/nothing%0A0123 GET /v1/models -> 200 in 0.001s%0D%1B[31m"
    with watch_logs("-> 404") as logs, live.client() as c:
        envelope(c.get(forged, headers={"X-Request-Id": "req\tlog"}), 404)
        assert logs.seen.wait(10)
    lines = [rec.getMessage() for rec in logs.records if rec.name.startswith("server.")]
    assert lines and all("\n" not in line and "\r" not in line and "\x1b" not in line for line in lines), lines
    assert any("\\n0123 GET" in line for line in lines), lines
    assert all("\t" not in line for line in lines), lines


def test_health_keeps_file_paths_private_under_api_key(tmp_path: Path) -> None:
    missing = tmp_path / "secret-model-dir"
    app = create_app(Settings(model=missing, api_key="k3y"))
    with watch_logs("model failed to load") as logs, serve(app) as url, httpx.Client(base_url=url) as c:
        assert logs.seen.wait(30)
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "error"
        assert "secret-model-dir" not in r.text and str(tmp_path) not in r.text
        authed = c.post(
            "/v1/chat/completions", json={"model": "x", "messages": MSGS}, headers={"Authorization": "Bearer k3y"}
        )
        assert authed.status_code == 503 and "secret-model-dir" not in authed.text
    assert any("secret-model-dir" in rec.getMessage() for rec in logs.records)  # the operator still learns where


def test_a_body_that_trickles_in_times_out(tiny_checkpoint: Path) -> None:
    with live_server(tiny_checkpoint, body_timeout_s=0.3) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            head = (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            )
            sock.sendall(head.encode() + b'{"model": "tiny", ')
            started = time.monotonic()
            reply = b""
            while chunk := sock.recv(4096):  # the server answers, then closes the connection
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"request_timeout" in reply and time.monotonic() - started < 5


def test_connections_beyond_the_cap_get_503(tiny_checkpoint: Path, engine: Engine) -> None:
    settings = Settings(model=tiny_checkpoint, served_model_name=MODEL_NAME, max_connections=3)
    options = settings.uvicorn_options()
    assert options["limit_concurrency"] == 3 and options["timeout_keep_alive"] == settings.keep_alive_timeout_s
    kept = {k: v for k, v in options.items() if k not in ("host", "port", "log_level")}
    with serve(create_app(settings, engine=engine), **kept) as url, contextlib.ExitStack() as stack:
        idle = [stack.enter_context(httpx.Client(base_url=url)) for _ in range(2)]
        for client in idle:  # two kept-alive connections, each known to the server
            assert client.get("/health").status_code == 200
        with httpx.Client(base_url=url) as third:
            assert third.get("/health").status_code == 503


def test_cors_preflight_and_responses(tiny_checkpoint: Path) -> None:
    with (
        live_server(tiny_checkpoint, api_key="k3y", allowed_origins=(ORIGIN,)) as srv,
        httpx.Client(base_url=srv.url) as c,
    ):
        asks = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
        pre = c.options("/v1/chat/completions", headers={"Origin": ORIGIN, **asks})
        assert pre.status_code == 204, pre.text  # before the API key: preflights never carry it
        assert pre.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in pre.headers["access-control-allow-methods"]
        assert pre.headers["access-control-allow-headers"] == "authorization,content-type"
        assert "Origin" in pre.headers["vary"]
        other = c.options("/v1/chat/completions", headers={"Origin": "http://evil.example", **asks})
        envelope(other, 403, "origin_not_allowed")
        assert "access-control-allow-origin" not in other.headers
        auth = {"Authorization": "Bearer k3y", "Origin": ORIGIN}
        r = c.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": MSGS, "max_tokens": 1}, headers=auth)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        denied = c.get("/v1/models", headers={"Origin": ORIGIN})  # errors are readable by the allowed page too
        envelope(denied, 401)
        assert denied.headers["access-control-allow-origin"] == ORIGIN
        foreign = c.get("/v1/models", headers={"Origin": "http://evil.example", "Authorization": "Bearer k3y"})
        assert foreign.status_code == 200 and "access-control-allow-origin" not in foreign.headers


def test_no_cross_origin_grants_by_default(live: LiveServer) -> None:
    with live.client() as c:
        asks = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
        pre = c.options("/web/tools/call", headers={"Origin": ORIGIN, **asks})
        envelope(pre, 403, "origin_not_allowed")
        assert not any(h.startswith("access-control-") for h in pre.headers)
        r = c.get("/v1/models", headers={"Origin": ORIGIN})
        assert r.status_code == 200 and not any(h.startswith("access-control-") for h in r.headers)


def test_allowed_origins_setting() -> None:
    s = settings_from_args(["--allowed-origins", "http://a.example, HTTPS://B.example:8443/"])
    assert s.allowed_origins == ("http://a.example", "https://b.example:8443")
    assert Settings().allowed_origins == ()
    assert Settings(allowed_origins="*").allowed_origins == ("*",)
    for bad in ("a.example", "ftp://a.example", "http://a.example/path"):
        with pytest.raises(ValidationError):
            Settings(allowed_origins=bad)


def test_wildcard_origin(tiny_checkpoint: Path) -> None:
    with live_server(tiny_checkpoint, allowed_origins=("*",)) as srv, srv.client() as c:
        r = c.get("/v1/models", headers={"Origin": "http://anything.example"})
        assert r.headers["access-control-allow-origin"] == "*"
