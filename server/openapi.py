"""The OpenAPI document: the error responses each route really gives, and nothing FastAPI invents.

Routes declare their errors with `responses=errors(...)`; every one has OpenAI's envelope as its body
(`ErrorResponse`). `install_openapi` removes FastAPI's automatic 422 (validation errors are 400 here, see
`server.errors`) and its schemas, and puts error bodies under `application/json` where a route's own
response class is text (/metrics). The 400 that every route lists is also the gateway's answer to a foreign Host
header, the 401 the answer without the API key; 408, 413 and 415 come from the gateway for request bodies.
This module is not the wire models of requests (`server.protocol`) nor the error mapping (`server.errors`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

DESCRIPTIONS = {
    400: "Invalid request: a field out of range, a prompt over the context length, a Host this server refuses",
    401: "Missing or wrong API key (only when the server runs with --api-key)",
    404: "No such model (the server serves one, named in /v1/models)",
    408: "The request body did not arrive within the server's body timeout",
    413: "The request body is larger than the server accepts",
    415: "The request body is not sent as Content-Type: application/json",
    429: "The waiting queue is full; retry after the Retry-After header's seconds",
    503: "The model is still loading, failed to load, or the engine is shutting down",
}
BODY_ERRORS = (400, 401, 408, 413, 415)  # any POST, before its route runs


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = Field(description="the request field at fault, if one is")
    code: str | None = Field(description="a machine-readable reason, e.g. `context_length_exceeded`")


class ErrorResponse(BaseModel):
    """OpenAI's error envelope."""

    error: ErrorDetail


class HealthStatus(BaseModel):
    status: str = Field(description="ok | loading | error")
    model: str | None = None
    detail: str | None = None


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route decorator: each status with its description and the error envelope."""
    return {code: {"model": ErrorResponse, "description": DESCRIPTIONS[code]} for code in sorted(set(codes))}


def text_response(media_type: str, description: str) -> dict[str, Any]:
    """A 200 whose body is text of `media_type` (metrics, or the SSE stream beside a JSON answer)."""
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


STREAMING_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The completion as one JSON object, or with `stream: true` as server-sent events",
        "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {"schema": {}}},
    }
}
HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": HealthStatus, "description": "The model is loaded and serving"},
    503: {"model": HealthStatus, "description": "The model is loading (`status: loading`) or failed (`error`)"},
    400: {"model": ErrorResponse, "description": DESCRIPTIONS[400]},
}


def install_openapi(app: FastAPI) -> None:
    """Wrap `app.openapi` so that the document has no 422 responses and no validation-error schemas."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for item in schema.get("paths", {}).values():
                for operation in item.values():
                    if isinstance(operation, dict):
                        _fix_responses(operation.get("responses", {}))
            components = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _fix_responses(responses: dict[str, Any]) -> None:
    responses.pop("422", None)
    for status, response in responses.items():
        if not status.startswith(("4", "5")):
            continue
        schemas = [media.get("schema") for media in response.get("content", {}).values()]
        ref = next((s for s in schemas if s == {"$ref": "#/components/schemas/ErrorResponse"}), None)
        if ref is not None:
            response["content"] = {"application/json": {"schema": ref}}
