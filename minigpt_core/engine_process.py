"""The engine in a process of its own: how a server's engine is loaded (`EngineOptions`, `load_engine`), and the
child side of the engine process (`child_main`), which `minigpt_core.engine_client.EngineClient` starts.

Why a process: the API's event loop (HTTP, SSE, parsing: tens of microseconds of Python per streamed token) and the
engine's scheduler (host work per step) shared one GIL, and each waited for the other (docs/benchmarks.md, "Where a
token's time goes"). In its own process the engine thread holds its own interpreter.

The child loads the checkpoint as the in-process server does (`load_engine`), runs an `Engine`, warms the grammar
engine, then serves one `multiprocessing` connection: the main thread receives submit / cancel / shutdown messages
(rebuilding each request's constraint from its `ConstraintSpec` with the child's own tokenizer) and the engine
thread sends, once per step, one message with that step's events of every request and a `EngineStats` snapshot
(`Engine.submit(..., sink=...)`). A third thread sends a fresh snapshot when the stats change while no step runs
(a cancelled request freed its slot). Wire format (pickled tuples), parent -> child:
`("submit", key, request_id, prompt_ids, params, spec, adapter)`, `("cancel", key)`, `("shutdown",)`; child ->
parent: `("ready", info, stats)` or `("failed", message)` once, then `("step", events, stats, received)` (an event
is `(key, token_id, logprob, top_logprobs, finish_reason, error, cached_tokens)`; `received` counts the submit
messages read so far), `("stats", stats, received)`, `("rejected", key, message)`, and `("bye",)` at shutdown.

What it is not: the client (engine_client.py), HTTP, or chat logic. Blocking `generate()` users (CLIs, evals, RL)
keep the in-process Engine.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minigpt_core.errors import MiniGPTError

if TYPE_CHECKING:
    from minigpt_core.engine import Engine, EngineStats, RequestHandle
    from minigpt_core.request import TokenEvent
    from minigpt_core.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

STATS_INTERVAL_S = 0.05  # how often the child looks for stats that changed without a step (a freed slot)


@dataclass(frozen=True)
class EngineOptions:
    """How a server's engine is built (minigpt-serve's flags, in engine terms). Picklable: it crosses to the
    engine process. `compile_decode` applies on CUDA, `compile_decode_cpu` on the CPU."""

    model_dir: Path
    device: str = "auto"
    dtype: str = "auto"
    lora_modules: tuple[tuple[str, Path], ...] = ()
    max_num_seqs: int = 8
    max_model_len: int | None = None
    max_queued: int = 64
    compile_decode: bool = True
    compile_decode_cpu: bool | None = None  # None: resources.cpu_serving_defaults()
    decode_steps: int | None = None
    max_prefill_tokens: int = 8192
    threads: int | None = None  # the engine process's torch threads (None: minigpt_core.threads' default)
    log_level: str = "info"
    extra: dict[str, Any] = field(default_factory=dict)  # further Engine keyword arguments (tests, benchmarks)


@dataclass(frozen=True)
class EngineInfo:
    """What the client serves from without asking: the engine's fixed sizes."""

    max_model_len: int
    vocab_size: int
    num_adapters: int


def lora_rows(max_num_seqs: int) -> int:
    """Rows of `model.lora_index`: a power of two above max_num_seqs, so that padded batch buckets and the
    scratch row fit."""
    return 1 << max_num_seqs.bit_length()


def load_engine(options: EngineOptions) -> tuple[Engine, Tokenizer]:
    """Load the checkpoint and build an engine, not started (blocking: seconds to minutes with compilation)."""
    import torch

    from minigpt_core.checkpoint import load_checkpoint
    from minigpt_core.engine import Engine
    from minigpt_core.resources import cpu_serving_defaults, resolve_device

    device = resolve_device(options.device)
    cpu = cpu_serving_defaults()
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    dtype = dtypes.get(options.dtype) or (torch.bfloat16 if device.type == "cuda" else dtypes[cpu.dtype])
    # The CPU default: the compiled forward, built by a child process while the eager one serves. Not with LoRA
    # adapters: the child cannot build the adapters' graphs, and compiling them in the engine stalls a request.
    default_compile = cpu.compile_decode and not options.lora_modules
    compile_cpu = default_compile if options.compile_decode_cpu is None else options.compile_decode_cpu
    background = options.compile_decode_cpu is None and cpu.compile_background and default_compile
    model, tokenizer = load_checkpoint(options.model_dir, device, dtype)
    if options.lora_modules:  # before the engine exists: it may capture the forward
        from minigpt_core.lora import attach_adapters, read_adapter

        adapters = [(name, read_adapter(path)) for name, path in options.lora_modules]
        attach_adapters(model, adapters, max_rows=lora_rows(options.max_num_seqs))
        logger.info("LoRA adapters: %s", ", ".join(f"{name} (r={w.rank})" for name, w in adapters))
    max_len = min(options.max_model_len or model.config.max_seq_len, model.config.max_seq_len)
    engine = Engine(
        model,
        max_num_seqs=options.max_num_seqs,
        max_model_len=max_len,
        max_queued=options.max_queued,
        output_vocab=tokenizer.vocab_size,
        compile_decode=options.compile_decode if device.type == "cuda" else compile_cpu,
        compile_background=device.type == "cpu" and background,
        fuse_projections=True,  # the server's own model copy; a no-op when LoRA adapters wrap the projections
        decode_steps=options.decode_steps,
        max_prefill_tokens=options.max_prefill_tokens,
        **options.extra,
    )
    logger.info("engine for %s on %s (%s)", options.model_dir, device, dtype)
    return engine, tokenizer


def warm_grammar(tokenizer: Tokenizer, vocab_size: int) -> None:
    """Build the grammar engine's tokenizer state and first mask now (blocking), not on the first tools request.

    A tokenizer llguidance cannot handle is logged, not fatal: only constrained requests will fail then.
    """
    from minigpt_core.grammar import warm_up

    try:
        warm_up(tokenizer, vocab_size)
    except MiniGPTError as exc:
        logger.warning("grammar engine unavailable, tools and response_format requests will fail: %s", exc)


def child_main(conn: Connection, options: EngineOptions) -> None:
    """The engine process's entry point (multiprocessing, spawn): load, report, serve `conn` until told to stop or
    until the parent is gone."""
    logging.basicConfig(
        level=options.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s [engine]: %(message)s"
    )
    from minigpt_core.threads import configure_threads

    try:
        configure_threads(options.threads)
        engine, tokenizer = load_engine(options)
        engine.start()
        warm_grammar(tokenizer, engine.vocab_size)
    except BaseException as exc:  # whatever failed (also out of memory): the parent shows it as a load failure
        if not isinstance(exc, MiniGPTError | OSError):
            logger.error("unexpected error while loading the model", exc_info=exc)
        conn.send(("failed", f"{exc}" if isinstance(exc, MiniGPTError | OSError) else f"{type(exc).__name__}: {exc}"))
        conn.close()
        return
    _ChildServer(conn, engine, tokenizer).run()


class _ChildServer:
    """The child's side of the connection around a started engine."""

    def __init__(self, conn: Connection, engine: Engine, tokenizer: Tokenizer) -> None:
        self.conn, self.engine, self.tokenizer = conn, engine, tokenizer
        self.handles: dict[int, RequestHandle] = {}  # key -> handle (main thread writes; the engine thread pops)
        # the engine's request id ("<the API's id>/<key>") -> key, set before the submit: a first event can come
        # from the engine thread before submit() has returned the handle
        self.keys: dict[str, int] = {}
        self.received = 0  # submit messages read
        self.send_lock = threading.Lock()  # the main, engine and stats threads all send
        self.last_stats: EngineStats | None = None
        self.stopped = threading.Event()

    def send(self, message: tuple[Any, ...]) -> None:
        with self.send_lock:
            try:
                self.conn.send(message)
            except (OSError, ValueError):  # the parent is gone: the main thread's recv sees it and stops
                self.stopped.set()

    def run(self) -> None:
        engine = self.engine
        info = EngineInfo(engine.max_model_len, engine.vocab_size, engine.num_adapters)
        self.send(("ready", info, engine.stats()))
        watcher = threading.Thread(target=self._watch_stats, name="minigpt-engine-stats", daemon=True)
        watcher.start()
        try:
            while not self.stopped.is_set():
                try:
                    message = self.conn.recv()
                except (EOFError, OSError):
                    logger.warning("the API process is gone: stopping")
                    break
                if message[0] == "shutdown":
                    break
                self._handle(message)
        finally:
            self.stopped.set()
            engine.shutdown()  # unfinished requests end "cancelled" (through the sink) before the goodbye
            self.send(("bye",))
            self.conn.close()

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "cancel":
            handle = self.handles.pop(message[1], None)
            if handle is not None:
                self.keys.pop(handle.request_id, None)
                handle.cancel()
        elif kind == "submit":
            self._submit(*message[1:])
        else:
            logger.error("unknown message %r", kind)

    def _submit(self, key: int, request_id: str, prompt_ids: list[int], params: Any, spec: Any, adapter: int) -> None:
        engine_id = f"{request_id}/{key}"
        self.keys[engine_id] = key
        try:
            constraint = spec.build(self.tokenizer) if spec is not None else None
            handle = self.engine.submit(
                prompt_ids, params, constraint, request_id=engine_id, adapter=adapter, sink=self._on_step
            )
        except Exception as exc:  # the client checked it all; this is a disagreement (a full queue, a grammar)
            self.keys.pop(engine_id, None)
            if not isinstance(exc, MiniGPTError):
                logger.exception("submit %s failed", request_id)
            self.send(("rejected", key, str(exc)))
        else:
            if engine_id in self.keys:  # not finished already
                self.handles[key] = handle
        finally:
            self.received += 1

    def _on_step(self, items: list[tuple[RequestHandle, TokenEvent]]) -> None:
        """The sink: one engine step's events (engine thread), sent in one message with the stats after it."""
        events = []
        for handle, event in items:
            key = self.keys.get(handle.request_id)
            if key is None:  # cancelled by the parent meanwhile
                continue
            if event.finish_reason is not None:
                self.keys.pop(handle.request_id, None)
                self.handles.pop(key, None)
            events.append(
                (key, event.token_id, event.logprob, event.top_logprobs, event.finish_reason, event.error,
                 event.cached_tokens)
            )  # fmt: skip
        stats = self.engine.stats()
        self.last_stats = stats
        self.send(("step", events, stats, self.received))

    def _watch_stats(self) -> None:
        while not self.stopped.wait(STATS_INTERVAL_S):
            stats = self.engine.stats()
            if stats != self.last_stats:
                self.last_stats = stats
                self.send(("stats", stats, self.received))
