"""The app factory: `create_app(settings, engine=None)`, its lifespan, and the gateway middleware.

The lifespan loads the checkpoint in a worker thread (so /health can answer 503 while it loads), builds and
starts the engine, warms up the grammar engine (llguidance initialises lazily) and shuts it down on exit.
A caller that passes its own `engine` (tests, embedding) keeps ownership of it. Every request passes through
`server.gateway` first (request id, Host check, CORS, API key, body limits, 500s, logging and metrics).
Routes live in `server.routes`; error mapping in `server.errors`; the OpenAPI document in `server.openapi`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI

from minigpt_core.custom_template import load_chat_template
from minigpt_core.errors import MiniGPTError
from minigpt_core.tokenizer import Tokenizer
from server.errors import install_error_handlers
from server.gateway import GatewayMiddleware
from server.openapi import install_openapi
from server.settings import Settings
from server.state import ServerState, package_version

if TYPE_CHECKING:
    from minigpt_core.engine import Engine

logger = logging.getLogger(__name__)


def lora_rows(max_num_seqs: int) -> int:
    """Rows of `model.lora_index`: a power of two above max_num_seqs, so that padded batch buckets and the
    scratch row fit."""
    return 1 << max_num_seqs.bit_length()


def build_engine(settings: Settings) -> tuple[Engine, Tokenizer, Path]:
    """Load the checkpoint and build a started engine (blocking: run it in a worker thread)."""
    import torch

    from minigpt_core.checkpoint import load_checkpoint
    from minigpt_core.engine import Engine
    from minigpt_core.resources import resolve_device

    model_dir = settings.resolved_model_dir()
    device = resolve_device(settings.device)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    dtype = dtypes.get(settings.dtype) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model, tokenizer = load_checkpoint(model_dir, device, dtype)
    if settings.lora_modules:  # before the engine exists: it may capture the forward
        from minigpt_core.lora import attach_adapters, read_adapter

        adapters = [(name, read_adapter(path)) for name, path in settings.lora_modules]
        attach_adapters(model, adapters, max_rows=lora_rows(settings.max_num_seqs))
        logger.info("LoRA adapters: %s", ", ".join(f"{name} (r={w.rank})" for name, w in adapters))
    max_len = min(settings.max_model_len or model.config.max_seq_len, model.config.max_seq_len)
    engine = Engine(
        model,
        max_num_seqs=settings.max_num_seqs,
        max_model_len=max_len,
        max_queued=settings.max_queued,
        output_vocab=tokenizer.vocab_size,
        compile_decode=settings.compile_decode if device.type == "cuda" else settings.compile_decode_cpu,
        fuse_projections=True,  # the server's own model copy; a no-op when LoRA adapters wrap the projections
        decode_steps=settings.decode_steps,
        max_prefill_tokens=settings.max_prefill_tokens,
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
        logger.error("model failed to load: %s", exc)
        # /health is open even under --api-key: tell the world only that it failed, not where the files are
        reason = f"model failed to load: {exc}"
        state.fail(reason, reason if state.settings.api_key is None else "model failed to load (see the server log)")
        return
    state.attach(engine, tokenizer, model_dir)


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """The FastAPI app. With `engine` given, the caller owns it and the tokenizer comes from `settings.model`."""
    from server.apidocs import router as apidocs_router
    from server.responses_route import router as responses_router
    from server.routes import router
    from server.web import router as web_router

    state = ServerState(settings=settings, model_name=settings.model_name())
    state.adapters = dict(settings.lora_modules)  # a caller-owned engine's model must carry them, in this order
    if settings.chat_template is not None:  # ConfigError on a bad template (minigpt-serve checks it before binding)
        state.chat_template = load_chat_template(settings.chat_template)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader: asyncio.Task[None] | None = None
        if engine is not None:
            model_dir = settings.resolved_model_dir()
            tok = Tokenizer.from_dir(model_dir)
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

    app = FastAPI(title="MiniGPT", version=package_version(), lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = state
    install_error_handlers(app, settings.retry_after_s)
    app.include_router(router)
    app.include_router(responses_router)  # /v1/responses
    app.include_router(web_router)
    app.include_router(apidocs_router)  # /docs without a CDN
    app.add_middleware(GatewayMiddleware, settings=settings, metrics=state.metrics)
    install_openapi(app)
    return app
