"""Tests for minigpt_core.sampling: greedy, seeded sampling, filters, penalties, bias, masks, validation."""

from __future__ import annotations

import math

import pytest
import torch

from minigpt_core.errors import InvalidRequest, MiniGPTError
from minigpt_core.sampling import RequestSampler, SamplingParams, sample_batch

V = 16


def _logits(seed: int = 0) -> torch.Tensor:
    return torch.randn(V, generator=torch.Generator().manual_seed(seed))


def _run(params: SamplingParams, steps: int = 30, logits: torch.Tensor | None = None) -> list[int]:
    sampler = RequestSampler(params)
    row = torch.zeros(V) if logits is None else logits
    out = []
    for _ in range(steps):
        tok = sampler.sample(row).token_id
        out.append(tok)
    return out


def test_greedy_is_argmax_and_deterministic() -> None:
    for seed in range(5):
        row = _logits(seed)
        tokens = _run(SamplingParams(temperature=0.0), steps=3, logits=row)
        assert tokens == [int(row.argmax())] * 3


def test_greedy_ties_pick_lowest_id() -> None:
    row = torch.zeros(V)
    row[5] = row[9] = 3.0
    assert RequestSampler(SamplingParams(temperature=0.0)).sample(row).token_id == 5


def test_same_seed_same_sequence_different_seed_differs() -> None:
    a = _run(SamplingParams(seed=123))
    b = _run(SamplingParams(seed=123))
    c = _run(SamplingParams(seed=124))
    assert a == b
    assert a != c
    assert len(set(a)) > 3  # flat logits: it really samples


def test_unseeded_sampler_draws_its_own_seed() -> None:
    s1, s2 = RequestSampler(SamplingParams()), RequestSampler(SamplingParams())
    assert s1.seed != s2.seed
    replay = RequestSampler(SamplingParams(seed=s1.seed))
    row = torch.zeros(V)
    assert [s1.sample(row).token_id for _ in range(10)] == [replay.sample(row).token_id for _ in range(10)]


def test_top_k_1_and_tiny_top_p_equal_greedy() -> None:
    for seed in range(5):
        row = _logits(seed)
        best = int(row.argmax())
        assert set(_run(SamplingParams(top_k=1, seed=seed), steps=20, logits=row)) == {best}
        assert set(_run(SamplingParams(top_p=1e-6, seed=seed), steps=20, logits=row)) == {best}
        # 1e-300 is 0.0 once compared with a float32 tensor: the best token must still be kept
        assert set(_run(SamplingParams(top_p=1e-300, seed=seed), steps=5, logits=row)) == {best}


def test_top_k_restricts_to_k_best() -> None:
    row = _logits(3)
    top3 = set(torch.topk(row, 3).indices.tolist())
    got = set(_run(SamplingParams(top_k=3, temperature=2.0, seed=1), steps=200, logits=row))
    assert got == top3


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05] + [0.0] * (V - 4))
    row = torch.log(probs.clamp_min(1e-30))
    got = set(_run(SamplingParams(top_p=0.75, seed=0), steps=300, logits=row))
    assert got == {0, 1}  # 0.5 < 0.75, 0.5 + 0.3 >= 0.75


def test_min_p_drops_tokens_below_fraction_of_best() -> None:
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1] + [0.0] * (V - 4))
    row = torch.log(probs.clamp_min(1e-30))
    got = set(_run(SamplingParams(min_p=0.6, seed=0), steps=300, logits=row))
    assert got == {0, 1}  # 0.2 < 0.6 * 0.4 = 0.24


def test_penalties_change_the_right_logits_by_the_right_amounts() -> None:
    row = torch.tensor([2.0, -1.0, 0.5, 3.0] + [0.0] * (V - 4))
    params = SamplingParams(repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25)
    sampler = RequestSampler(params, prompt_ids=[1])
    for tok in (0, 0, 3):
        sampler.observe(tok)
    got = sampler._adjusted_logits(row)
    expected = row.clone()
    expected[0] = 2.0 / 2.0 - 0.5 - 0.25 * 2  # seen (positive: divide), generated twice
    expected[1] = -1.0 * 2.0  # prompt only: repetition penalty (negative: multiply), no OpenAI penalties
    expected[3] = 3.0 / 2.0 - 0.5 - 0.25 * 1
    assert torch.allclose(got, expected)
    assert torch.equal(row[4:], got[4:])


def test_logit_bias_bans_and_forces() -> None:
    row = _logits(7)
    best = int(row.argmax())
    banned = _run(SamplingParams(temperature=0.0, logit_bias=((best, -100.0),)), steps=1, logits=row)
    assert banned[0] != best
    forced = _run(SamplingParams(seed=3, logit_bias=((11, 100.0),)), steps=50, logits=row)
    assert set(forced) == {11}


def test_allowed_mask_is_respected() -> None:
    allowed = torch.zeros(V, dtype=torch.bool)
    allowed[[2, 7]] = True
    sampler = RequestSampler(SamplingParams(seed=0))
    got = {sampler.sample(_logits(1), allowed).token_id for _ in range(100)}
    assert got == {2, 7}
    greedy = RequestSampler(SamplingParams(temperature=0.0)).sample(_logits(1), allowed)
    assert greedy.token_id in (2, 7)
    with pytest.raises(MiniGPTError):
        sampler.sample(_logits(1), torch.zeros(V, dtype=torch.bool))


def test_logprobs_come_from_raw_logits() -> None:
    row = _logits(2)
    params = SamplingParams(temperature=0.5, logit_bias=((4, 50.0),), logprobs=True, top_logprobs=3, seed=0)
    tok = RequestSampler(params).sample(row)
    raw = torch.log_softmax(row, dim=-1)
    assert tok.token_id == 4
    assert tok.logprob == pytest.approx(float(raw[4]))
    assert [i for i, _ in tok.top_logprobs] == torch.topk(raw, 3).indices.tolist()
    assert all(math.isclose(lp, float(raw[i]), rel_tol=1e-6) for i, lp in tok.top_logprobs)
    assert RequestSampler(SamplingParams()).sample(row).top_logprobs == []


def test_sample_batch_is_independent_of_neighbours() -> None:
    rows = torch.stack([_logits(i) for i in range(3)])
    alone = RequestSampler(SamplingParams(seed=9)).sample(rows[1]).token_id
    samplers = [RequestSampler(SamplingParams(seed=s)) for s in (1, 9, 5)]
    batch = sample_batch(rows, samplers, [None, None, None])
    assert batch[1].token_id == alone
    with pytest.raises(ValueError):
        sample_batch(rows, samplers[:2], [None, None])


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.1}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"repetition_penalty": 1e-45}, "repetition_penalty"),  # logits / 1e-45 = inf, softmax NaN
        ({"repetition_penalty": 1e3}, "repetition_penalty"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logit_bias": ((V, 1.0),)}, "logit_bias"),
        ({"logit_bias": ((1, 101.0),)}, "logit_bias"),
        ({"max_new_tokens": 0}, "max_tokens"),
        ({"stop_token_ids": (-1,)}, "stop_token_ids"),
        ({"max_thinking_tokens": -1}, "max_thinking_tokens"),
    ],
)
def test_validation_errors_name_the_param(kwargs: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        SamplingParams(**kwargs).validate(V)  # type: ignore[arg-type]
    assert err.value.param == param


def test_valid_params_pass() -> None:
    SamplingParams().validate(V)
    SamplingParams(
        temperature=0.0, top_p=0.9, top_k=5, logit_bias=((0, -100.0), (V - 1, 100.0)), logprobs=True, top_logprobs=20
    ).validate(V)


def test_simple_batch_sampler_matches_the_rules() -> None:
    from minigpt_core.sampling import is_simple, sample_simple_batch

    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0, top_k=1),
        SamplingParams(temperature=0.8, top_p=1e-6),
        SamplingParams(temperature=1.0, min_p=0.999),
    ]
    assert all(is_simple(p) for p in params)
    assert is_simple(SamplingParams(seed=3))  # seeds replay from counter-based noise on the batched path
    assert not is_simple(SamplingParams(presence_penalty=0.5))
    assert not is_simple(SamplingParams(logprobs=True, top_logprobs=2))
    for _ in range(20):  # every rule here collapses to the argmax
        assert torch.equal(sample_simple_batch(logits, params), logits.argmax(-1))
    free = [SamplingParams(temperature=1.0, top_k=5)] * 4
    draws = torch.stack([sample_simple_batch(logits, free) for _ in range(200)])  # (200, 4)
    top5 = logits.topk(5, dim=-1).indices
    for row in range(4):
        assert set(draws[:, row].tolist()) <= set(top5[row].tolist())
        assert len(set(draws[:, row].tolist())) > 1


def test_banned_tokens_are_never_sampled_on_either_path() -> None:
    from minigpt_core.sampling import sample_simple_batch

    row = _logits(3)
    top = int(row.argmax())
    banned = SamplingParams(temperature=0.0, banned_token_ids=(top,))
    assert top not in _run(banned, steps=3, logits=row)
    assert _run(banned, steps=1, logits=row) == [int(row.clone().index_fill_(0, torch.tensor([top]), -1e9).argmax())]
    hot = SamplingParams(temperature=1.0, banned_token_ids=(top,))
    assert top not in _run(hot, steps=200, logits=row * 5)
    batch = torch.stack([row, row])  # row 0 bans its argmax, row 1 does not
    ids = sample_simple_batch(batch, [banned, SamplingParams(temperature=0.0)])
    assert int(ids[0]) != top and int(ids[1]) == top
    sampled = sample_simple_batch(torch.stack([row * 5] * 64), [hot] * 64)
    assert top not in sampled.tolist()
    with pytest.raises(InvalidRequest):
        SamplingParams(banned_token_ids=(V,)).validate(V)


@pytest.mark.parametrize("temperature", [1e-38, 5e-324, 1e-6])
def test_vanishing_temperature_is_greedy_on_both_paths(temperature: float) -> None:
    """logits / 1e-38 overflows float32 to inf and softmax to NaN; below 1e-5 the argmax is taken instead."""
    from minigpt_core.sampling import sample_simple_batch

    params = SamplingParams(temperature=temperature)
    params.validate(V)
    assert params.greedy and not SamplingParams(temperature=1e-5).greedy
    rows = torch.stack([_logits(seed) * 30 for seed in range(4)])  # (4, V), wide logits
    assert [_run(params, steps=2, logits=row) for row in rows] == [[int(row.argmax())] * 2 for row in rows]
    mixed = [params, SamplingParams(temperature=1.0, top_k=1), params, SamplingParams(temperature=0.0)]
    assert torch.equal(sample_simple_batch(rows, mixed), rows.argmax(-1))


def test_top_k_past_the_vocabulary_keeps_every_token_on_both_paths() -> None:
    from minigpt_core.sampling import sample_simple_batch

    rows = torch.stack([_logits(seed) for seed in range(3)])
    wide = SamplingParams(temperature=1.0, top_k=V + 1)
    SamplingParams(top_k=10**40).validate(V)  # an int: valid, and must never reach torch.topk as k
    batch = [wide, SamplingParams(temperature=1.0, top_k=2), SamplingParams(temperature=1.0, top_k=10**40)]
    torch.manual_seed(0)
    draws = torch.stack([sample_simple_batch(rows, batch) for _ in range(400)])  # (400, 3)
    assert len(set(draws[:, 0].tolist())) > 2 and len(set(draws[:, 2].tolist())) > 2  # not cut to a top-k
    assert set(draws[:, 1].tolist()) <= set(rows[1].topk(2).indices.tolist())
    assert len(set(_run(wide, steps=200, logits=rows[0]))) > 2


def test_batched_sampler_flags_a_nan_row_and_samples_the_others() -> None:
    """One bad row cannot fail its batch: `sample_rows` marks it not ok (the scheduler ends that request
    alone, see tests/core/test_engine.py) and samples its neighbours as usual; the per-row sampler raises."""
    from minigpt_core.sampling import SamplingTable, sample_rows, sample_simple_batch

    rows = torch.stack([_logits(seed) for seed in range(3)])
    rows[1] = float("nan")
    hot, cold = SamplingParams(temperature=1.0, top_k=1), SamplingParams(temperature=0.0)
    table = SamplingTable(3, V, "cpu")
    for r, p in enumerate([hot, hot, cold]):
        table.set_row(r, p)
    tokens, logprobs, ok = sample_rows(rows, table, any_sampled=True)
    assert ok.tolist() == [True, False, True]
    assert tokens[0] == rows[0].argmax() and tokens[2] == rows[2].argmax()  # top_k=1 and greedy: the argmax
    assert torch.allclose(logprobs[0], rows[0].log_softmax(-1).max())
    with pytest.raises(MiniGPTError, match="not finite"):
        sample_simple_batch(rows, [hot] * 3)
    with pytest.raises(MiniGPTError, match="not finite"):
        RequestSampler(hot).sample(rows[1])
    assert RequestSampler(SamplingParams(temperature=0.0)).sample(rows[0]).token_id == int(rows[0].argmax())


def test_table_sampler_follows_top_p_min_p_and_logit_bias() -> None:
    """The sort-based sampler of the batched path keeps exactly the tokens the per-row rules keep."""
    from minigpt_core.sampling import SamplingTable, sample_rows

    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]] * 4)
    p = logits[0].softmax(-1)  # 0.64, 0.24, 0.09, 0.03, 0.01
    params = [
        SamplingParams(temperature=1.0, top_p=0.8),  # mass above id 2 is 0.88 >= 0.8: ids {0, 1}
        SamplingParams(temperature=1.0, min_p=0.1),  # p >= 0.064: ids {0, 1, 2}
        SamplingParams(temperature=1.0, top_k=1, logit_bias=((4, 100.0),)),  # the bias makes id 4 the best
        SamplingParams(temperature=1.0, banned_token_ids=(0, 1, 2, 3)),  # only id 4 is left
    ]
    table = SamplingTable(4, 5, "cpu")
    for r, sp in enumerate(params):
        table.set_row(r, sp)
    torch.manual_seed(0)
    draws = torch.stack([sample_rows(logits, table, any_sampled=True)[0] for _ in range(600)])  # (600, 4)
    assert set(draws[:, 0].tolist()) == {0, 1}
    assert set(draws[:, 1].tolist()) == {0, 1, 2}
    assert set(draws[:, 2].tolist()) == {4} and set(draws[:, 3].tolist()) == {4}
    share = (draws[:, 0] == 0).float().mean().item()  # renormalised: 0.64 / (0.64 + 0.24) = 0.73
    assert abs(share - float(p[0] / (p[0] + p[1]))) < 0.07


def test_seeded_rows_draw_the_same_whatever_their_row_and_neighbours() -> None:
    """Counter-based noise: a seeded row's draw depends on its seed, its counter and its logits only; the draws
    follow the probabilities (a seed sweep picks the top token about as often as its probability)."""
    from minigpt_core.sampling import SamplingTable, sample_rows

    row = _logits(5)
    hot = SamplingParams(temperature=1.0, seed=42)
    free = SamplingParams(temperature=1.0)
    table_a, table_b = SamplingTable(2, V, "cpu"), SamplingTable(3, V, "cpu")
    table_a.set_row(0, hot)
    table_a.set_row(1, free)
    for r, sp in enumerate([free, free, hot]):
        table_b.set_row(r, sp)
    for counter in range(20):
        a = sample_rows(torch.stack([row, row * 3]), table_a, True, torch.tensor([counter, 7]))[0][0]
        b = sample_rows(torch.stack([row * 2, row, row]), table_b, True, torch.tensor([3, 9, counter]))[0][2]
        assert a == b
    table = SamplingTable(1, V, "cpu")
    top = int(row.argmax())
    p_top = float(row.softmax(-1)[top])
    hits = 0
    for seed in range(400):
        table.set_row(0, SamplingParams(temperature=1.0, seed=seed))
        hits += int(sample_rows(row[None], table, True, torch.tensor([0]))[0][0] == top)
    assert abs(hits / 400 - p_top) < 0.08
