"""Tests for the decoding constraints (think budget, AllOf) on their own and applied by a real engine."""

from __future__ import annotations

import pytest
import torch

from minigpt_core.constraints import AllOf, ThinkBudget, prompt_ends_inside_think
from minigpt_core.engine import Engine
from minigpt_core.errors import InvalidRequest
from minigpt_core.prompting import with_think_budget
from minigpt_core.sampling import SamplingParams
from minigpt_core.tokenizer import IM_END_ID, THINK_END_ID, THINK_ID
from tests.core.engine_helpers import (
    tokens_of,
)


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
