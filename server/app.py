"""The app factory: `create_app(settings, engine=None)`, its lifespan, and the gateway middleware.

The lifespan loads the checkpoint in a worker thread (so /health can answer 503 while it loads), builds and
starts the engine, warms up the grammar engine (llguidance initialises lazily) and shuts it down on exit. With
`engine_process` (default on CUDA) the engine runs in a process of its own (`minigpt_core.engine_client`), so the
event loop and the engine do not share a GIL; the server talks to either through `EngineLike`.
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
from minigpt_core.engine_process import EngineOptions, load_engine, warm_grammar
from minigpt_core.errors import MiniGPTError
from minigpt_core.tokenizer import Tokenizer
from server.errors import install_error_handlers
from server.gateway import GatewayMiddleware
from server.openapi import install_openapi
from server.settings import Settings
from server.state import ServerState, package_version

if TYPE_CHECKING:
    from minigpt_core.engine_api import EngineLike
    from minigpt_core.engine_client import EngineClient

logger = logging.getLogger(__name__)


def engine_options(settings: Settings) -> EngineOptions:
    """The engine-building part of the settings."""
    return EngineOptions(
        model_dir=settings.resolved_model_dir(),
        device=settings.device,
        dtype=settings.dtype,
        lora_modules=settings.lora_modules,
        max_num_seqs=settings.max_num_seqs,
        max_model_len=settings.max_model_len,
        max_queued=settings.max_queued,
        compile_decode=settings.compile_decode,
        compile_decode_cpu=settings.compile_decode_cpu,
        decode_steps=settings.decode_steps,
        max_prefill_tokens=settings.max_prefill_tokens,
        threads=settings.threads,
        log_level=settings.log_level,
    )


def uses_engine_process(settings: Settings) -> bool:
    """`--engine-process`, else on for CUDA and on the CPU when `cpu_serving_defaults()` says so. Where the engine's
    host work and the event loop compete for the GIL (a GPU doing the math) it pays; on the CPU the compiled forward's
    C++ kernels hold the GIL, so in the API's process it measured no faster than eager over HTTP (issue 17,
    docs/benchmarks.md)."""
    if settings.engine_process is not None:
        return settings.engine_process
    from minigpt_core.resources import cpu_serving_defaults, resolve_device

    device = resolve_device(settings.device).type
    return device == "cuda" or (device == "cpu" and cpu_serving_defaults().engine_process)


def build_engine(settings: Settings) -> tuple[EngineLike, Tokenizer, Path]:
    """Load the checkpoint and build a started in-process engine (blocking: run it in a worker thread)."""
    engine, tokenizer = load_engine(engine_options(settings))
    engine.start()
    warm_grammar(tokenizer, engine.vocab_size)
    logger.info("serving %s from %s", settings.model_name(), settings.resolved_model_dir())
    return engine, tokenizer, settings.resolved_model_dir()


async def start_engine_process(state: ServerState) -> tuple[EngineClient, Tokenizer, Path]:
    """The engine in its own process (spawned now, loading there) and this process's tokenizer and grammar engine
    (the constraint built to validate a request is built here); returns once both are ready."""
    from minigpt_core.engine_client import EngineClient

    settings = state.settings
    model_dir = settings.resolved_model_dir()
    loop = asyncio.get_running_loop()

    def on_exit(reason: str) -> None:  # on the loop, when the child dies while serving
        state.engine_failed(reason)

    client = EngineClient(engine_options(settings), on_exit=on_exit)
    try:
        tokenizer, _ = await asyncio.gather(
            asyncio.to_thread(Tokenizer.from_dir, model_dir), asyncio.to_thread(client.wait_ready)
        )
        await asyncio.to_thread(warm_grammar, tokenizer, client.vocab_size)
    except BaseException:
        client.shutdown(timeout_s=5)
        raise
    client.bind(loop)
    logger.info("serving %s from %s (engine process %s)", settings.model_name(), model_dir, client.pid)
    return client, tokenizer, model_dir


async def _load(state: ServerState) -> None:
    engine: EngineLike
    try:
        if uses_engine_process(state.settings):
            engine, tokenizer, model_dir = await start_engine_process(state)
        else:
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


def create_app(settings: Settings, engine: EngineLike | None = None) -> FastAPI:
    """The FastAPI app. With `engine` given, the caller owns it (in this process, whatever `engine_process` says)
    and the tokenizer comes from `settings.model`."""
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
