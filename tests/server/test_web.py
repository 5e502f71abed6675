"""The web chat page's server side: `/`, the static files, and the `/web/tools` endpoints on a live server.

What the page does in a browser is tested in `test_web_browser.py` (marked `browser`).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from server.web import CONTENT_TYPES, is_page_path, static_names
from tests.server.conftest import LiveServer, live_server

STATIC = Path(__file__).resolve().parents[2] / "server" / "static"
EXTERNAL = re.compile(r"(?:https?:)?//[A-Za-z0-9]", re.IGNORECASE)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "action") and value is not None:
                self.urls.append(value)
            if name == "id" and value:
                self.ids.add(value)


def _envelope(resp: httpx.Response, status: int) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    return dict(err)


def test_index_is_html_without_external_urls(live: LiveServer) -> None:
    with live.client() as c:
        resp = c.get("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in resp.headers["content-security-policy"]
    parser = _Links()
    parser.feed(resp.text)
    assert "/static/app.js" in parser.urls and "/static/style.css" in parser.urls
    for url in parser.urls:
        assert not EXTERNAL.match(url), f"external URL in the page: {url}"
        assert not url.lower().startswith(("http:", "https:")), url
    # the controls the page script and the browser test rely on
    for control in ("prompt", "send", "stop", "regenerate", "clear", "think", "temperature", "top-p", "max-tokens"):
        assert control in parser.ids, control


@pytest.mark.parametrize("name", ["app.js", "style.css", "index.html"])
def test_static_files_are_served_with_their_content_type(live: LiveServer, name: str) -> None:
    with live.client() as c:
        resp = c.get(f"/static/{name}")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == CONTENT_TYPES[name[name.rfind(".") :]]
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.content == (STATIC / name).read_bytes()


def test_static_sources_load_nothing_from_elsewhere() -> None:
    assert {"index.html", "app.js", "style.css"} <= set(static_names())
    for name in static_names():
        text = (STATIC / name).read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text, name
        assert "@import" not in text and "eval(" not in text, name


@pytest.mark.parametrize("path", ["/static/missing.js", "/static/..%2Fweb.py", "/static/web.py", "/static/.hidden"])
def test_unknown_static_paths_are_404s(live: LiveServer, path: str) -> None:
    with live.client() as c:
        resp = c.get(path)
    assert resp.status_code == 404
    assert "def " not in resp.text  # never the source of a module


def test_is_page_path() -> None:
    assert is_page_path("/") and is_page_path("/static/app.js")
    assert not is_page_path("/v1/chat/completions") and not is_page_path("/web/tools")
    assert not is_page_path("/static/../app.py") and not is_page_path("/static/")


def test_tools_list_is_openai_tool_entries(live: LiveServer) -> None:
    with live.client() as c:
        resp = c.get("/web/tools")
    assert resp.status_code == 200
    data = resp.json()["data"]
    names = [t["function"]["name"] for t in data]
    assert "calculator" in names and "unit_convert" in names
    for entry in data:
        assert entry["type"] == "function"
        assert entry["function"]["parameters"]["type"] == "object"


@pytest.mark.parametrize("arguments", ['{"expression": "2 + 3 * 4"}', {"expression": "2 + 3 * 4"}])
def test_tool_call_runs_the_tool(live: LiveServer, arguments: object) -> None:
    with live.client() as c:
        resp = c.post("/web/tools/call", json={"name": "calculator", "arguments": arguments})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["name"] == "calculator"
    assert "14" in body["content"]


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"name": "no_such_tool", "arguments": "{}"}, "name"),
        ({"name": "calculator", "arguments": "{not json"}, "arguments"),
        ({"name": "calculator", "arguments": '{"expression": "__import__(\'os\')"}'}, "arguments"),
        ({"name": "calculator", "arguments": '{"wrong": 1}'}, "arguments"),
        ({"name": "calculator", "arguments": "[1, 2]"}, "arguments"),
        ({"name": "", "arguments": "{}"}, "name"),
        ({"arguments": "{}"}, "name"),
        ({"name": "calculator", "arguments": 5}, "arguments"),
        ({"name": "calculator", "extra": 1}, "extra"),
    ],
)
def test_tool_call_rejects_bad_input_with_the_envelope(live: LiveServer, payload: object, param: str) -> None:
    with live.client() as c:
        resp = c.post("/web/tools/call", json=payload)
    err = _envelope(resp, 400)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param


def test_tool_call_rejects_a_body_that_is_not_json(live: LiveServer) -> None:
    with live.client() as c:
        resp = c.post("/web/tools/call", content=b"{oops", headers={"content-type": "application/json"})
    _envelope(resp, 400)


def test_tool_endpoints_need_the_api_key_when_one_is_set(tiny_checkpoint: Path) -> None:
    with live_server(tiny_checkpoint, api_key="sekrit") as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as anon:
            assert anon.get("/web/tools").status_code == 401
            resp = anon.post("/web/tools/call", json={"name": "calculator", "arguments": '{"expression": "1+1"}'})
            assert _envelope(resp, 401)["code"] == "invalid_api_key"
        with srv.client() as c:
            assert c.get("/web/tools").status_code == 200


def test_page_loads_without_the_api_key(tiny_checkpoint: Path) -> None:
    with live_server(tiny_checkpoint, api_key="sekrit") as srv, httpx.Client(base_url=srv.url, timeout=30) as anon:
        for path in ("/", "/static/app.js", "/static/style.css"):
            assert anon.get(path).status_code == 200, path
        assert anon.get("/static/missing.js").status_code == 404
