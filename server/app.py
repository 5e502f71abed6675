"""The app factory: `create_app(settings, engine=None)`, its lifespan, and the gateway middleware.

The lifespan loads the checkpoint in a worker thread (so /health can answer 503 while it loads), builds and
starts the engine, warms up the grammar engine (llguidance initialises lazily) and shuts it down on exit.
A caller that passes its own `engine` (tests, embedding) keeps ownership of it. The gateway middleware is
plain ASGI (it must not buffer streams): request id, API-key check in constant time (/health stays open), the
body-size limit (413) and per-request metrics and logging.
Routes live in `server.routes`; error mapping in `server.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from minigpt_core.errors import MiniGPTError
from minigpt_core.tokenizer import Tokenizer
from server.errors import (
    BodyTooLarge,
    ModelNotFound,
    NotReady,
    Unauthorized,
    error_response_for,
    install_error_handlers,
)
from server.metrics import Metrics
from server.settings import Settings
from server.web import is_page_path

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health"})
KNOWN_ENDPOINTS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/tokenize", "/detokenize"}
)


@dataclass
class ServerState:
    """What routes need; `engine` and `tokenizer` are None until the model is loaded."""

    settings: Settings
    metrics: Metrics
    model_name: str
    engine: Any = None
    tokenizer: Tokenizer | None = None
    max_model_len: int = 0
    vocab_size: int = 0
    defaults: dict[str, float] = field(default_factory=dict)
    load_error: str | None = None
    # called on the event loop with the one-line reason when the model cannot be loaded (minigpt-serve exits)
    on_load_error: Callable[[str], None] | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.tokenizer is not None

    def require_ready(self) -> tuple[Any, Tokenizer]:
        if self.engine is None or self.tokenizer is None:
            raise NotReady(self.load_error or "the model is still loading; retry shortly")
        return self.engine, self.tokenizer

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise ModelNotFound(f"The model `{name}` does not exist. This server serves `{self.model_name}`.", "model")

    def attach(self, engine: Any, tokenizer: Tokenizer, model_dir: Path | None) -> None:
        self.engine, self.tokenizer = engine, tokenizer
        self.max_model_len = int(engine.max_model_len)
        self.vocab_size = int(engine.vocab_size)
        self.defaults = _generation_defaults(model_dir)


def _generation_defaults(model_dir: Path | None) -> dict[str, float]:
    """temperature / top_p from the checkpoint's generation_config.json (as vLLM does), else OpenAI's."""
    out = {"temperature": 1.0, "top_p": 1.0}
    path = model_dir / "generation_config.json" if model_dir is not None else None
    if path is None or not path.is_file():
        return out
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        logger.warning("%s: unreadable, using OpenAI sampling defaults", path)
        return out
    for key in out:
        value = data.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def build_engine(settings: Settings) -> tuple[Any, Tokenizer, Path]:
    """Load the checkpoint and build a started engine (blocking: run it in a worker thread)."""
    import torch

    from minigpt_core.checkpoint import load_checkpoint, resolve_device
    from minigpt_core.engine import Engine

    model_dir = settings.resolved_model_dir()
    device = resolve_device(settings.device)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    dtype = dtypes.get(settings.dtype) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model, tokenizer = load_checkpoint(model_dir, device, dtype)
    max_len = min(settings.max_model_len or model.config.max_seq_len, model.config.max_seq_len)
    engine = Engine(
        model,
        max_num_seqs=settings.max_num_seqs,
        max_model_len=max_len,
        max_queued=settings.max_queued,
        output_vocab=tokenizer.vocab_size,
        compile_decode=settings.compile_decode,
    )
    engine.start()
    warm_grammar(tokenizer, model.config.vocab_size)
    logger.info("serving %s from %s on %s (%s)", settings.model_name(), model_dir, device, dtype)
    return engine, tokenizer, model_dir


def warm_grammar(tokenizer: Tokenizer, vocab_size: int) -> None:
    """Build the grammar engine's tokenizer state and first mask now (blocking), not on the first tools request.

    A tokenizer llguidance cannot handle is logged, not fatal: only constrained requests will fail then.
    """
    from minigpt_core.grammar import warm_up

    try:
        warm_up(tokenizer, vocab_size)
    except MiniGPTError as exc:
        logger.warning("grammar engine unavailable, tools and response_format requests will fail: %s", exc)


async def _load(state: ServerState) -> None:
    try:
        engine, tokenizer, model_dir = await asyncio.to_thread(build_engine, state.settings)
    except Exception as exc:  # whatever failed (also torch out of memory), /health must not stay "loading"
        if not isinstance(exc, MiniGPTError | OSError):
            logger.error("unexpected error while loading the model", exc_info=exc)
        state.load_error = f"model failed to load: {exc}"
        logger.error("%s", state.load_error)
        if state.on_load_error is not None:
            state.on_load_error(f"model failed to load: {exc}")
        return
    state.attach(engine, tokenizer, model_dir)


def create_app(settings: Settings, engine: Any = None, tokenizer: Tokenizer | None = None) -> FastAPI:
    """The FastAPI app. With `engine` given, the caller owns it and the tokenizer comes from `settings.model`."""
    from server.apidocs import router as apidocs_router
    from server.routes import router
    from server.web import router as web_router

    state = ServerState(settings=settings, metrics=Metrics(settings.model_name()), model_name=settings.model_name())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader: asyncio.Task[None] | None = None
        if engine is not None:
            model_dir = settings.resolved_model_dir()
            tok = tokenizer if tokenizer is not None else Tokenizer.from_dir(model_dir)
            await asyncio.to_thread(warm_grammar, tok, int(engine.vocab_size))
            state.attach(engine, tok, model_dir)
        else:
            loader = asyncio.create_task(_load(state))
        try:
            yield
        finally:
            if loader is not None:
                loader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loader
                if state.engine is not None:
                    await asyncio.to_thread(state.engine.shutdown)

    app = FastAPI(title="MiniGPT", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = state
    install_error_handlers(app, settings.retry_after_s)
    app.include_router(router)
    app.include_router(web_router)
    app.include_router(apidocs_router)  # /docs without a CDN
    app.add_middleware(GatewayMiddleware, state=state)
    return app


class GatewayMiddleware:
    """Request id, API key, body-size limit, and the per-request log line and counter (plain ASGI)."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state
        key = state.settings.api_key
        self._key = key.encode() if key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        rid = headers.get("x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        path: str = scope.get("path", "")
        endpoint = (
            path if path in KNOWN_ENDPOINTS else ("/v1/models/{id}" if path.startswith("/v1/models/") else "other")
        )
        started = time.perf_counter()
        status_box = [0]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            is_open = path in OPEN_PATHS or is_page_path(path)  # the web page itself asks for the key
            if self._key is not None and not is_open and not self._authorized(headers):
                await _send_error(send_wrapper, Unauthorized("Incorrect or missing API key.", None))
                return
            if scope.get("method") == "POST" and b"json" not in headers.get("content-type", b""):
                scope = _as_json(scope)  # `curl -d` sends form encoding; every POST body here is JSON
            body, receive_next = await self._read_body(headers, receive)
            if body is None:
                await _send_error(
                    send_wrapper, BodyTooLarge(f"request body exceeds {self.state.settings.max_body_bytes} bytes")
                )
                return
            await self.app(scope, _replay(body, receive_next), send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            self.state.metrics.count_request(endpoint, status_box[0] or 499)
            logger.info(
                "%s %s %s -> %s in %.3fs", rid, scope.get("method"), path, status_box[0] or "disconnect", elapsed
            )

    def _authorized(self, headers: dict[str, bytes]) -> bool:
        auth = headers.get("authorization", b"")
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() != b"bearer":
            token = headers.get("x-api-key", b"")
        assert self._key is not None
        return hmac.compare_digest(token.strip(), self._key)

    async def _read_body(self, headers: dict[str, bytes], receive: Receive) -> tuple[bytes | None, Receive]:
        """The whole body, or None when it is over the limit (checked on Content-Length and while reading)."""
        limit = self.state.settings.max_body_bytes
        try:
            declared = int(headers.get("content-length", b"0") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            return None, receive
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None, receive
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), receive


def _as_json(scope: Scope) -> Scope:
    kept = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-type"]
    return {**scope, "headers": [*kept, (b"content-type", b"application/json")]}


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(send: Send, exc: BaseException) -> None:
    status, body, headers = error_response_for(exc)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    raw = json.dumps(body).encode()
    header_list = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    header_list += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": header_list})
    await send({"type": "http.response.body", "body": raw})
