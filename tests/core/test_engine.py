"""Tests for the continuous-batching engine: correctness, limits, cancellation, errors; real tiny models, real
threads, no mocks. The scheduler's own steps are in test_scheduler.py, prefix caching in test_prefix_cache.py and
the constraints in test_constraints.py."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from minigpt_core.config import ModelConfig
from minigpt_core.constraints import AllOf, ThinkBudget
from minigpt_core.engine import Engine, TokenEvent
from minigpt_core.errors import ContextLengthExceeded, EngineClosed, EngineOverloaded, InvalidRequest
from minigpt_core.kv_cache import KVCache
from minigpt_core.model import MiniGPT
from minigpt_core.request import Request
from minigpt_core.sampling import RequestSampler, SamplingParams
from minigpt_core.scheduler import Scheduler
from minigpt_core.tokenizer import THINK_END_ID
from tests.core.engine_helpers import (
    GREEDY,
    V,
    collect,
    naive_greedy,
    prompts,
    tokens_of,
)

# --- correctness --------------------------------------------------------------------------------------


def test_greedy_matches_full_recompute(engine: Engine, model: MiniGPT) -> None:
    for prompt in prompts(4):  # lengths 3..18 with prefill_chunk 8: one to three prefill chunks
        events = list(engine.generate(prompt, GREEDY))
        assert tokens_of(events) == naive_greedy(model, prompt, GREEDY.max_new_tokens)
        assert [ev.finish_reason for ev in events] == [None] * 11 + ["length"]
        assert all(ev.logprob is not None and ev.logprob <= 0 for ev in events)


def test_sixteen_concurrent_equal_sixteen_sequential(engine: Engine) -> None:
    ps = prompts(16)
    params = [SamplingParams(temperature=0.0, max_new_tokens=6 + i % 9, ignore_eos=True) for i in range(16)]
    sequential = [tokens_of(list(engine.generate(p, sp))) for p, sp in zip(ps, params, strict=True)]

    async def concurrent() -> list[list[TokenEvent]]:
        handles = [engine.submit(p, sp) for p, sp in zip(ps, params, strict=True)]
        return await asyncio.gather(*(collect(h) for h in handles))

    steps = engine.stats().steps_total
    results = asyncio.run(concurrent())
    assert [tokens_of(r) for r in results] == sequential
    assert engine.stats().steps_total - steps < sum(sp.max_new_tokens for sp in params) / 3  # really batched
    assert [len(t) for t in sequential] == [sp.max_new_tokens for sp in params]
    assert engine.stats().running == 0


def test_seeded_sampling_is_reproducible_and_batch_invariant(engine: Engine) -> None:
    prompt = prompts(1)[0]
    sp = SamplingParams(temperature=1.0, seed=1234, max_new_tokens=20, ignore_eos=True)
    first = tokens_of(list(engine.generate(prompt, sp)))

    async def with_neighbours() -> list[TokenEvent]:
        others = [engine.submit(p, GREEDY) for p in prompts(5)]
        mine = engine.submit(prompt, sp)
        result = await collect(mine)
        await asyncio.gather(*(collect(h) for h in others))
        return result

    assert tokens_of(asyncio.run(with_neighbours())) == first
    other_seed = tokens_of(list(engine.generate(prompt, SamplingParams(temperature=1.0, seed=99, max_new_tokens=20))))
    assert other_seed != first


def test_stop_tokens_eos_and_length(engine: Engine, model: MiniGPT) -> None:
    prompt = prompts(3)[2]
    expected = naive_greedy(model, prompt, 12)
    stop_id = expected[4]
    events = list(
        engine.generate(prompt, SamplingParams(temperature=0.0, max_new_tokens=20, stop_token_ids=(stop_id,)))
    )
    assert tokens_of(events) == expected[: expected.index(stop_id) + 1]
    assert events[-1].finish_reason == "stop" and events[-1].token_id == stop_id
    # The same id as an EOS of the engine stops too, unless ignore_eos.
    eos_engine = Engine(model, max_num_seqs=2, eos_token_ids=(stop_id,))
    with eos_engine:
        assert tokens_of(
            list(eos_engine.generate(prompt, SamplingParams(temperature=0.0, max_new_tokens=20)))
        ) == tokens_of(events)
        free = list(eos_engine.generate(prompt, SamplingParams(temperature=0.0, max_new_tokens=12, ignore_eos=True)))
        assert tokens_of(free) == expected and free[-1].finish_reason == "length"


def test_context_end_is_length(model: MiniGPT) -> None:
    with Engine(model, max_num_seqs=1, max_model_len=20) as eng:
        events = list(
            eng.generate(list(range(9, 19)), SamplingParams(temperature=0.0, max_new_tokens=10, ignore_eos=True))
        )
        assert len(events) == 10 and events[-1].finish_reason == "length"


# --- validation and limits ----------------------------------------------------------------------------


def test_validation_errors(engine: Engine) -> None:
    with pytest.raises(InvalidRequest, match="empty"):
        engine.submit([], GREEDY)
    with pytest.raises(InvalidRequest, match="vocabulary"):
        engine.submit([5, V], GREEDY)
    with pytest.raises(InvalidRequest, match="vocabulary"):
        engine.submit([-1], GREEDY)
    with pytest.raises(InvalidRequest):
        engine.submit([10], SamplingParams(temperature=-1.0))
    with pytest.raises(ContextLengthExceeded) as info:
        engine.submit(list(range(9, 109)), SamplingParams(max_new_tokens=29))
    assert (info.value.prompt_tokens, info.value.max_new_tokens, info.value.max_model_len) == (100, 29, 128)
    assert "128" in str(info.value)
    engine.submit(list(range(9, 109)), SamplingParams(max_new_tokens=28)).cancel()  # exactly fits


def test_queue_bound_raises_overloaded(model: MiniGPT) -> None:
    eng = Engine(model, max_num_seqs=1, max_queued=2)
    try:
        handles = [eng.submit([10, 11], GREEDY) for _ in range(2)]  # not started: both wait
        with pytest.raises(EngineOverloaded):
            eng.submit([10, 11], GREEDY)
        assert eng.stats().waiting == 2
        handles[0].cancel()  # a cancelled waiting request no longer counts
        assert eng.stats().waiting == 1
        eng.start()
        events = list(handles[1])
        assert len(events) == GREEDY.max_new_tokens and events[-1].finish_reason == "length"
        assert list(handles[0]) == []
    finally:
        eng.shutdown()
    with pytest.raises(EngineClosed):
        eng.submit([10, 11], GREEDY)


def test_a_full_queue_drops_cancelled_requests_before_refusing(model: MiniGPT) -> None:
    """Requests whose client has gone leave the queue on the next submit, whatever the engine thread is doing."""
    eng = Engine(model, max_num_seqs=1, max_queued=3)  # not started: nothing but submit() can clear the queue
    try:
        dead = [eng.submit([10, 11], GREEDY) for _ in range(3)]
        for handle in dead:
            handle.cancel()
        alive = eng.submit([10, 11], GREEDY)  # was EngineOverloaded: three cancelled requests held every place
        others = [eng.submit([10, 11], GREEDY) for _ in range(2)]
        with pytest.raises(EngineOverloaded):  # live requests still count
            eng.submit([10, 11], GREEDY)
        eng.start()
        for handle in (alive, *others):
            events = list(handle)
            assert len(events) == GREEDY.max_new_tokens and events[-1].finish_reason == "length"
        assert all(list(handle) == [] for handle in dead)
    finally:
        eng.shutdown()


# --- cancellation --------------------------------------------------------------------------------------


def test_cancel_frees_the_slot_within_one_step(engine: Engine) -> None:
    long = SamplingParams(temperature=0.0, max_new_tokens=100, ignore_eos=True)

    async def main() -> None:
        handles = [engine.submit(p, long) for p in prompts(3)]
        first = [await h.__anext__() for h in handles]
        assert all(ev.finish_reason is None for ev in first)
        steps = engine.stats().steps_total
        handles[0].cancel()
        handles[0].cancel()  # idempotent
        await handles[1].aclose()
        task = asyncio.create_task(collect(handles[2]))
        await asyncio.sleep(0)
        task.cancel()  # a consumer task cancelled mid-iteration cancels its request
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.to_thread(engine.wait_idle, 5)
        assert engine.stats().steps_total - steps <= 3
        assert [ev async for ev in handles[0]] == []

    asyncio.run(main())
    assert engine.stats().finished_total.get("cancelled", 0) >= 3


def test_closing_blocking_generate_cancels(engine: Engine) -> None:
    stream = engine.generate(prompts(1)[0], SamplingParams(temperature=0.0, max_new_tokens=100, ignore_eos=True))
    assert next(stream).finish_reason is None
    stream.close()  # type: ignore[attr-defined]
    assert engine.wait_idle(5)
    assert engine.stats().kv_tokens_used == 0
    idle_steps = engine.stats().steps_total
    time.sleep(0.05)
    assert engine.stats().steps_total == idle_steps  # idle: asleep on the Condition, no busy loop


def test_wait_idle_returns_when_the_last_request_ends(engine: Engine) -> None:
    """`wait_idle` is False while a request runs (the timeout passes) and True once it has been cancelled."""
    assert engine.wait_idle(0)  # nothing submitted
    stream = engine.generate(prompts(1)[0], SamplingParams(temperature=0.0, max_new_tokens=100, ignore_eos=True))
    assert next(stream).finish_reason is None
    assert not engine.wait_idle(0.01)
    stream.close()  # type: ignore[attr-defined]
    assert engine.wait_idle(5)
    assert engine.stats().running == 0 and engine.stats().kv_tokens_used == 0


def test_shutdown_cancels_running_requests(model: MiniGPT) -> None:
    eng = Engine(model, max_num_seqs=1)
    eng.start()
    stream = eng.generate([10, 11, 12], SamplingParams(temperature=0.0, max_new_tokens=100, ignore_eos=True))
    queued = eng.generate([10, 11, 12], GREEDY)
    assert next(stream).finish_reason is None
    eng.shutdown()
    assert [ev for ev in stream][-1].finish_reason == "cancelled"
    assert [ev.finish_reason for ev in queued] == ["cancelled"]


# --- errors and constraints ----------------------------------------------------------------------------


class Exploding:
    """A user-supplied constraint that fails after a few tokens."""

    def __init__(self, after: int) -> None:
        self.after, self.seen = after, 0

    def allowed(self) -> torch.Tensor | None:
        if self.seen >= self.after:
            raise RuntimeError("boom")
        return None

    def advance(self, token_id: int) -> None:
        self.seen += 1

    def is_finished(self) -> bool:
        return False


def test_errors_end_only_their_request_and_the_thread_survives(engine: Engine) -> None:
    async def main() -> tuple[list[TokenEvent], list[TokenEvent], list[TokenEvent]]:
        healthy = engine.submit(prompts(1)[0], GREEDY)
        bad = engine.submit([10, 11], GREEDY, constraint=Exploding(after=3))
        empty = engine.submit([10, 11], GREEDY, constraint=AllOf([ThinkBudget(0, THINK_END_ID, vocab_size=V + 1)]))
        return await collect(healthy), await collect(bad), await collect(empty)

    healthy, bad, empty = asyncio.run(main())
    assert len(healthy) == GREEDY.max_new_tokens and healthy[-1].finish_reason == "length"
    assert len(bad) == 4 and bad[-1].finish_reason == "error" and "boom" in (bad[-1].error or "")
    assert [ev.finish_reason for ev in empty] == ["error"]  # a mask of the wrong shape
    assert len(list(engine.generate([10, 11], GREEDY))) == GREEDY.max_new_tokens  # still serving
    assert engine.stats().finished_total["error"] == 2


def test_dense_decode_path_gives_the_same_greedy_tokens() -> None:
    """The GPU decode layout (row b = slot b, bucketed shapes, batched sampling) on CPU, against the default."""
    torch.manual_seed(0)
    model = MiniGPT(ModelConfig(vocab_size=97, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, ffn_dim=128)).eval()
    prompts = [[5 + i, 7, 9 + 2 * i, 11] * (i + 1) for i in range(5)]
    params = SamplingParams(temperature=0.0, max_new_tokens=12, ignore_eos=True)

    def run(dense: bool) -> list[list[int]]:
        engine = Engine(model, max_num_seqs=4, max_model_len=128)
        engine._scheduler.dense_decode = dense
        with engine:
            streams = [engine.generate(p, params) for p in prompts]
            return [[ev.token_id for ev in s if ev.token_id is not None] for s in streams]

    assert run(True) == run(False)


@pytest.mark.usefixtures("one_thread")  # the last test here: 7 rows x 30 tiny steps, intra-op threads only spin
def test_one_failing_row_does_not_fail_its_decode_batch(model: MiniGPT) -> None:
    """A row whose sampling raises inside the batched sampler ends alone; the rest of its batch goes on.

    The scheduler runs on this thread, so the poisoned row is known to share every decode step with the six
    healthy ones. Its slot's cache is filled with NaN (what a numerical blow-up confined to one sequence gives):
    its logits become NaN, the batched `torch.multinomial` raises for the whole batch, and only the row-by-row
    retry can tell that one row from the others.
    """
    long = SamplingParams(temperature=0.0, max_new_tokens=30, ignore_eos=True)
    hot = SamplingParams(temperature=1.0, max_new_tokens=30, ignore_eos=True)
    sched = Scheduler(
        model,
        KVCache(model.config, 8, 128),
        max_model_len=128,
        prefill_chunk=64,
        eos_token_ids=(),
        device=torch.device("cpu"),
    )
    events: dict[str, list[TokenEvent]] = {}

    def admit(name: str, prompt: list[int], params: SamplingParams) -> Request:
        seq = Request(
            name,
            prompt,
            params,
            RequestSampler(params, prompt),
            None,
            events.setdefault(name, []).append,
            lambda: False,
        )
        sched.admit(seq)
        return seq

    healthy = [admit(f"healthy-{i}", p, long) for i, p in enumerate(prompts(6))]
    poisoned = admit("poisoned", [10, 11, 12], hot)
    with torch.inference_mode():
        while not all(seq.prefilled for seq in sched.running):  # one prefill per step, decoding the others
            sched.step()
        assert poisoned.num_generated == 1 and not poisoned.finished
        for layer_k in sched.cache.k:
            layer_k[poisoned.slot] = float("nan")
        while sched.running:
            sched.step()
    assert [ev.finish_reason for ev in events["poisoned"]] == [None, "error"]
    for seq, prompt in zip(healthy, prompts(6), strict=True):
        got = events[seq.request_id]
        assert [ev.finish_reason for ev in got] == [None] * 29 + ["length"], seq.request_id
        assert tokens_of(got) == naive_greedy(model, prompt, 30)
