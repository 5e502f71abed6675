"""`/docs`: the interactive API reference (Swagger UI), served from this process so that it works offline.

FastAPI's own `/docs` page loads Swagger UI's script and stylesheet from a CDN (and its favicon from
fastapi.tiangolo.com): on a machine without internet access it stays blank. Here the page references only
`/docs/<file>` paths, and those files come from the `fastapi-offline` distribution, which ships Swagger UI's
built assets (we read its files; none of its code runs). Swagger UI's online spec validator is switched off.

This module is not the OpenAPI document itself (`server.openapi`) nor the chat page (`server.web`).
"""

from __future__ import annotations

import functools
from importlib import resources

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse, Response

from server.errors import error_body

router = APIRouter(include_in_schema=False)

DOCS_PATH = "/docs"
ASSETS_PACKAGE = "fastapi_offline"  # a distribution of static files; located, never imported
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}


@functools.lru_cache(maxsize=len(ASSETS))
def asset_bytes(name: str) -> bytes:
    """One of the bundled Swagger UI files (cached: they never change while the server runs)."""
    return resources.files(ASSETS_PACKAGE).joinpath("static").joinpath(name).read_bytes()


@router.get(DOCS_PATH)
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="MiniGPT API",
        swagger_js_url=f"{DOCS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_PATH}/favicon.png",
        oauth2_redirect_url=f"{DOCS_PATH}/oauth2-redirect",
        swagger_ui_parameters={"validatorUrl": None},  # the default badge calls validator.swagger.io
    )


@router.get(f"{DOCS_PATH}/oauth2-redirect")
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get(DOCS_PATH + "/{name}")
async def swagger_asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        body = error_body(f"no file named {name[:80]!r} under {DOCS_PATH}", "invalid_request_error", None, "not_found")
        return JSONResponse(body, status_code=404)
    return Response(asset_bytes(name), media_type=media_type, headers={"Cache-Control": "max-age=86400"})
