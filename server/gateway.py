"""The gateway middleware: everything a request meets before a route, and the last word on how it ended.

Plain ASGI (it must not buffer streams). In order: a request id (echoed as `X-Request-Id` on every response),
the Host check that defeats DNS rebinding on a loopback-bound server, CORS (preflights answered here, before
the API key, since browsers never send credentials on them), the API key in constant time (/health, /ready,
/version and the web page stay open), `Content-Type: application/json` on every POST (415 otherwise: a browser
may send `text/plain` cross-origin without a preflight), the body-size limit (413) and the body-read deadline
(408). An exception that escapes the routes becomes a 500 in OpenAI's envelope here, with its request id, counted
and logged once. Then one log line and one counter per request.

This module does not map library errors to HTTP (`server.errors` does) and holds no route logic.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import json
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import (
    BodyTimeout,
    BodyTooLarge,
    MisdirectedHost,
    OriginNotAllowed,
    Unauthorized,
    UnsupportedMediaType,
    error_body,
    error_response_for,
)
from server.metrics import Metrics
from server.settings import Settings
from server.web import is_page_path

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/ready", "/version"})  # load balancers and probes send no API key
KNOWN_ENDPOINTS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/models",
        "/health",
        "/ready",
        "/version",
        "/metrics",
        "/tokenize",
        "/detokenize",
        "/web/tools",
        "/web/tools/call",
    }
)
CORS_METHODS = "GET, POST"
CORS_EXPOSED = "X-Request-Id, Retry-After"
CORS_MAX_AGE_S = 600
_REQUEST_ID_RE = re.compile(r"[!-~]{1,64}")  # printable ASCII, no spaces: safe to log and to echo
_HEADER_LIST_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*")


def printable(text: str, limit: int = 300) -> str:
    """`text` with control and other non-printable characters escaped, so that it cannot forge a log line."""
    out = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text[:limit])
    return out + ("…" if len(text) > limit else "")


@functools.lru_cache(maxsize=256)  # asked on every request (the socket's address, the Host header): parse once
def is_loopback_address(host: str) -> bool:
    """True for `localhost` and loopback IPs (127.0.0.0/8, ::1), the forms a bind address takes."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=256)
def is_loopback_host_header(value: str) -> bool:
    """True when a Host header names this machine: localhost (and *.localhost), 127.x.y.z or [::1], any port."""
    host = value.strip().lower()
    if host.startswith("["):
        inner, sep, rest = host[1:].partition("]")
        if not sep or (rest and not rest[1:].isdigit()) or (rest and rest[0] != ":"):
            return False
        host = inner
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
        if not port.isdigit():
            return False
    host = host.rstrip(".")
    return host == "localhost" or host.endswith(".localhost") or is_loopback_address(host)


def json_media_type(content_type: bytes) -> bool:
    """`application/json` or `application/<x>+json`, with any parameters (`; charset=utf-8`)."""
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


class GatewayMiddleware:
    """Request id, Host check, CORS, API key, JSON-only POSTs, body limits, 500s, the log line and the counter."""

    def __init__(self, app: ASGIApp, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self._key = settings.api_key.encode() if settings.api_key else None
        self._check_host = is_loopback_address(settings.host)
        self._origins = frozenset(settings.allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        given_id = headers.get("x-request-id", b"").decode("latin-1")
        rid = given_id if _REQUEST_ID_RE.fullmatch(given_id) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        path: str = scope.get("path", "")
        method = str(scope.get("method", ""))
        cors = self._cors_headers(headers.get("origin"))
        started = time.perf_counter()
        status_box = [0]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
                extra = [(b"x-request-id", rid.encode("latin-1")), *cors]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self._guarded(scope, receive, send_wrapper, headers)
        except Exception as exc:
            # Routes map every known error to HTTP; what reaches here is a bug. Handled here (not by Starlette's
            # outer ServerErrorMiddleware) so that the 500 keeps its request id, is counted and is logged once.
            logger.error("%s %s %s: unhandled error", rid, method, printable(path), exc_info=exc)
            if status_box[0] == 0:
                await _send_error(send_wrapper, exc, internal=True)
            status_box[0] = 500
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.count_request(_endpoint_label(path), status_box[0] or 499)
            logger.info("%s %s %s -> %s in %.3fs", rid, method, printable(path), status_box[0] or "disconnect", elapsed)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, headers: dict[str, bytes]) -> None:
        """The checks in order, then the app; a failed check answers with its error and ends the request."""
        path: str = scope.get("path", "")
        method = scope.get("method")
        if self._foreign_host(scope, headers.get("host")):
            reason = "this server listens on a loopback address and only answers Host names of this machine"
            await _send_error(send, MisdirectedHost(f"invalid Host header: {reason}", None))
            return
        if method == "OPTIONS" and "origin" in headers and "access-control-request-method" in headers:
            await self._preflight(send, headers)
            return
        is_open = path in OPEN_PATHS or is_page_path(path)  # the web page itself asks for the key
        if self._key is not None and not is_open and not self._authorized(headers):
            await _send_error(send, Unauthorized("Incorrect or missing API key.", None))
            return
        if method == "POST" and not json_media_type(headers.get("content-type", b"")):
            given = printable(headers.get("content-type", b"").decode("latin-1"), 80) or "none"
            message = f"request bodies must be JSON sent as Content-Type: application/json (got {given})"
            await _send_error(send, UnsupportedMediaType(message, None))
            return
        try:
            body = await asyncio.wait_for(self._read_body(headers, receive), self.settings.body_timeout_s)
        except TimeoutError:
            limit = self.settings.body_timeout_s
            await _send_error(send, BodyTimeout(f"the request body did not arrive within {limit:g} s", None))
            return
        if body is None:
            message = f"request body exceeds {self.settings.max_body_bytes} bytes"
            await _send_error(send, BodyTooLarge(message))
            return
        await self.app(scope, _replay(body, receive), send)

    def _foreign_host(self, scope: Scope, host: bytes | None) -> bool:
        """DNS rebinding: a page from elsewhere whose name now resolves to 127.0.0.1 still sends its own Host.

        Checked only on a real loopback socket: in-process clients (Starlette's TestClient) have nothing to rebind.
        """
        if not self._check_host or host is None or not _server_is_loopback(scope):
            return False
        return not is_loopback_host_header(host.decode("latin-1"))

    def _cors_headers(self, origin: bytes | None) -> list[tuple[bytes, bytes]]:
        """The CORS headers every response to this request carries (none when the origin is not allowed)."""
        if not self._origins:
            return []
        vary = [(b"vary", b"Origin")]
        if origin is None or not self._origin_allowed(origin):
            return vary if "*" not in self._origins else []
        allow = b"*" if "*" in self._origins else origin
        return [(b"access-control-allow-origin", allow), (b"access-control-expose-headers", CORS_EXPOSED.encode())] + (
            vary if allow != b"*" else []
        )

    def _origin_allowed(self, origin: bytes) -> bool:
        return "*" in self._origins or origin.decode("latin-1") in self._origins

    async def _preflight(self, send: Send, headers: dict[str, bytes]) -> None:
        """Answer a CORS preflight: 204 with the grants for an allowed origin, 403 for any other."""
        if not self._origin_allowed(headers["origin"]):
            hint = "see --allowed-origins" if self._origins else "none are allowed; see --allowed-origins"
            await _send_error(send, OriginNotAllowed(f"cross-origin requests from this origin are refused ({hint})"))
            return
        requested = headers.get("access-control-request-headers", b"").decode("latin-1").strip()
        grant = [
            (b"access-control-allow-methods", CORS_METHODS.encode()),
            (b"access-control-max-age", str(CORS_MAX_AGE_S).encode()),
        ]
        if requested and _HEADER_LIST_RE.fullmatch(requested):
            grant.append((b"access-control-allow-headers", requested.encode("latin-1")))
        await send({"type": "http.response.start", "status": 204, "headers": grant})
        await send({"type": "http.response.body", "body": b""})

    def _authorized(self, headers: dict[str, bytes]) -> bool:
        auth = headers.get("authorization", b"")
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() != b"bearer":
            token = headers.get("x-api-key", b"")
        assert self._key is not None
        return hmac.compare_digest(token.strip(), self._key)

    async def _read_body(self, headers: dict[str, bytes], receive: Receive) -> bytes | None:
        """The whole body, or None when it is over the limit (checked on Content-Length and while reading)."""
        limit = self.settings.max_body_bytes
        try:
            declared = int(headers.get("content-length", b"0") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _endpoint_label(path: str) -> str:
    """A bounded label for metrics: a known route, `/v1/models/{id}`, or `other`."""
    if path in KNOWN_ENDPOINTS:
        return path
    return "/v1/models/{id}" if path.startswith("/v1/models/") else "other"


def _server_is_loopback(scope: Scope) -> bool:
    server = scope.get("server")  # (host, port) of the socket the request came in on; None without a socket
    if not server or not isinstance(server[0], str):
        return False
    return is_loopback_address(server[0])


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(send: Send, exc: BaseException, internal: bool = False) -> None:
    """One error response in OpenAI's envelope. Errors before the body was read close the connection."""
    status: int
    headers: dict[str, str]
    if internal:  # already logged by the caller; error_response_for would log it again
        status, body, headers = 500, error_body("internal server error", "server_error"), {}
    else:
        status, body, headers = error_response_for(exc)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status in (408, 413):
        headers["Connection"] = "close"  # the rest of the body is still on its way (or never comes)
    raw = json.dumps(body).encode()
    header_list: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(raw)).encode()),
    ]
    header_list += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": header_list})
    await send({"type": "http.response.body", "body": raw})
