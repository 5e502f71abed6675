"""The generation runner: engine handles -> `ChoiceDelta`s, the one code path under stream and non-stream.

For each choice it iterates the engine's TokenEvents, feeds the token ids to an `OutputParser` (which routes
text into reasoning / content / tool calls and holds back partial UTF-8 and partial stop strings), attaches
log-probabilities, counts tokens and records latency metrics. Choices of one request (`n`, or several
prompts) run as tasks merged into one async iterator. Closing that iterator (client gone, error) cancels every
engine request, which frees their slots. It does not format anything for the wire: see `server.streaming`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from minigpt_core import output_parser as op
from minigpt_core.errors import EngineClosed, EngineOverloaded, InvalidRequest, MiniGPTError
from server.metrics import Metrics

if TYPE_CHECKING:
    from minigpt_core.constraints import Constraint
    from minigpt_core.engine_api import EngineLike, HandleLike
    from minigpt_core.request import TokenEvent
    from minigpt_core.sampling import SamplingParams

logger = logging.getLogger(__name__)

_ID_ALPHABET = string.ascii_letters + string.digits


def tool_call_id() -> str:
    """OpenAI-style call id: "call_" + 24 random alphanumerics."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class ChoiceDelta:
    """What one engine step added to one choice. Text fields are safe to show (stops already removed)."""

    index: int
    reasoning: str = ""
    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # OpenAI streaming tool-call deltas
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the engine took from its prefix cache (on the first delta)

    def has_output(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls or self.finish_reason)


@dataclass(frozen=True)
class ChoiceJob:
    """One submitted engine request and the parser that reads its tokens."""

    index: int
    handle: HandleLike
    parser: op.OutputParser
    thinking: bool = False
    single_tool_call: bool = False


class _ChoiceState:
    def __init__(self, job: ChoiceJob, metrics: Metrics | None, started: float, logprobs: bool = True) -> None:
        self.job = job
        self.metrics = metrics
        self.logprobs = logprobs  # the engine sends every token's logprob; keep them only when they are shown
        self.started = started
        self.last_token: float | None = None
        self.reasoning_seen = 0
        self.saw_tool_call = False

    def observe_arrival(self, tokens: int) -> None:
        """Timing metrics for `tokens` tokens that arrived together (the engine sends K decode steps at once):
        the first token of a request gives the TTFT; later chunks spread their gap evenly over their tokens, so
        the inter-token histogram shows the token rate, not seven zeros and one K-step gap."""
        if tokens == 0:
            return
        now = time.perf_counter()
        if self.metrics is not None:
            if self.last_token is None:
                self.metrics.observe_ttft(now - self.started)
                if tokens > 1:
                    self.metrics.observe_itl(0.0, tokens - 1)
            else:
                self.metrics.observe_itl((now - self.last_token) / tokens, tokens)
        self.last_token = now

    def observe_tokens(self, delta: ChoiceDelta, events: Sequence[TokenEvent], taken: int) -> None:
        """Count the first `taken` token events of a batch into `delta`, with their logprobs."""
        delta.completion_tokens += taken
        first = events[0]
        if first.cached_tokens:  # only a request's first token carries it
            delta.cached_tokens = max(delta.cached_tokens, first.cached_tokens)
        if first.logprob is None or not self.logprobs:
            return
        for event in events[:taken]:
            assert event.token_id is not None and event.logprob is not None  # token events only
            top = [(int(t), float(lp)) for t, lp in (event.top_logprobs or [])]
            delta.logprobs.append(TokenLogprob(int(event.token_id), float(event.logprob), top))

    def apply(self, delta: ChoiceDelta, segments: Sequence[Any]) -> bool:
        """Fold parser segments into `delta`; True when this choice must stop (stop string, call limit)."""
        counted = self.job.parser.reasoning_tokens
        delta.reasoning_tokens += counted - self.reasoning_seen
        self.reasoning_seen = counted
        for seg in segments:
            if isinstance(seg, op.Reasoning):
                delta.reasoning += seg.text
            elif isinstance(seg, op.Content):
                delta.content += seg.text
            elif isinstance(seg, op.ToolCallStart):
                self.saw_tool_call = True
                delta.tool_calls.append(
                    {
                        "index": seg.index,
                        "id": tool_call_id(),
                        "type": "function",
                        "function": {"name": seg.name, "arguments": ""},
                    }
                )
            elif isinstance(seg, op.ToolCallArgs):
                delta.tool_calls.append({"index": seg.index, "function": {"arguments": seg.fragment}})
            elif isinstance(seg, op.ToolCallEnd):
                if self.job.single_tool_call:
                    return True
            elif isinstance(seg, op.Finished):
                return True
        return False

    def finish_reason(self, engine_reason: str | None) -> str:
        if self.saw_tool_call and engine_reason in (None, "stop"):
            return "tool_calls"
        return engine_reason or "stop"


async def run_choice(job: ChoiceJob, metrics: Metrics | None, *, logprobs: bool = True) -> AsyncIterator[ChoiceDelta]:
    """Deltas for one choice; the last one carries `finish_reason`. Always cancels the engine request.

    Tokens that arrived together (the engine posts K decode steps at once; more pile up while the loop is busy)
    are handled as one batch: one parser call, one delta, so one SSE event under load. Tokens after the one
    that ended the output (a stop string, a single tool call's end) are neither shown nor counted."""
    state = _ChoiceState(job, metrics, time.perf_counter(), logprobs)
    handle, parser = job.handle, job.parser
    try:
        async for first in handle:
            events = [first, *handle.drain_nowait()]
            last = events[-1]  # a finish event is always the last of its batch
            if last.finish_reason == "error":
                raise MiniGPTError(f"generation failed: {last.error or 'engine error'}")
            if last.finish_reason == "cancelled":  # not by us (we stop iterating first): engine shut down
                raise EngineClosed("generation was cancelled: the server is shutting down")
            if last.token_id is None:  # only a finish event may carry no token
                events.pop()
            ids = [event.token_id for event in events if event.token_id is not None]
            delta = ChoiceDelta(job.index)
            if ids:
                state.observe_arrival(len(ids))
                segments, taken = parser.push_many(ids, stop_at_call_end=job.single_tool_call)
                state.observe_tokens(delta, events, taken)
                if state.apply(delta, segments):
                    delta.finish_reason = state.finish_reason(None)
                    yield delta
                    return
            if last.finish_reason is not None:
                stopped = state.apply(delta, parser.finish())
                delta.finish_reason = state.finish_reason(None if stopped else last.finish_reason)
                yield delta
                return
            if delta.has_output() or delta.completion_tokens:  # tokens with no text yet still count in usage
                yield delta
        # The handle ended without a finish reason (engine shut down): close the choice cleanly.
        delta = ChoiceDelta(job.index)
        state.apply(delta, parser.finish())
        delta.finish_reason = state.finish_reason(None)
        yield delta
    finally:
        handle.cancel()


_DONE = object()


def merge_choices(
    jobs: Sequence[ChoiceJob], metrics: Metrics | None, *, logprobs: bool = True
) -> AsyncIterator[ChoiceDelta]:
    """Interleave the deltas of every choice as they come; an error in any choice ends them all. `logprobs`: the
    deltas carry each token's logprobs (off when the response does not show them)."""
    if len(jobs) == 1:  # the common case: no pump task, queue hop or generator layer per delta
        return run_choice(jobs[0], metrics, logprobs=logprobs)
    return _merge(jobs, metrics, logprobs)


async def _merge(jobs: Sequence[ChoiceJob], metrics: Metrics | None, logprobs: bool) -> AsyncIterator[ChoiceDelta]:
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump(job: ChoiceJob) -> None:
        try:
            async for delta in run_choice(job, metrics, logprobs=logprobs):
                await queue.put(delta)
            await queue.put(_DONE)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await queue.put(exc)

    tasks = [asyncio.create_task(pump(job)) for job in jobs]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is _DONE:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for job in jobs:
            job.handle.cancel()


# A submission that finds the queue full first lets the event loop turn this many times, retrying after each:
# clients that hung up just before (a burst of abandoned streams) are noticed a few turns after their
# connections close (uvicorn's disconnect -> the response's watcher wakes -> its engine requests are cancelled),
# and until then their dead requests fill the queue. Turns, not a timed wait: a truly full queue still gets its
# 429 within microseconds.
OVERLOAD_RETRY_TURNS = 8


async def submit_all(
    engine: EngineLike,
    prompts: Sequence[tuple[int, list[int], SamplingParams]],
    request_id: str,
    make_parser: Callable[[], op.OutputParser],
    *,
    make_constraint: Callable[[], Constraint | None] | None = None,
    thinking: bool = False,
    single_tool_call: bool = False,
    param: str = "n",
) -> list[ChoiceJob]:
    """Submit (index, prompt_ids, params) triples before the first byte, so errors are still plain 4xx.

    All or nothing: if one submission fails (queue full, bad params) the ones already made are cancelled. More
    choices than the engine's waiting queue holds can never be taken at once: that is an InvalidRequest (400,
    naming `param`), not a 429 to retry. A full queue is retried for a few event-loop turns before the 429.
    """
    capacity = engine.max_queued
    if len(prompts) > capacity:
        raise InvalidRequest(
            f"this request asks for {len(prompts)} completions, more than the server can queue at once "
            f"({capacity}); send at most {capacity} completions (prompts x n) per request",
            param,
        )
    turns = 0
    while True:
        try:
            return _submit_once(engine, prompts, request_id, make_parser, make_constraint, thinking, single_tool_call)
        except EngineOverloaded:
            if turns >= OVERLOAD_RETRY_TURNS:
                raise
        turns += 1
        await asyncio.sleep(0)  # one loop turn: pending disconnects cancel their requests


def _submit_once(
    engine: EngineLike,
    prompts: Sequence[tuple[int, list[int], SamplingParams]],
    request_id: str,
    make_parser: Callable[[], op.OutputParser],
    make_constraint: Callable[[], Constraint | None] | None,
    thinking: bool,
    single_tool_call: bool,
) -> list[ChoiceJob]:
    jobs: list[ChoiceJob] = []
    try:
        for index, prompt_ids, params in prompts:
            constraint = make_constraint() if make_constraint is not None else None
            handle = engine.submit(prompt_ids, params, constraint=constraint, request_id=f"{request_id}-{index}")
            jobs.append(ChoiceJob(index, handle, make_parser(), thinking, single_tool_call))
    except BaseException:
        for job in jobs:
            job.handle.cancel()
        raise
    return jobs
