"""Tests for the scheduler step: batched prefill, K-step decode, slot compaction and the seeded batched path,
against a naive greedy reference; real tiny models, no mocks."""

from __future__ import annotations

import pytest
import torch

from minigpt_core.engine import Engine, TokenEvent
from minigpt_core.model import MiniGPT
from minigpt_core.sampling import SamplingParams
from tests.core.engine_helpers import (
    GREEDY,
    admit,
    exact_engine,
    naive_greedy,
    prompts,
    run_all,
    scheduler_for,
    tokens_of,
)


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


@pytest.mark.slow  # inductor compiles the decode step: a minute or more on a cold cache
def test_compiled_cpu_decode_gives_the_eager_tokens_without_recompiling(model: MiniGPT) -> None:
    """Engine(compile_decode=True) on the CPU: the decode step is compiled at startup (one row and several), and
    serving then gives the eager engine's greedy tokens with no further compilation, up to the context's end
    (a read of the whole slot) and across KV-length buckets."""
    import torch._dynamo.utils as dynamo_utils

    ps = prompts(6)
    params = [SamplingParams(temperature=0.0, max_new_tokens=48 - len(p), ignore_eos=True) for p in ps]
    out = {}
    for compiled in (False, True):
        with Engine(model, max_num_seqs=8, max_model_len=48, kv_len_bucket=16, compile_decode=compiled) as engine:
            graphs = dynamo_utils.counters["stats"]["unique_graphs"]
            tokens = [tokens_of(r) for r in run_all(engine, ps[:1], params[:1])]
            tokens += [tokens_of(r) for r in run_all(engine, ps[1:], params[1:])]
            assert dynamo_utils.counters["stats"]["unique_graphs"] == graphs  # nothing compiled while serving
            out[compiled] = tokens
    assert all(len(p) + len(t) == 48 for p, t in zip(ps, out[False], strict=True))  # every row to the end
    assert out[True] == out[False]
