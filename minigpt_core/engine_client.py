"""The API process's end of the engine process: `EngineClient` (an `EngineLike`) and its `ProcessHandle`s.

What it is: `EngineClient(options)` spawns the engine process (`minigpt_core.engine_process.child_main`; spawn, as
CUDA needs), `wait_ready()` blocks until it has loaded the model (raising its load error), and `bind(loop)` reads
the connection from the event loop with `loop.add_reader` (no thread of our own): each wakeup reads the messages
that arrived, one per engine step, and puts every event into its handle's asyncio queue. `submit` checks what the
in-process engine checks before anything is queued (the same `validate_request`, the adapter, a full queue) and
sends the request with its constraint's `ConstraintSpec`; `cancel` sends a cancel. `stats()` is the last snapshot
the child sent (after every step, and within `STATS_INTERVAL_S` of a change without one).

The queue bound is judged here, before the first byte, from the child's last count: waiting requests, plus the
submissions it had not read yet, less the free slots it had (those go straight in). The child's own engine allows
`max_num_seqs` more, so a request this side accepted is not turned away there.

If the child dies, every request in flight ends with an "error" event, later submissions raise EngineClosed, and
`on_exit` is called with the reason (the server's /health reports it). `shutdown()` ends the unfinished requests
"cancelled" (as `Engine.shutdown` does) and joins the process.

What it is not: the engine (engine.py) or the child's loop (engine_process.py); no HTTP. Submit, cancel and
iterate on the loop given to `bind`. As with any spawned multiprocessing child, a script that builds a client
needs the `if __name__ == "__main__":` guard (minigpt-serve's entry points have it).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import multiprocessing
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from minigpt_core.constraints import Constraint
from minigpt_core.engine import EngineStats, validate_request
from minigpt_core.engine_api import spec_of
from minigpt_core.engine_process import EngineInfo, EngineOptions, child_main
from minigpt_core.errors import ConfigError, EngineClosed, EngineOverloaded, InvalidRequest, MiniGPTError
from minigpt_core.request import TokenEvent
from minigpt_core.sampling import SamplingParams

__all__ = ["EngineClient", "ProcessHandle"]

logger = logging.getLogger(__name__)

_WAKE = TokenEvent(None, None, None, "cancelled")  # identity sentinel that wakes a consumer after cancel()


class ProcessHandle:
    """One request in the engine process, as `minigpt_core.engine.RequestHandle` behaves on an event loop: async
    iteration of its TokenEvents (ending after the one with a finish_reason), `cancel()` (idempotent; frees the
    slot at the child's next step), `drain_nowait()`. Closing the iteration cancels."""

    def __init__(self, client: EngineClient, key: int, request_id: str, prompt_tokens: int) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self._client, self._key = client, key
        self._queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self._cancelled = False
        self._engine_done = False
        self._consumer_done = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def _put(self, event: TokenEvent) -> None:
        if self._cancelled or self._engine_done:
            return
        if event.finish_reason is not None:
            self._engine_done = True
        self._queue.put_nowait(event)

    def cancel(self) -> None:
        if self._cancelled or self._engine_done:
            return
        if not self._client._on_loop_thread():
            self._client._call_soon(self.cancel)
            return
        self._cancelled = True
        self._queue.put_nowait(_WAKE)
        self._client._cancel(self._key)

    def _next_event(self, event: TokenEvent) -> TokenEvent | None:
        """`event`, or None when the iteration ends before it (cancelled)."""
        if event is _WAKE or self._cancelled:
            self._consumer_done = True
            return None
        if event.finish_reason is not None:
            self._consumer_done = True
        return event

    def drain_nowait(self) -> list[TokenEvent]:
        out: list[TokenEvent] = []
        while not self._consumer_done and not self._queue.empty():
            event = self._next_event(self._queue.get_nowait())
            if event is None:
                break
            out.append(event)
        return out

    def __aiter__(self) -> ProcessHandle:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._consumer_done or self._cancelled:
            self._consumer_done = True
            raise StopAsyncIteration
        try:
            raw = await self._queue.get()
        except asyncio.CancelledError:
            self.cancel()
            raise
        event = self._next_event(raw)
        if event is None:
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        if not self._consumer_done:
            self.cancel()
        self._consumer_done = True


class EngineClient:
    """The engine in its own process, behind the `EngineLike` surface. Construction spawns the process."""

    def __init__(self, options: EngineOptions, on_exit: Callable[[str], None] | None = None) -> None:
        self.options = options
        self.on_exit = on_exit  # called on the loop with the reason when the child dies (not at shutdown)
        self.max_queued = options.max_queued
        self.max_model_len = 0
        self.vocab_size = 0
        self.num_adapters = 0
        ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
        self._conn, child_conn = ctx.Pipe(duplex=True)
        # The child's own queue allows max_num_seqs more than ours: our estimate counts every unread submission
        # that found no free slot as waiting, so it errs on the side of a 429, never of a rejection in the child.
        child_options = _replace_max_queued(options, options.max_queued + options.max_num_seqs)
        # Not a daemon: torch.compile's workers (and Triton's) are child processes, which a daemon may not have.
        # The child stops when our end of the pipe closes; at exit, whatever shutdown() did not stop is killed.
        self._process = ctx.Process(target=child_main, args=(child_conn, child_options), name="minigpt-engine")
        self._process.start()
        child_conn.close()  # ours is closed: the child's death is an EOF on self._conn
        atexit.register(self._kill_at_exit)
        self._send_lock = threading.Lock()
        self._handles: dict[int, ProcessHandle] = {}
        self._keys = itertools.count()
        self._stats: EngineStats | None = None
        self._stats_changed = threading.Condition()
        self._sent = 0  # submit messages sent
        self._received = 0  # of those, read by the child at its last snapshot
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._closing = False
        self._error: str | None = None  # why the child is gone

    # --- lifecycle --------------------------------------------------------------------------------------
    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until the child has loaded the model (blocking: run it in a worker thread). Raises ConfigError
        with the child's message when loading failed, EngineClosed when it died or did not answer in time."""
        if not self._conn.poll(timeout_s):
            self._kill()
            raise EngineClosed(f"the engine process did not load the model within {timeout_s} s")
        try:
            message = self._conn.recv()
        except (EOFError, OSError):
            self._process.join(5)
            raise EngineClosed(
                f"the engine process exited while loading (exit code {self._process.exitcode})"
            ) from None
        if message[0] == "failed":
            self._process.join(5)
            raise ConfigError(message[1])
        _, info, stats = message
        assert isinstance(info, EngineInfo)
        self.max_model_len, self.vocab_size, self.num_adapters = info.max_model_len, info.vocab_size, info.num_adapters
        self._set_stats(stats, 0)
        logger.info("engine process %d ready", self._process.pid)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver events on `loop` (call it on that loop, once `wait_ready` has returned)."""
        self._loop, self._loop_thread = loop, threading.get_ident()
        loop.add_reader(self._conn.fileno(), self._on_readable)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def error(self) -> str | None:
        """Why the engine process is gone (None while it serves, and after a shutdown)."""
        return self._error

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop the engine process: unfinished requests end "cancelled"; joins it (kills it after `timeout_s`).
        Idempotent. Callable from any thread; the events reach their handles through the loop."""
        if self._closing:
            return
        self._closing = True
        if self._process.is_alive() and self.vocab_size == 0:  # still loading: it reads no message yet
            self._kill()
        if self._process.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self._send(("shutdown",))
            self._process.join(timeout_s)
        if self._process.is_alive():
            logger.warning("the engine process did not stop within %g s: killing it", timeout_s)
            self._kill()
        atexit.unregister(self._kill_at_exit)
        if self._loop is None or self._loop.is_closed():
            self._conn.close()

    def _kill(self) -> None:
        self._process.kill()
        self._process.join(5)

    def _kill_at_exit(self) -> None:
        # before multiprocessing's own exit handler, which would wait for a child nobody told to stop
        if self._process.is_alive():
            self._kill()

    # --- requests ---------------------------------------------------------------------------------------
    def submit(
        self,
        prompt_ids: Iterable[int],
        params: SamplingParams,
        constraint: Constraint | None = None,
        request_id: str | None = None,
        adapter: int = 0,
    ) -> ProcessHandle:
        """Validate now (as `Engine.submit`), send, and return the handle. `constraint` must carry its spec
        (`minigpt_core.engine_api.portable_constraints`): the engine process builds its own from that."""
        if self._loop is None or not self._on_loop_thread():
            raise MiniGPTError("EngineClient.submit must be called on the event loop given to bind()")
        if self._closing or self._error is not None:
            raise EngineClosed(self._error or "the engine has been shut down")
        prompt = validate_request(prompt_ids, params, vocab_size=self.vocab_size, max_model_len=self.max_model_len)
        if isinstance(adapter, bool) or not isinstance(adapter, int) or not 0 <= adapter <= self.num_adapters:
            raise InvalidRequest(f"LoRA adapter {adapter!r} is not one of this engine's {self.num_adapters}")
        spec = spec_of(constraint)
        if self.waiting_estimate() >= self.max_queued:
            raise EngineOverloaded(f"the waiting queue is full ({self.max_queued} requests)")
        key = next(self._keys)
        request_id = request_id or f"req-{uuid.uuid4().hex[:16]}"
        handle = ProcessHandle(self, key, request_id, len(prompt))
        self._send(("submit", key, request_id, prompt, params, spec, adapter))
        self._sent += 1
        self._handles[key] = handle
        return handle

    def waiting_estimate(self) -> int:
        """Requests waiting for a slot, as far as this side knows (see the module docstring)."""
        stats = self._stats
        if stats is None:
            return self._sent
        unread = self._sent - self._received
        return max(0, stats.waiting + unread - (stats.num_slots - stats.running))

    def stats(self) -> EngineStats:
        """The child's last snapshot."""
        assert self._stats is not None, "wait_ready() first"
        return self._stats

    def wait_idle(self, timeout_s: float) -> bool:
        """Block (another thread than the loop's) until a snapshot shows nothing running or waiting."""
        with self._stats_changed:
            return self._stats_changed.wait_for(
                lambda: self._stats is not None and self._stats.running == 0 and self._stats.waiting == 0, timeout_s
            )

    # --- the loop side ----------------------------------------------------------------------------------
    def _on_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _call_soon(self, callback: Callable[[], None]) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback)

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._conn.send(message)

    def _cancel(self, key: int) -> None:
        if self._handles.pop(key, None) is None or self._closing or self._error is not None:
            return
        with contextlib.suppress(OSError, ValueError):  # the child is gone: the reader ends everything
            self._send(("cancel", key))

    def _set_stats(self, stats: EngineStats, received: int) -> None:
        with self._stats_changed:
            self._stats, self._received = stats, received
            self._stats_changed.notify_all()

    def _on_readable(self) -> None:
        """Every message that has arrived (one per engine step), delivered to the handles' queues."""
        conn = self._conn
        try:
            while conn.poll():
                message = conn.recv()
                kind = message[0]
                if kind == "step":
                    self._deliver(message[1])
                    self._set_stats(message[2], message[3])
                elif kind == "stats":
                    self._set_stats(message[1], message[2])
                elif kind == "rejected":
                    handle = self._handles.pop(message[1], None)
                    if handle is not None:
                        handle._put(TokenEvent(None, None, None, "error", error=message[2]))
                elif kind == "bye":
                    self._closing = True
        except (EOFError, OSError):
            self._on_eof()

    def _deliver(self, events: list[tuple[Any, ...]]) -> None:
        handles = self._handles
        for key, token_id, logprob, top, finish, error, cached in events:
            handle = handles.get(key)
            if handle is None:  # cancelled here meanwhile
                continue
            if finish is not None:
                del handles[key]
            handle._put(TokenEvent(token_id, logprob, top, finish, error, cached))

    def _on_eof(self) -> None:
        """The child has gone: end every request in flight (an error unless we asked it to stop)."""
        assert self._loop is not None
        self._loop.remove_reader(self._conn.fileno())
        self._process.join(5)
        reason = f"the engine process exited (exit code {self._process.exitcode})"
        handles, self._handles = self._handles, {}
        event = TokenEvent(None, None, None, "cancelled" if self._closing else "error", error=reason)
        for handle in handles.values():
            handle._put(event)
        self._conn.close()
        if self._closing:
            return
        self._error = reason
        logger.error("%s; %d request(s) in flight ended with an error", reason, len(handles))
        with self._stats_changed:
            self._stats_changed.notify_all()
        if self.on_exit is not None:
            self.on_exit(reason)


def _replace_max_queued(options: EngineOptions, max_queued: int) -> EngineOptions:
    import dataclasses

    return dataclasses.replace(options, max_queued=max_queued)
