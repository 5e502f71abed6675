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
import importlib.metadata
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from minigpt_core.custom_template import CustomTemplate, load_chat_template
from minigpt_core.errors import MiniGPTError
from minigpt_core.tokenizer import Tokenizer
from server.errors import Draining, ModelNotFound, NotReady, ServerError, install_error_handlers
from server.gateway import GatewayMiddleware
from server.metrics import Metrics
from server.openapi import install_openapi
from server.settings import Settings

logger = logging.getLogger(__name__)


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
    adapters: dict[str, Path] = field(default_factory=dict)  # --lora-modules: name -> directory, in index order
    chat_template: CustomTemplate | None = None  # --chat-template; None = the built-in template
    draining: bool = False  # set on SIGTERM (server.__main__): new work gets 503, /ready 503, in-flight work runs on

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.tokenizer is not None

    def require_ready(self) -> tuple[Any, Tokenizer]:
        if self.draining:
            raise Draining("this server is shutting down and takes no new requests; retry (another replica)")
        if self.engine is None or self.tokenizer is None:
            raise NotReady(self.load_error or "the model is still loading; retry shortly")
        return self.engine, self.tokenizer

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name and name not in self.adapters:
            served = ", ".join(f"`{n}`" for n in [self.model_name, *self.adapters])
            raise ModelNotFound(f"The model `{name}` does not exist. This server serves {served}.", "model")

    def served_name(self, name: str | None) -> str:
        """The model id a response names: the adapter asked for, else the base model."""
        return name if name is not None and name in self.adapters else self.model_name

    def engine_for(self, name: str | None) -> Any:
        """What to submit a request for model `name` to: the engine for the base model, else a view of it that
        passes the adapter's index (1-based, in --lora-modules order; 0 is the base) as `submit(..., adapter=k)`."""
        if name is None or name not in self.adapters:
            return self.engine
        return AdapterEngine(self.engine, list(self.adapters).index(name) + 1)

    def attach(self, engine: Any, tokenizer: Tokenizer, model_dir: Path | None) -> None:
        self.engine, self.tokenizer = engine, tokenizer
        self.max_model_len = int(engine.max_model_len)
        self.vocab_size = int(engine.vocab_size)
        self.defaults = _generation_defaults(model_dir)


class AdapterNotSupported(ServerError):
    status, type, code = 501, "server_error", "adapter_not_supported"


class AdapterEngine:
    """The engine as seen by the requests for one LoRA adapter: `submit` adds `adapter=index`, the rest is the
    engine's own. An engine whose `submit` takes no `adapter` cannot serve adapters: 501, never base output."""

    def __init__(self, engine: Any, adapter: int) -> None:
        if "adapter" not in inspect.signature(engine.submit).parameters:
            raise AdapterNotSupported("this engine cannot run LoRA adapters yet; ask for the base model")
        self._engine, self.adapter = engine, adapter

    def submit(self, prompt_ids: Any, params: Any, constraint: Any = None, request_id: str | None = None) -> Any:
        return self._engine.submit(
            prompt_ids, params, constraint=constraint, request_id=request_id, adapter=self.adapter
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def lora_rows(max_num_seqs: int) -> int:
    """Rows of `model.lora_index`: a power of two above max_num_seqs, so that padded batch buckets and the
    scratch row fit."""
    return 1 << max_num_seqs.bit_length()


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


def package_version() -> str:
    """The installed minigpt package's version (GET /version, the OpenAPI document)."""
    try:
        return importlib.metadata.version("minigpt")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


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
        compile_decode=settings.compile_decode,
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
        public = state.settings.api_key is None
        state.load_error = f"model failed to load: {exc}" if public else "model failed to load (see the server log)"
        if state.on_load_error is not None:
            state.on_load_error(f"model failed to load: {exc}")
        return
    state.attach(engine, tokenizer, model_dir)


def create_app(settings: Settings, engine: Any = None, tokenizer: Tokenizer | None = None) -> FastAPI:
    """The FastAPI app. With `engine` given, the caller owns it and the tokenizer comes from `settings.model`."""
    from server.apidocs import router as apidocs_router
    from server.responses_route import router as responses_router
    from server.routes import router
    from server.web import router as web_router

    state = ServerState(settings=settings, metrics=Metrics(settings.model_name()), model_name=settings.model_name())
    state.adapters = dict(settings.lora_modules)  # a caller-owned engine's model must carry them, in this order
    if settings.chat_template is not None:  # ConfigError on a bad template (minigpt-serve checks it before binding)
        state.chat_template = load_chat_template(settings.chat_template)

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
