"""What the routes share: `ServerState` (settings, metrics, the engine once loaded) and the per-adapter engine view.

`server.app` builds one `ServerState` per app and stores it as `app.state.server`; the routes read it from there.
This module is imported by both and imports neither, so the app and its routes do not import each other.
It does not load the model (that is `server.app`'s lifespan) and maps no errors to HTTP (`server.errors`).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from minigpt_core.custom_template import CustomTemplate
from minigpt_core.tokenizer import Tokenizer
from server.errors import Draining, ModelNotFound, NotReady
from server.metrics import Metrics
from server.settings import Settings

if TYPE_CHECKING:
    from minigpt_core.constraints import Constraint
    from minigpt_core.engine import EngineStats
    from minigpt_core.engine_api import EngineLike, HandleLike
    from minigpt_core.sampling import SamplingParams

logger = logging.getLogger(__name__)


@dataclass
class ServerState:
    """What routes need; `engine` and `tokenizer` are None until the model is loaded."""

    settings: Settings
    model_name: str
    metrics: Metrics = field(init=False)  # one registry per app; its engine gauges read `engine_stats()`
    engine: EngineLike | None = None  # in this process, or the engine process's client
    tokenizer: Tokenizer | None = None
    max_model_len: int = 0
    vocab_size: int = 0
    defaults: dict[str, float] = field(default_factory=dict)
    load_error: str | None = None
    # set once the model is loaded or has failed to load (embedders and tests wait on it instead of polling)
    load_done: threading.Event = field(default_factory=threading.Event)
    # called on the event loop with the one-line reason when the model cannot be loaded (minigpt-serve exits)
    on_load_error: Callable[[str], None] | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    adapters: dict[str, Path] = field(default_factory=dict)  # --lora-modules: name -> directory, in index order
    chat_template: CustomTemplate | None = None  # --chat-template; None = the built-in template
    draining: bool = False  # set on SIGTERM (server.__main__): new work gets 503, /ready 503, in-flight work runs on

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.engine_stats)

    def engine_stats(self) -> EngineStats | None:
        return self.engine.stats() if self.engine is not None else None

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.tokenizer is not None and self.load_error is None

    def require_ready(self) -> tuple[EngineLike, Tokenizer]:
        if self.draining:
            raise Draining("this server is shutting down and takes no new requests; retry (another replica)")
        if self.engine is None or self.tokenizer is None or self.load_error is not None:
            raise NotReady(self.load_error or "the model is still loading; retry shortly")
        return self.engine, self.tokenizer

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name and name not in self.adapters:
            served = ", ".join(f"`{n}`" for n in [self.model_name, *self.adapters])
            raise ModelNotFound(f"The model `{name}` does not exist. This server serves {served}.", "model")

    def served_name(self, name: str | None) -> str:
        """The model id a response names: the adapter asked for, else the base model."""
        return name if name is not None and name in self.adapters else self.model_name

    def engine_for(self, name: str | None) -> EngineLike:
        """What to submit a request for model `name` to: the engine for the base model, else a view of it that
        passes the adapter's index (1-based, in --lora-modules order; 0 is the base) as `submit(..., adapter=k)`."""
        engine, _ = self.require_ready()
        if name is None or name not in self.adapters:
            return engine
        return AdapterEngine(engine, list(self.adapters).index(name) + 1)

    def attach(self, engine: EngineLike, tokenizer: Tokenizer, model_dir: Path | None) -> None:
        self.engine, self.tokenizer = engine, tokenizer
        self.max_model_len = int(engine.max_model_len)
        self.vocab_size = int(engine.vocab_size)
        self.defaults = _generation_defaults(model_dir)
        self.load_done.set()

    def engine_failed(self, reason: str) -> None:
        """The engine process died while serving: /health and /ready report `reason`, new requests get 503."""
        logger.error("engine failed: %s", reason)
        self.load_error = reason

    def fail(self, reason: str, public_reason: str) -> None:
        """The model cannot be loaded: /health shows `public_reason`; `on_load_error` gets `reason`."""
        self.load_error = public_reason
        self.load_done.set()
        if self.on_load_error is not None:
            self.on_load_error(reason)


class AdapterEngine:
    """The engine as seen by the requests for one LoRA adapter: `submit` runs them with `adapter=index` (whatever
    adapter the caller names), the rest is the engine's own."""

    def __init__(self, engine: EngineLike, adapter: int) -> None:
        self._engine, self.adapter = engine, adapter

    @property
    def max_model_len(self) -> int:
        return self._engine.max_model_len

    @property
    def vocab_size(self) -> int:
        return self._engine.vocab_size

    @property
    def max_queued(self) -> int:
        return self._engine.max_queued

    @property
    def num_adapters(self) -> int:
        return self._engine.num_adapters

    def submit(
        self,
        prompt_ids: Iterable[int],
        params: SamplingParams,
        constraint: Constraint | None = None,
        request_id: str | None = None,
        adapter: int = 0,
    ) -> HandleLike:
        return self._engine.submit(prompt_ids, params, constraint, request_id, self.adapter)

    def stats(self) -> EngineStats:
        return self._engine.stats()

    def shutdown(self, timeout_s: float = 30.0) -> None:
        self._engine.shutdown(timeout_s)


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
