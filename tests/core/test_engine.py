"""Tests for the continuous-batching engine and the constraints: real tiny models, real threads, no mocks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import torch

from minigpt_core.config import ModelConfig
from minigpt_core.constraints import AllOf, ThinkBudget, prompt_ends_inside_think
from minigpt_core.engine import Engine, RequestHandle, TokenEvent
from minigpt_core.errors import ContextLengthExceeded, EngineClosed, EngineOverloaded, InvalidRequest
from minigpt_core.kv_cache import KVCache
from minigpt_core.model import MiniGPT
from minigpt_core.prompting import with_think_budget
from minigpt_core.request import Request
from minigpt_core.sampling import RequestSampler, SamplingParams
from minigpt_core.scheduler import Scheduler
from minigpt_core.tokenizer import IM_END_ID, THINK_END_ID, THINK_ID

V = 256
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def model() -> MiniGPT:
    torch.manual_seed(0)
    # A larger init spread than training uses, so greedy logits are well separated.
    config = ModelConfig(
        vocab_size=V, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, ffn_dim=128, max_seq_len=128, init_std=0.3
    )
    return MiniGPT(config).eval()


@pytest.fixture
def engine(model: MiniGPT) -> Iterator[Engine]:
    # Small prefill chunks and kv_len buckets, so tests cross chunk and bucket boundaries.
    eng = Engine(model, max_num_seqs=16, prefill_chunk=8, kv_len_bucket=16)
    eng.start()
    yield eng
    eng.shutdown()


def prompts(n: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(9, V, (3 + (5 * i) % 23,), generator=g).tolist() for i in range(n)]


def tokens_of(events: list[TokenEvent]) -> list[int]:
    return [ev.token_id for ev in events if ev.token_id is not None]


def naive_greedy(model: MiniGPT, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            logits = model(torch.tensor([ids]))  # full recompute, no cache
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


async def collect(handle: RequestHandle) -> list[TokenEvent]:
    return [ev async for ev in handle]


def wait_until(cond: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)


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
        await asyncio.to_thread(wait_until, lambda: engine.stats().running == 0)
        assert engine.stats().steps_total - steps <= 3
        assert [ev async for ev in handles[0]] == []

    asyncio.run(main())
    assert engine.stats().finished_total.get("cancelled", 0) >= 3


def test_closing_blocking_generate_cancels(engine: Engine) -> None:
    stream = engine.generate(prompts(1)[0], SamplingParams(temperature=0.0, max_new_tokens=100, ignore_eos=True))
    assert next(stream).finish_reason is None
    stream.close()  # type: ignore[attr-defined]
    wait_until(lambda: engine.stats().running == 0)
    assert engine.stats().kv_tokens_used == 0
    idle_steps = engine.stats().steps_total
    time.sleep(0.05)
    assert engine.stats().steps_total == idle_steps  # idle: asleep on the Condition, no busy loop


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


def test_think_budget_is_exact() -> None:
    budget = ThinkBudget(2, THINK_END_ID, vocab_size=10)
    assert budget.allowed() is None
    budget.advance(20)
    budget.advance(21)
    mask = budget.allowed()
    assert mask is not None and mask.tolist() == [i == THINK_END_ID for i in range(10)]
    budget.advance(THINK_END_ID)
    assert budget.allowed() is None and not budget.is_finished()
    outside = ThinkBudget(0, THINK_END_ID, vocab_size=10, think_id=THINK_ID, inside=False)
    assert outside.allowed() is None
    outside.advance(THINK_ID)
    assert outside.allowed() is not None
    assert prompt_ends_inside_think([1, THINK_ID, 9], THINK_ID, THINK_END_ID)
    assert not prompt_ends_inside_think([THINK_ID, 9, THINK_END_ID, 9], THINK_ID, THINK_END_ID)
    with pytest.raises(InvalidRequest):
        ThinkBudget(-1, THINK_END_ID, vocab_size=10)


def test_engine_applies_think_budget(engine: Engine) -> None:
    # the budget reaches the engine as a constraint (minigpt_core.prompting builds it for every chat caller)
    for n in (0, 3):
        sp = SamplingParams(temperature=0.0, max_new_tokens=10, ignore_eos=True)
        prompt = [20, 21, THINK_ID]
        budget = with_think_budget(None, prompt, n, vocab_size=engine.vocab_size)
        tokens = tokens_of(list(engine.generate(prompt, sp, budget)))
        assert THINK_END_ID in tokens[: n + 1]
        assert THINK_END_ID not in tokens[: tokens.index(THINK_END_ID)]


def test_forced_think_close_bans_ending_the_turn_for_a_few_tokens() -> None:
    budget = ThinkBudget(1, THINK_END_ID, vocab_size=10, stop_ids=(IM_END_ID,), min_answer_tokens=2)
    budget.advance(7)
    budget.advance(THINK_END_ID)  # forced: the budget of 1 was spent
    for _ in range(2):
        mask = budget.allowed()
        assert mask is not None and not mask[IM_END_ID] and int(mask.sum()) == 9
        budget.advance(7)
    assert budget.allowed() is None
    natural = ThinkBudget(5, THINK_END_ID, vocab_size=10, stop_ids=(IM_END_ID,), min_answer_tokens=2)
    natural.advance(7)
    natural.advance(THINK_END_ID)  # the model closed the block itself: it may end at once
    assert natural.allowed() is None
    with pytest.raises(ValueError):
        ThinkBudget(1, THINK_END_ID, vocab_size=10, min_answer_tokens=-1)


def test_engine_answers_after_a_forced_think_close(engine: Engine) -> None:
    # The bias makes the model want to end the turn at every step; after the forced </think> it may not do so
    # for three tokens, so the answer is not empty. Without a budget it ends at once, as asked.
    eager_end = ((IM_END_ID, 100.0),)
    forced = SamplingParams(temperature=0.0, max_new_tokens=10, logit_bias=eager_end)
    budget = with_think_budget(None, [20, 21, THINK_ID], 0, vocab_size=engine.vocab_size)
    tokens = tokens_of(list(engine.generate([20, 21, THINK_ID], forced, budget)))
    assert tokens[0] == THINK_END_ID and IM_END_ID not in tokens[1:4] and tokens[4] == IM_END_ID
    free = SamplingParams(temperature=0.0, max_new_tokens=10, logit_bias=eager_end)
    assert tokens_of(list(engine.generate([20, 21, THINK_ID], free))) == [IM_END_ID]


def test_all_of_intersects_masks() -> None:
    class Only:
        def __init__(self, ids: list[int]) -> None:
            self.mask = torch.zeros(8, dtype=torch.bool)
            self.mask[ids] = True

        def allowed(self) -> torch.Tensor | None:
            return self.mask

        def advance(self, token_id: int) -> None:
            pass

        def is_finished(self) -> bool:
            return True

    both = AllOf([Only([1, 2, 3]), Only([2, 3, 4])])
    mask = both.allowed()
    assert mask is not None and mask.nonzero().flatten().tolist() == [2, 3]
    assert both.is_finished()
    assert AllOf([]).allowed() is None and not AllOf([]).is_finished()


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


# --- engine v2: batched prefill, K-step decode, slot compaction ------------------------------------------


def exact_engine(model: MiniGPT, **kw: object) -> Engine:
    """kv_len fixed at the slot size: every step has the same shapes whatever K is, so tokens compare exactly."""
    return Engine(model, max_num_seqs=8, max_model_len=128, kv_len_bucket=128, **kw)  # type: ignore[arg-type]


def run_all(engine: Engine, ps: list[list[int]], params: list[SamplingParams]) -> list[list[TokenEvent]]:
    async def go() -> list[list[TokenEvent]]:
        handles = [engine.submit(p, sp) for p, sp in zip(ps, params, strict=True)]
        return await asyncio.gather(*(collect(h) for h in handles))

    return asyncio.run(go())


def test_k_step_decode_equals_one_step_token_for_token(model: MiniGPT) -> None:
    """Greedy output with K=8 equals K=1: same tokens, logprobs, finish reasons; stops inside a K-step call
    end the request at the stop token, and the tokens computed past it are neither emitted nor counted."""
    ps = prompts(8)
    reference = naive_greedy(model, ps[2], 30)
    stop_id = reference[10]  # hit in the middle of the second 8-step call
    params = [SamplingParams(temperature=0.0, max_new_tokens=3 + 5 * i, ignore_eos=True) for i in range(8)]
    params[2] = SamplingParams(temperature=0.0, max_new_tokens=30, stop_token_ids=(stop_id,))
    params[5] = SamplingParams(temperature=0.0, max_new_tokens=30, logprobs=True, logit_bias=((7, 5.0),))
    results = {}
    for k in (1, 8):
        with exact_engine(model, decode_steps=k) as engine:
            results[k] = run_all(engine, ps, params)
            stats = engine.stats()
            results[k].append([TokenEvent(stats.generation_tokens_total, None, None, None)])
    one, eight = results[1], results[8]
    assert [tokens_of(r) for r in eight] == [tokens_of(r) for r in one]
    assert [[ev.finish_reason for ev in r] for r in eight] == [[ev.finish_reason for ev in r] for r in one]
    assert tokens_of(eight[2]) == reference[: reference.index(stop_id) + 1]
    assert eight[2][-1].finish_reason == "stop"
    for a, b in zip(one[5], eight[5], strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-5)
    assert eight[-1][0].token_id == one[-1][0].token_id == sum(len(tokens_of(r)) for r in one[:-1])


def test_k_step_decode_runs_fewer_steps(model: MiniGPT) -> None:
    params = SamplingParams(temperature=0.0, max_new_tokens=40, ignore_eos=True)
    steps = {}
    for k in (1, 8):
        with exact_engine(model, decode_steps=k) as engine:
            events = list(engine.generate(prompts(1)[0], params))
            steps[k] = engine.stats().steps_total
            assert len(tokens_of(events)) == 40
    assert steps[8] <= steps[1] / 4


def scheduler_for(model: MiniGPT, slots: int, **kw: object) -> tuple[Scheduler, dict[str, list[TokenEvent]]]:
    sched = Scheduler(
        model,
        KVCache(model.config, slots, 128),
        max_model_len=128,
        prefill_chunk=kw.pop("prefill_chunk", 64),  # type: ignore[arg-type]
        eos_token_ids=(),
        device=torch.device("cpu"),
        **kw,  # type: ignore[arg-type]
    )
    return sched, {}


def admit(
    sched: Scheduler, events: dict[str, list[TokenEvent]], name: str, prompt: list[int], sp: SamplingParams
) -> Request:
    emit = events.setdefault(name, []).append
    seq = Request(name, prompt, sp, RequestSampler(sp, prompt), None, emit, lambda: False)
    sched.admit(seq)
    return seq


def test_waiting_prompts_share_one_prefill_forward(model: MiniGPT) -> None:
    """Six prompts of different lengths are prefilled in ONE step (one padded forward), each row's first token
    taken from its own last real position; a token budget splits a wave over steps."""
    sched, events = scheduler_for(model, 8)
    ps = prompts(6)
    seqs = [admit(sched, events, f"r{i}", p, GREEDY) for i, p in enumerate(ps)]
    with torch.inference_mode():
        sched.step()
        assert all(seq.prefilled and seq.num_generated == 1 for seq in seqs)
        while sched.running:
            sched.step()
    for i, p in enumerate(ps):
        assert tokens_of(events[f"r{i}"]) == naive_greedy(model, p, GREEDY.max_new_tokens)

    small, events2 = scheduler_for(model, 8, prefill_chunk=8, max_prefill_tokens=16)
    seqs = [admit(small, events2, f"r{i}", p, GREEDY) for i, p in enumerate(ps)]
    with torch.inference_mode():
        small.step()
        assert 1 <= sum(seq.num_cached > 0 for seq in seqs) < 6  # the budget let only some in
        while small.running:
            small.step()
    assert [tokens_of(events2[f"r{i}"]) for i in range(6)] == [tokens_of(events[f"r{i}"]) for i in range(6)]


def test_dense_slots_are_compacted_when_the_batch_shrinks(model: MiniGPT) -> None:
    """The request left in the highest slot moves down once the others finish, so steps shrink to its bucket;
    its tokens are unchanged by the move (the KV cache and sampling row move with it)."""
    sched, events = scheduler_for(model, 8, dense_decode=True)
    ps = prompts(8)
    short = SamplingParams(temperature=0.0, max_new_tokens=3, ignore_eos=True)
    long = SamplingParams(temperature=0.0, max_new_tokens=20, ignore_eos=True, logit_bias=((9, 3.0),))
    seqs = [admit(sched, events, f"r{i}", p, long if i == 7 else short) for i, p in enumerate(ps)]
    assert seqs[7].slot == 7
    with torch.inference_mode():
        alone = 0
        while sched.running:
            was_alone = len(sched.running) == 1
            sched.step()
            if was_alone and not seqs[7].finished:  # compaction runs at the start of a step
                assert seqs[7].slot == 0
                alone += 1
    assert alone > 5
    assert tokens_of(events["r7"]) == naive_biased_greedy(model, ps[7], 20, 9, 3.0)


def naive_biased_greedy(model: MiniGPT, prompt: list[int], n: int, token: int, bias: float) -> list[int]:
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            logits = model(torch.tensor([ids]))[0, -1]
            logits[token] += bias
            ids.append(int(logits.argmax()))
    return ids[len(prompt) :]


# --- prefix caching ----------------------------------------------------------------------------------


def shared_prompts(n: int, prefix_len: int = 48) -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    prefix = torch.randint(9, V, (prefix_len,), generator=g).tolist()
    return [prefix + torch.randint(9, V, (3 + i,), generator=g).tolist() for i in range(n)]


def test_prefix_cache_reuses_finished_and_earlier_turns_without_changing_a_token(model: MiniGPT) -> None:
    """A prompt sharing a 48-token prefix with a finished request reuses its keys/values (cached_tokens = 48);
    the next turn of that chat (prompt + answer + new turn) reuses the answer too. Tokens equal caching off."""
    a, b = shared_prompts(2)
    params = SamplingParams(temperature=0.0, max_new_tokens=20, ignore_eos=True)
    results: dict[bool, list[list[TokenEvent]]] = {}
    for caching in (True, False):
        with exact_engine(model, prefix_caching=caching) as engine:
            first = list(engine.generate(a, params))
            second = list(engine.generate(b, params))
            turn2 = a + tokens_of(first) + [11, 12, 13]
            third = list(engine.generate(turn2, params))
            results[caching] = [first, second, third]
            cached = engine.stats().cached_prompt_tokens_total
        assert cached == (48 + 64 if caching else 0)  # a (51) + its 20 answer tokens, less the last: 64 in blocks
    on, off = results[True], results[False]
    assert [tokens_of(r) for r in on] == [tokens_of(r) for r in off]
    assert [r[0].cached_tokens for r in on] == [0, 48, 64]
    assert [r[0].cached_tokens for r in off] == [0, 0, 0]


def test_prefix_is_copied_from_a_running_request_and_evicted_slots_change_nothing(model: MiniGPT) -> None:
    """A request arriving while another with the same prefix still runs copies that prefix into its own slot;
    with two slots reused by other prompts in between, an old prefix is gone and is simply recomputed."""
    sched, events = scheduler_for(model, 2, kv_len_bucket=128)
    a, b, c = shared_prompts(3)
    long = SamplingParams(temperature=0.0, max_new_tokens=30, ignore_eos=True)
    with torch.inference_mode():
        first = admit(sched, events, "a", a, long)
        sched.step()  # a is prefilled and indexed
        second = admit(sched, events, "b", b, long)
        assert second.cached_tokens == 48 and second.slot != first.slot
        while sched.running:
            sched.step()
        for i, other in enumerate(prompts(4)):  # two slots, four unrelated prompts: both slots are overwritten
            admit(sched, events, f"x{i}", other * 4, GREEDY)
            while sched.running:
                sched.step()
        third = admit(sched, events, "c", c, long)
        assert third.cached_tokens == 0
        while sched.running:
            sched.step()
    for name, prompt in (("a", a), ("b", b), ("c", c)):
        assert tokens_of(events[name]) == naive_greedy(model, prompt, 30), name


def test_the_prefill_graph_body_equals_the_eager_prefill_for_a_cached_prefix(model: MiniGPT) -> None:
    """What a CUDA prefill graph captures (padded rows to the scratch slot, padded tokens, positions after a
    cached prefix, a KV bucket past the chunk), run eagerly on CPU: the same next-token logits as the eager path."""
    sched, events = scheduler_for(model, 4)
    a, b, c = shared_prompts(3)
    with torch.inference_mode():
        admit(sched, events, "a", a, GREEDY)
        while sched.running:
            sched.step()
        seqs = [admit(sched, events, "b", b, GREEDY), admit(sched, events, "c", c, GREEDY)]
        assert [seq.num_cached for seq in seqs] == [48, 48]
        chunks = [seq.prompt_ids[seq.num_cached :] for seq in seqs]
        rows, t, kv = 4, 16, 128  # 2 padding rows, chunks of 4 and 5 tokens padded to 16
        sched._stage_prefill(seqs, chunks, rows, t)
        graphed = sched._prefill_graph_step(rows, t, kv)[:2]
        eager = sched._prefill_eager(seqs, chunks)
    assert torch.allclose(graphed, eager, atol=1e-5)
    for seq, prompt in zip(seqs, (b, c), strict=True):
        logits = model(torch.tensor([prompt]))[0, -1, : sched.output_vocab]
        assert int(logits.argmax()) == int(eager[seqs.index(seq)].argmax())


def test_a_new_request_takes_a_slot_inside_the_batch_bucket_even_when_cached_content_is_older(model: MiniGPT) -> None:
    """Every free slot holds cached content and the oldest is slot 7: a lone new request still takes slot 0
    (a dense step of one row), instead of slot 7 and a copy down at the next step."""
    sched, events = scheduler_for(model, 8, dense_decode=True)
    ps = [(p * 6)[:40] for p in prompts(8)]  # 18-40 tokens: every slot ends with cached content
    with torch.inference_mode():
        for i, p in enumerate(ps):
            sp = SamplingParams(temperature=0.0, max_new_tokens=2 if i == 7 else 4 + i, ignore_eos=True)
            admit(sched, events, f"r{i}", p, sp)
        while sched.running:
            sched.step()
        assert sched.prefix is not None and all(sched.prefix.content(s) for s in range(8))
        lone = admit(sched, events, "lone", [200, 201, 202], GREEDY)
    assert lone.slot == 0


def test_seeded_requests_take_the_batched_path_and_replay_whatever_k_and_neighbours(model: MiniGPT) -> None:
    """A seeded request draws from noise keyed by (seed, tokens drawn so far, token id): the same tokens alone
    or among other requests, with K = 1 or 8, and different tokens with another seed. It no longer forces its
    batch onto the one-step logits path (the steps counted show the K-step calls)."""
    prompt = prompts(1)[0]
    seeded = SamplingParams(temperature=1.0, top_p=0.95, seed=1234, max_new_tokens=24, ignore_eos=True)
    runs = []
    for k in (1, 8):
        with exact_engine(model, decode_steps=k) as engine:
            alone = tokens_of(list(engine.generate(prompt, seeded)))
            steps_alone = engine.stats().steps_total
            crowd = run_all(engine, [*prompts(5), prompt], [GREEDY] * 5 + [seeded])
            runs.append((alone, tokens_of(crowd[-1]), steps_alone))
    assert runs[0][0] == runs[0][1] == runs[1][0] == runs[1][1]
    assert runs[1][2] <= runs[0][2] / 4  # K = 8 ran for the seeded request too
    other = SamplingParams(temperature=1.0, top_p=0.95, seed=99, max_new_tokens=24, ignore_eos=True)
    with exact_engine(model) as engine:
        assert tokens_of(list(engine.generate(prompt, other))) != runs[0][0]
