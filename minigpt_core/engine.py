"""The continuous-batching generation engine: a thread that owns the model and serves many requests at once.

What it is: `Engine.submit()` validates a request (token ids, sampling params, context length, queue bound)
and returns a `RequestHandle`, an async iterator of `TokenEvent`s fed from the engine thread through
`loop.call_soon_threadsafe`; `Engine.generate()` is its blocking twin for CLIs and RL rollouts. The engine
thread admits waiting requests into free KV-cache slots and runs scheduler steps (see scheduler.py: one
batched prefill forward for the new requests and one decode call of K steps for the running ones). It sleeps on
a Condition when idle. `handle.cancel()` (or closing the iteration) frees the slot at the next step.

What it is not: it knows nothing about text, chat templates or HTTP; it takes token ids and yields token ids.
Chat policy (a thinking budget, tool and JSON grammars) reaches it as a `Constraint` built by
`minigpt_core.prompting`; `SamplingParams.max_thinking_tokens` is not read here.
Torch never runs on the caller's asyncio loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType

import torch

from minigpt_core.constraints import Constraint
from minigpt_core.cpu_compile import CompiledForward
from minigpt_core.cuda_graphs import allow_recompiles
from minigpt_core.errors import (
    ConfigError,
    ContextLengthExceeded,
    EngineClosed,
    EngineOverloaded,
    InvalidRequest,
    MiniGPTError,
)
from minigpt_core.kv_cache import KVCache
from minigpt_core.lora import MultiLoRALinear
from minigpt_core.model import MiniGPT
from minigpt_core.request import Request, TokenEvent
from minigpt_core.sampling import RequestSampler, SamplingParams
from minigpt_core.scheduler import Scheduler
from minigpt_core.tokenizer import EOT_ID, IM_END_ID

__all__ = ["Engine", "EngineStats", "EventSink", "RequestHandle", "TokenEvent", "validate_request"]

logger = logging.getLogger(__name__)

_WAKE = TokenEvent(None, None, None, "cancelled")  # identity sentinel that wakes a consumer after cancel()

# Takes one engine step's events of every request submitted with it, in one call from the engine thread
# (`Engine.submit(..., sink=...)`: the engine process sends them on to the API process in one message).
EventSink = Callable[[list[tuple["RequestHandle", TokenEvent]]], None]


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    kv_tokens_used: int
    kv_tokens_total: int
    num_slots: int
    max_model_len: int
    prompt_tokens_total: int
    generation_tokens_total: int
    cached_prompt_tokens_total: int
    steps_total: int
    finished_total: dict[str, int] = field(default_factory=dict)  # by finish_reason


class RequestHandle:
    """The consumer's end of one request: iterate its TokenEvents, or cancel it.

    A handle made inside a running asyncio loop is iterated with `async for`; one made outside (or through
    `Engine.generate`) with a plain `for`. The iteration ends after the event that has a finish_reason.
    `cancel()` is thread safe and idempotent: the slot is freed at the next engine step and the iteration
    ends without further events. Closing the async iteration (`aclose()`, or the consuming task being
    cancelled) cancels the request.
    """

    def __init__(
        self,
        engine: Engine,
        request_id: str,
        prompt_tokens: int,
        loop: asyncio.AbstractEventLoop | None,
        sink: EventSink | None = None,
    ):
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self._engine = engine
        self._loop = loop
        self._sink = sink  # with a sink, events go there and this handle is not iterated
        self._async_queue: asyncio.Queue[TokenEvent] | None = asyncio.Queue() if loop is not None else None
        self._sync_queue: queue.Queue[TokenEvent] = queue.Queue()
        self._cancelled = False
        self._engine_done = False  # the engine pushed a final event
        self._consumer_done = False  # the iteration has ended

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    # --- engine side (engine thread) ----------------------------------------------------------
    def _push(self, event: TokenEvent) -> None:
        if self._cancelled or self._engine_done:
            return
        if event.finish_reason is not None:
            self._engine_done = True
        self._deliver(event)

    def _deliver(self, event: TokenEvent) -> None:
        target = self._sink if self._sink is not None else self._loop
        if target is None:
            self._sync_queue.put(event)
            return
        if threading.current_thread() is self._engine._thread:
            # Batched: the engine hands a whole step's events to each loop (or sink) in one call.
            self._engine._outbox.setdefault(target, []).append((self, event))
            return
        self._post(target, [(self, event)])

    @staticmethod
    def _post(target: asyncio.AbstractEventLoop | EventSink, items: list[tuple[RequestHandle, TokenEvent]]) -> None:
        if not isinstance(target, asyncio.AbstractEventLoop):
            target(items)
            return
        loop = target
        try:
            loop.call_soon_threadsafe(RequestHandle._put_all, items)
        except RuntimeError:  # the loop is closed: nobody can listen any more
            for handle, _ in items:
                handle._cancelled = True

    @staticmethod
    def _put_all(items: list[tuple[RequestHandle, TokenEvent]]) -> None:
        for handle, event in items:
            assert handle._async_queue is not None
            handle._async_queue.put_nowait(event)

    def drain_nowait(self) -> list[TokenEvent]:
        """Events already queued behind the one just received (consumers coalesce them into one chunk)."""
        out: list[TokenEvent] = []
        q = self._async_queue
        while q is not None and not self._consumer_done and not q.empty():
            try:
                out.append(self._next_event(q.get_nowait()))
            except _EndOfStream:
                break
        return out

    # --- consumer side ------------------------------------------------------------------------
    def cancel(self) -> None:
        if self._cancelled or self._engine_done:
            return
        self._cancelled = True
        if self._sink is None:
            self._deliver(_WAKE)  # wake a consumer blocked on the queue
        self._engine._wake()

    def _next_event(self, event: TokenEvent) -> TokenEvent:
        if event is _WAKE or self._cancelled:
            self._consumer_done = True
            raise _EndOfStream
        if event.finish_reason is not None:
            self._consumer_done = True
        return event

    def __aiter__(self) -> RequestHandle:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._async_queue is None:
            raise MiniGPTError("this handle was submitted outside an event loop: iterate it with a plain for")
        if self._consumer_done or self._cancelled:
            self._consumer_done = True
            raise StopAsyncIteration
        try:
            event = await self._async_queue.get()
        except asyncio.CancelledError:
            self.cancel()
            raise
        try:
            return self._next_event(event)
        except _EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        if not self._consumer_done:
            self.cancel()
        self._consumer_done = True

    def __iter__(self) -> RequestHandle:
        return self

    def __next__(self) -> TokenEvent:
        if self._loop is not None:
            raise MiniGPTError("this handle belongs to an event loop: iterate it with async for")
        if self._consumer_done or self._cancelled:
            self._consumer_done = True
            raise StopIteration
        try:
            return self._next_event(self._sync_queue.get())
        except _EndOfStream:
            raise StopIteration from None


class _EndOfStream(Exception):
    pass


class Engine:
    """Continuous batching over a fixed set of KV-cache slots. Start it with `start()` (or `with Engine(...)`).

    `kv_len_bucket`: a decode step reads the cache up to its longest row rounded up to a multiple of this
    (64 by default; >= max_model_len reads the whole slot every step, the fixed shape a CUDA-graph path
    wants). Rows never share a reduction, so a request's greedy tokens do not depend on its neighbours;
    what can differ is float rounding (~1e-7 on CPU, where GEMM kernels vary with the batch size even at a
    fixed kv_len), far below the gap between distinct logits. Reading whole slots costs ~10x on CPU.

    On CUDA the decode step runs "dense" (row b is slot b; the cache is read as a view) from power-of-two
    batch and KV-length buckets, each captured once as a CUDA graph (`cuda_graphs`, default on for CUDA), and
    every waiting prompt is prefilled in one captured forward per step (up to `max_prefill_tokens`).
    `decode_steps` (K, default 8): decode steps per call while no prompt is being prefilled,
    sampled on the device with one host transfer per call (see scheduler.py); greedy tokens do not depend on K.
    `fuse_projections`: q/k/v and gate/up as one GEMM each (fewer kernels per step); only for a model used by
    nothing else, since it replaces the projection parameters by views (see MiniGPT.fuse_projections).
    `prefix_caching`: a prompt that starts with tokens a slot still holds (a shared system prompt, tool
    schemas, the earlier turns of a chat) reuses their keys/values instead of recomputing them (prefix_cache.py);
    the first TokenEvent reports how many in `cached_tokens`.
    `output_vocab` (the tokenizer's size) bounds the ids that can be sampled when the embedding is larger.
    `compile_decode` on the CPU compiles the decode and prefill forwards (cpu_compile.py) before `__init__`
    returns; with `compile_background` it does so only when an earlier start left the kernels in the on-disk cache
    (~15-20 s on a 2-core box); on a cold cache the engine serves its eager forward and a child process fills the
    cache for the next start (`compiled_ready()`, `wait_cache_warmed()`). It never switches mid-serving.
    """

    def __init__(
        self,
        model: MiniGPT,
        *,
        max_num_seqs: int = 16,
        max_model_len: int | None = None,
        max_queued: int = 256,
        prefill_chunk: int = 256,
        eos_token_ids: Iterable[int] = (IM_END_ID, EOT_ID),
        device: torch.device | str | None = None,
        kv_len_bucket: int = 64,
        cuda_graphs: bool | None = None,
        output_vocab: int | None = None,
        compile_decode: bool = False,
        compile_background: bool = False,
        decode_steps: int | None = None,
        max_prefill_tokens: int = 8192,
        fuse_projections: bool = False,
        prefix_caching: bool = True,
        decode_kernel: bool = False,
    ) -> None:
        config = model.config
        max_model_len = config.max_seq_len if max_model_len is None else max_model_len
        for name, value in (
            ("max_num_seqs", max_num_seqs),
            ("max_model_len", max_model_len),
            ("max_queued", max_queued),
            ("prefill_chunk", prefill_chunk),
            ("kv_len_bucket", kv_len_bucket),
            ("max_prefill_tokens", max_prefill_tokens),
            ("decode_steps", 1 if decode_steps is None else decode_steps),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if max_model_len > config.max_seq_len:
            raise ConfigError(f"max_model_len {max_model_len} exceeds the model's max_seq_len {config.max_seq_len}")
        param = next(model.parameters())
        self.device = torch.device(device) if device is not None else param.device
        self.model = model.to(self.device).eval()
        if fuse_projections:  # the caller hands the model over for inference only (see MiniGPT.fuse_projections)
            self.model.fuse_projections()
        self.vocab_size = config.vocab_size
        self.max_num_seqs, self.max_model_len, self.max_queued = max_num_seqs, max_model_len, max_queued
        # Compiled on the CPU: one spare position per slot, so reading a whole slot is never a slice to the end of
        # the cache, a case the compiler specialises (it would compile again mid-serving at the context's end).
        spare = 1 if compile_decode and self.device.type == "cpu" else 0
        self.cache = KVCache(config, max_num_seqs, max_model_len + spare, self.device, param.dtype)
        self.num_adapters = max(
            (m.lora_A.shape[0] - 1 for m in self.model.modules() if isinstance(m, MultiLoRALinear)), default=0
        )
        self._warming: CompiledForward | None = None  # the compiled forward a child builds for the next start
        self._warming_done = threading.Event()
        self._scheduler = Scheduler(
            self.model,
            self.cache,
            max_model_len=max_model_len,
            prefill_chunk=prefill_chunk,
            eos_token_ids=tuple(eos_token_ids),
            device=self.device,
            kv_len_bucket=kv_len_bucket,
            dense_decode=self.device.type == "cuda",
            cuda_graphs=self.device.type == "cuda" if cuda_graphs is None else cuda_graphs,
            output_vocab=output_vocab,
            compile_decode=compile_decode,
            compiled=self._compiled_forward(compile_decode, compile_background, kv_len_bucket),
            decode_steps=8 if decode_steps is None else decode_steps,
            max_prefill_tokens=max_prefill_tokens,
            prefix_caching=prefix_caching,
            # Opt-in until it is faster than cuDNN's SDPA on every preset (minigpt_core/kernels.py says where it
            # stands); it changes no token beyond bf16 rounding (tests/core/test_gpu.py).
            decode_kernel=decode_kernel,
        )
        self._cond = threading.Condition()
        self._waiting: deque[tuple[Request, RequestHandle]] = deque()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._closed = False
        self._outbox: dict[asyncio.AbstractEventLoop | EventSink, list[tuple[RequestHandle, TokenEvent]]] = {}

    def _compiled_forward(self, compile_decode: bool, background: bool, kv_len_bucket: int) -> CompiledForward | None:
        """On the CPU, the compiled forward, built now. With `background`, built now only when an earlier start left
        its kernels in the on-disk cache (`CompiledForward.warm()`: ~15-20 s); else the engine serves its eager forward
        and `start()` has a child process fill the cache for the next start (cpu_compile.py says why not switch)."""
        if not compile_decode or self.device.type != "cpu":
            return None
        allow_recompiles(32)  # a process may serve several models (benchmarks, tests)
        kv_len = min(self.max_model_len, kv_len_bucket)
        threads = torch.get_num_threads()
        compiled = CompiledForward(self.model, cache=self.cache, kv_len=kv_len, threads=threads)
        if background and not compiled.warm():
            self._warming = compiled
            return None
        compiled.build()
        return compiled

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._closed:
                raise EngineClosed("the engine has been shut down")
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="minigpt-engine", daemon=True)
            self._thread.start()
            if self._warming is not None:
                self._warming.prepare_in_background(on_prepared=self._warming_done.set)
        logger.info("engine started: %d slots x %d tokens on %s", self.max_num_seqs, self.max_model_len, self.device)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop the thread; every unfinished request ends with "cancelled". Idempotent."""
        with self._cond:
            self._closed = True
            self._stop = True
            self._cond.notify_all()
            thread = self._thread
        if self._warming is not None:
            self._warming.stop()  # no compiler left running after the server
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        with self._cond:
            leftovers = list(self._waiting) if thread is None else []
            self._waiting.clear()
        for seq, _ in leftovers:
            seq.emit(TokenEvent(None, None, None, "cancelled"))

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # --- requests -------------------------------------------------------------------------------
    def submit(
        self,
        prompt_ids: Iterable[int],
        params: SamplingParams,
        constraint: Constraint | None = None,
        request_id: str | None = None,
        adapter: int = 0,
        *,
        sink: EventSink | None = None,
    ) -> RequestHandle:
        """Queue a request; iterate the returned handle for its TokenEvents.

        `adapter`: the LoRA adapter (1-based, as `minigpt_core.lora.attach_adapters` stacked them) the request
        runs with; 0 is the base model. Requests for different adapters share batches.
        `sink`: the engine thread hands every step's events of the requests submitted with this sink to it in one
        call, instead of to the handle (then not iterated; `cancel()` still works). The engine process uses it.

        Raises InvalidRequest (empty prompt, ids outside the vocabulary, bad sampling values),
        ContextLengthExceeded, EngineOverloaded (waiting queue full) or EngineClosed. Requests submitted
        before `start()` wait for it.
        """
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop() if sink is None else None
        except RuntimeError:
            loop = None
        return self._submit(prompt_ids, params, constraint, request_id, loop, adapter, sink)

    def generate(
        self, prompt_ids: Iterable[int], params: SamplingParams, constraint: Constraint | None = None
    ) -> Iterator[TokenEvent]:
        """Blocking twin of `submit`: validates now, then yields TokenEvents; closing the iterator cancels."""
        handle = self._submit(prompt_ids, params, constraint, None, None)
        return _BlockingStream(handle)

    def _submit(
        self,
        prompt_ids: Iterable[int],
        params: SamplingParams,
        constraint: Constraint | None,
        request_id: str | None,
        loop: asyncio.AbstractEventLoop | None,
        adapter: int = 0,
        sink: EventSink | None = None,
    ) -> RequestHandle:
        prompt = validate_request(prompt_ids, params, vocab_size=self.vocab_size, max_model_len=self.max_model_len)
        if isinstance(adapter, bool) or not isinstance(adapter, int) or not 0 <= adapter <= self.num_adapters:
            raise InvalidRequest(f"LoRA adapter {adapter!r} is not one of this engine's {self.num_adapters}")
        request_id = request_id or f"req-{uuid.uuid4().hex[:16]}"
        handle = RequestHandle(self, request_id, len(prompt), loop, sink)
        seq = Request(
            request_id=request_id,
            prompt_ids=prompt,
            params=params,
            sampler=RequestSampler(params, prompt),
            constraint=constraint,
            emit=handle._push,
            is_cancelled=lambda: handle.cancelled,
            adapter=adapter,
        )
        with self._cond:
            if self._closed:
                raise EngineClosed("the engine has been shut down")
            if len(self._waiting) >= self.max_queued:
                # Cancelled requests (their client has gone) leave now, not at the engine thread's next turn,
                # which a long step or a busy interpreter can put off while new requests are turned away.
                self._drop_cancelled_waiting()
            if len(self._waiting) >= self.max_queued:
                raise EngineOverloaded(f"the waiting queue is full ({self.max_queued} requests)")
            self._waiting.append((seq, handle))
            self._cond.notify_all()
        logger.debug("queued %s: %d prompt tokens, max_new_tokens=%d", request_id, len(prompt), params.max_new_tokens)
        return handle

    def compiled_ready(self) -> bool:
        """Whether the compiled CPU forward serves (False when the engine does not compile on the CPU)."""
        compiled = self._scheduler.compiled
        return compiled is not None and compiled.ready()

    def wait_cache_warmed(self, timeout_s: float | None = None) -> bool:
        """With `compile_background` on a cold cache: block until the child process that fills the cache for the
        next start has ended (True if it left the cache warm), or `timeout_s` passed (False)."""
        return self._warming is not None and self._warming_done.wait(timeout_s) and self._warming.warm()

    def stats(self) -> EngineStats:
        sched = self._scheduler
        with self._cond:
            waiting = sum(1 for _, handle in self._waiting if not handle.cancelled)
        return EngineStats(
            running=len(sched.running),
            waiting=waiting,
            kv_tokens_used=sched.kv_tokens_used(),
            kv_tokens_total=self.max_num_seqs * self.max_model_len,
            num_slots=self.max_num_seqs,
            max_model_len=self.max_model_len,
            prompt_tokens_total=sched.counters.prompt_tokens,
            cached_prompt_tokens_total=sched.counters.cached_tokens,
            generation_tokens_total=sched.counters.generation_tokens,
            steps_total=sched.counters.steps,
            finished_total=dict(sched.counters.finished),
        )

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until no request is running or waiting (True), or until `timeout_s` has passed (False). The engine
        thread notifies after every step that leaves nothing running (idle needs that), so this waits, never polls."""
        sched = self._scheduler
        with self._cond:
            return self._cond.wait_for(
                lambda: not sched.running and not any(not handle.cancelled for _, handle in self._waiting), timeout_s
            )

    # --- the engine thread ----------------------------------------------------------------------
    def _run(self) -> None:
        sched = self._scheduler
        with torch.inference_mode():
            while True:
                with self._cond:
                    self._drop_cancelled_waiting()
                    while not self._stop and not self._waiting and not sched.running:
                        self._cond.wait()
                        self._drop_cancelled_waiting()
                    if self._stop:
                        break
                    while self._waiting and sched.free_slots:
                        sched.admit(self._waiting.popleft()[0])
                try:
                    sched.step()
                except Exception:  # step() guards model calls itself; this keeps the thread alive regardless
                    logger.exception("engine step failed")
                self._flush_outbox()
                if not sched.running:
                    self._wake()  # wait_idle's waiters look again
            sched.abort_all("cancelled")
            with self._cond:
                leftovers = list(self._waiting)
                self._waiting.clear()
            for seq, _ in leftovers:
                seq.emit(TokenEvent(None, None, None, "cancelled"))
            self._flush_outbox()
        logger.info("engine stopped")

    def _flush_outbox(self) -> None:
        outbox, self._outbox = self._outbox, {}
        for target, items in outbox.items():
            RequestHandle._post(target, items)

    def _drop_cancelled_waiting(self) -> None:
        if any(handle.cancelled for _, handle in self._waiting):
            self._waiting = deque(item for item in self._waiting if not item[1].cancelled)


def validate_request(
    prompt_ids: Iterable[int], params: SamplingParams, *, vocab_size: int, max_model_len: int
) -> list[int]:
    """The prompt as a list of ints, after the checks `Engine.submit` makes before anything is queued (the engine
    process's client makes them in the API process): InvalidRequest, ContextLengthExceeded."""
    try:
        prompt = [int(t) for t in prompt_ids]
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"prompt token ids must be integers: {exc}", param="prompt") from None
    if not prompt:
        raise InvalidRequest("the prompt is empty", param="prompt")
    bad = next((t for t in prompt if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidRequest(f"token id {bad} is outside the vocabulary (size {vocab_size})", param="prompt")
    params.validate(vocab_size)
    if len(prompt) + params.max_new_tokens > max_model_len:
        raise ContextLengthExceeded(len(prompt), params.max_new_tokens, max_model_len)
    return prompt


class _BlockingStream(Iterator[TokenEvent]):
    """What `Engine.generate` returns: iterates a handle; `close()` (or being dropped) cancels the request."""

    def __init__(self, handle: RequestHandle) -> None:
        self.handle = handle

    def __next__(self) -> TokenEvent:
        try:
            return next(self.handle)
        except BaseException:
            self.handle.cancel()
            raise

    def close(self) -> None:
        self.handle.cancel()

    def __del__(self) -> None:
        self.handle.cancel()
