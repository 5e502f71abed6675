"""Tests for prefix caching: reused prompt prefixes (finished, earlier turns, copied from a running request) change
no token; evicted slots are recomputed; the prefill graph body equals the eager prefill on a cached prefix."""

from __future__ import annotations

import torch

from minigpt_core.engine import TokenEvent
from minigpt_core.model import MiniGPT
from minigpt_core.sampling import SamplingParams
from tests.core.engine_helpers import (
    GREEDY,
    V,
    admit,
    exact_engine,
    naive_greedy,
    prompts,
    scheduler_for,
    tokens_of,
)


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
