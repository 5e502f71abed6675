"""The web chat page: `/` and its static files, plus the two small endpoints the page needs for tools.

`GET /` serves `server/static/index.html`; `GET /static/{name}` serves the other files shipped in that folder
(only names that exist there, with a fixed content type per suffix, so no path ever leaves the folder). Both
carry a Content-Security-Policy that allows this origin only: the page loads nothing from elsewhere.

`GET /web/tools` lists the built-in tools as OpenAI `tools` entries; `POST /web/tools/call` runs one of them
(in a worker thread) so the page can answer a model's `tool_calls` and continue the conversation. These are
MiniGPT extras, not OpenAI endpoints, hence the `/web` prefix; they sit behind the API key like every other
route. A `ToolError` is the caller's fault and becomes a 400 in OpenAI's error envelope.

This module is not the chat API (see `server.routes`) and holds no conversation state: the page keeps that.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from importlib import resources
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from pydantic import ConfigDict, Field

from minigpt_core.errors import InvalidRequest
from server.errors import error_body
from server.openapi import BODY_ERRORS, errors
from server.protocol import RequestBody
from tools.base import ToolError, UnknownToolError
from tools.registry import ToolRegistry, default_registry

logger = logging.getLogger(__name__)

router = APIRouter()

STATIC_PACKAGE = "server"
STATIC_DIR = "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_TOOL_RESULT_CHARS = 20_000


def is_page_path(path: str) -> bool:
    """True for the page and its static files: paths a browser fetches before it can send an API key."""
    return path == "/" or (path.startswith("/static/") and _NAME_RE.fullmatch(path[len("/static/") :]) is not None)


@functools.lru_cache(maxsize=32)
def _read_static(name: str) -> bytes | None:
    """The bytes of a shipped static file, or None when there is no such file (cached: the files never change)."""
    if _NAME_RE.fullmatch(name) is None:
        return None
    node = resources.files(STATIC_PACKAGE).joinpath(STATIC_DIR).joinpath(name)
    if not node.is_file():
        return None
    return node.read_bytes()


def static_names() -> list[str]:
    """The file names shipped in `server/static` (what `/static/{name}` can serve)."""
    folder = resources.files(STATIC_PACKAGE).joinpath(STATIC_DIR)
    return sorted(p.name for p in folder.iterdir() if p.is_file() and _NAME_RE.fullmatch(p.name))


def _not_found(name: str) -> Response:
    body = error_body(f"no static file named {name[:80]!r}", "invalid_request_error", None, "not_found")
    return Response(json.dumps(body).encode(), status_code=404, media_type="application/json")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> Response:
    data = _read_static("index.html")
    if data is None:
        return _not_found("index.html")
    return Response(data, media_type=CONTENT_TYPES[".html"], headers=PAGE_HEADERS)


@router.get("/static/{name}", include_in_schema=False)
async def static_file(name: str) -> Response:
    suffix = name[name.rfind(".") :] if "." in name else ""
    media_type = CONTENT_TYPES.get(suffix)
    data = _read_static(name) if media_type is not None else None
    if data is None or media_type is None:
        return _not_found(name)
    return Response(data, media_type=media_type, headers=PAGE_HEADERS)


# --- tools for the page ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def web_registry() -> ToolRegistry:
    """The tools the page may offer and run: the built-ins (plug-ins never)."""
    return default_registry()


class ToolCallRequest(RequestBody):
    """POST /web/tools/call body: a tool name and its arguments (a JSON object or its JSON text).

    `RequestBody` checks the parsed body for lone surrogates and deep nesting first (400 with the field's path).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    arguments: dict[str, Any] | str = "{}"


@router.get("/web/tools", responses=errors(400, 401))
async def list_tools() -> dict[str, Any]:
    """The built-in tools as OpenAI `tools` entries, ready to send back in a chat request."""
    return {"object": "list", "data": web_registry().schemas()}


@router.post("/web/tools/call", responses=errors(*BODY_ERRORS))
async def call_tool(body: ToolCallRequest) -> dict[str, Any]:
    """Run one built-in tool; its text result is what the page sends back as a `role: "tool"` message."""
    registry = web_registry()
    try:
        registry.get(body.name)
    except UnknownToolError as exc:
        raise InvalidRequest(str(exc), "name") from None
    try:
        result = await asyncio.to_thread(registry.call, body.name, body.arguments)
    except ToolError as exc:
        raise InvalidRequest(f"{body.name}: {exc}", "arguments") from None
    if len(result) > MAX_TOOL_RESULT_CHARS:
        result = result[:MAX_TOOL_RESULT_CHARS] + " …[truncated]"
    return {"object": "tool.result", "name": body.name, "content": result}
