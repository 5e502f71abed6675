"""The one place that maps exceptions to HTTP: OpenAI's envelope `{"error": {message, type, param, code}}`.

Every handler the app installs lives here, and `error_response_for` is also what the stream uses for its final
`data: {"error": ...}` event, so a failure reads the same before and after the first byte. Bad input is a 4xx,
never a 500 (the OpenAI SDK retries 5xx). This module does not decide *whether* something is an error.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from minigpt_core.errors import (
    ContextLengthExceeded,
    EngineClosed,
    EngineOverloaded,
    InvalidRequest,
    MiniGPTError,
)

logger = logging.getLogger(__name__)


class ServerError(MiniGPTError):
    """Base of the errors the HTTP layer raises itself."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelNotFound(ServerError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class Unauthorized(ServerError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"


class BodyTooLarge(ServerError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class NotReady(ServerError):
    status, type, code = 503, "server_error", "model_loading"


class Draining(ServerError):
    """After SIGTERM: requests in flight finish, new ones get this (a load balancer sends them elsewhere)."""

    status, type, code = 503, "server_error", "server_draining"


# The gateway's own refusals (server.gateway), before any route runs.
class MisdirectedHost(ServerError):
    status, type, code = 400, "invalid_request_error", "invalid_host"


class UnsupportedMediaType(ServerError):
    status, type, code = 415, "invalid_request_error", "unsupported_media_type"


class BodyTimeout(ServerError):
    status, type, code = 408, "invalid_request_error", "request_timeout"


class OriginNotAllowed(ServerError):
    status, type, code = 403, "invalid_request_error", "origin_not_allowed"


class BadRequest(ServerError):
    """Bad input found by a pydantic validator of a request body (`server.protocol.check_json_text`).

    Not a ValueError on purpose: pydantic folds those into a ValidationError at the model's root and the `param`
    would be lost; this one passes through pydantic and FastAPI to the handler with its param intact.
    """

    status, type, code = 400, "invalid_request_error", "invalid_value"


def _printable(text: str) -> str:
    """`text` with lone surrogates written as `\\udxxx` escapes: the envelope must always encode as UTF-8."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    safe_param = None if param is None else _printable(param)
    return {"error": {"message": _printable(message), "type": type_, "param": safe_param, "code": code}}


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    # pydantic puts the union branch name into the location (e.g. "str", "list[...]"): drop those.
    parts = [p for p in parts if "[" not in p and p not in ("str", "int", "float", "bool")]
    return ".".join(parts) or None


def _validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('msg', '')}", None
    param = _loc_to_param(tuple(first.get("loc", ())))
    msg = str(first.get("msg", "invalid value"))
    extra = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    return (f"{param}: {msg}{extra}" if param else f"{msg}{extra}"), param


def error_response_for(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, envelope, headers) for any exception; unknown ones are a logged 500."""
    if isinstance(exc, ServerError):
        return exc.status, error_body(str(exc), exc.type, exc.param, exc.code), {}
    if isinstance(exc, ContextLengthExceeded):
        return 400, error_body(str(exc), "invalid_request_error", exc.param, "context_length_exceeded"), {}
    if isinstance(exc, InvalidRequest):
        return 400, error_body(str(exc), "invalid_request_error", exc.param, "invalid_value"), {}
    if isinstance(exc, EngineOverloaded):
        return 429, error_body(str(exc) or "server overloaded", "rate_limit_error", None, "overloaded"), {}
    if isinstance(exc, EngineClosed):
        return 503, error_body(str(exc) or "engine is shut down", "server_error", None, "engine_closed"), {}
    if isinstance(exc, RequestValidationError | ValidationError):
        message, param = _validation_message([dict(e) for e in exc.errors()])
        return 400, error_body(message, "invalid_request_error", param, "invalid_value"), {}
    if isinstance(exc, json.JSONDecodeError):
        return 400, error_body(f"request body is not valid JSON: {exc}", "invalid_request_error"), {}
    if isinstance(exc, StarletteHTTPException):
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return exc.status_code, error_body(str(exc.detail), type_), dict(exc.headers or {})
    logger.exception("internal error", exc_info=exc)
    return 500, error_body("internal server error", "server_error"), {}


def json_error(exc: BaseException, retry_after_s: int = 1) -> JSONResponse:
    status, body, headers = error_response_for(exc)
    if status == 429:
        headers["Retry-After"] = str(retry_after_s)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI, retry_after_s: int = 1) -> None:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return json_error(exc, retry_after_s)

    for exc_type in (
        RequestValidationError,
        ValidationError,
        StarletteHTTPException,
        MiniGPTError,
        json.JSONDecodeError,
        Exception,
    ):
        app.add_exception_handler(exc_type, handle)
