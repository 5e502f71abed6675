"""Reward model and rule rewards: the Bradley-Terry loss by hand, a tiny reward model that learns a separable
preference (and saves as a loadable checkpoint plus its head), and each verifiable rule on hand-made answers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from minigpt_core.checkpoint import load_checkpoint
from minigpt_core.output_parser import ParsedOutput, ParsedToolCall
from minigpt_core.tokenizer import IM_END_ID, THINK_END_ID, THINK_ID, Tokenizer
from tests.training.helpers import write_jsonl
from tests.training.pref_data import pet_pairs
from training import cli
from training.preference import load_pairs
from training.reward_model import HEAD_FILE, RewardModel, bradley_terry_loss, load_reward_model
from training.rule_rewards import Completion, RewardSet, parse_reward_names

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bradley_terry_loss_by_hand() -> None:
    loss = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert loss.item() == pytest.approx((math.log1p(math.exp(-1.0)) + math.log(2.0)) / 2)
    assert loss.item() == pytest.approx(0.5032045, abs=1e-6)


def test_tiny_reward_model_learns_a_separable_preference(
    tiny_checkpoint: Path, tiny_tokenizer: Tokenizer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    write_jsonl(data / "dpo_train.jsonl", pet_pairs(160, seed=1))
    write_jsonl(data / "dpo_val.jsonl", pet_pairs(40, seed=2))
    out = tmp_path / "rm"
    argv = ["--mode", "reward", "--init", str(tiny_checkpoint), "--data", str(data), "--out", str(out)]
    argv += ["--max-steps", "30", "--batch-size", "8", "--learning-rate", "3e-3", "--warmup-steps", "2"]
    argv += ["--eval-every", "30", "--seq-len", "64", "--device", "cpu", "--seed", "0", "-q"]
    assert cli.main(argv) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and records[-1]["step"] == 30
    assert records[-1]["val_pairwise_acc"] >= 0.9 > records[0]["val_pairwise_acc"]
    # The folder loads as a plain language model (and serves); the head lives in its own file.
    lm, _ = load_checkpoint(out)
    assert (out / HEAD_FILE).is_file() and lm.config.n_layer == 2
    rm, tok = load_reward_model(out)
    pairs = load_pairs(data / "dpo_val.jsonl", tok, seq_len=64)
    chosen = rm.score([p.chosen_ids for p in pairs], [p.chosen_mask.index(True) for p in pairs])
    rejected = rm.score([p.rejected_ids for p in pairs], [p.rejected_mask.index(True) for p in pairs])
    assert sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(pairs) >= 0.9


def test_load_reward_model_refuses_a_plain_checkpoint(tiny_checkpoint: Path) -> None:
    from minigpt_core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not a reward model"):
        load_reward_model(tiny_checkpoint)


# ----- rule rewards -----


def _completion(
    record: dict[str, Any],
    content: str = "",
    *,
    reasoning: str = "",
    calls: list[ParsedToolCall] | None = None,
    ids: list[int] | None = None,
    finish: str = "stop",
    thinking: bool = False,
) -> Completion:
    parsed = ParsedOutput(reasoning=reasoning, content=content, tool_calls=calls or [])
    return Completion(record, ids if ids is not None else [20, 21, IM_END_ID], finish, parsed, thinking, 10)


ARITH = {"messages": [], "answer": "77"}
TOOL = {
    "messages": [],
    "tools": [{"type": "function", "function": {"name": "convert", "parameters": {}}}],
    "expected": {"name": "convert", "arguments": {"value": 5, "unit": "km"}},
}


def test_arithmetic_rule() -> None:
    rules = RewardSet(["arithmetic"])
    assert rules.score(_completion(ARITH, "8 + 69 = 77."))[0] == 1.0
    assert rules.score(_completion(ARITH, "8 + 69 = 79."))[0] == 0.0
    assert rules.score(_completion(ARITH, "It is 77.0"))[0] == 1.0
    assert rules.score(_completion(ARITH, "no idea"))[0] == 0.0
    assert rules.score(_completion({"messages": []}, "77")) == (0.0, {})  # no answer: the rule does not apply


def test_tool_rule() -> None:
    rules = RewardSet(["tool"])
    right = ParsedToolCall(0, "convert", '{"unit": "km", "value": 5.0}')
    wrong_args = ParsedToolCall(0, "convert", '{"value": 6, "unit": "km"}')
    unknown = ParsedToolCall(0, "launch", '{"value": 5, "unit": "km"}')
    broken = ParsedToolCall(0, "convert", '{"value": 5,')
    assert rules.score(_completion(TOOL, calls=[right]))[0] == 1.0
    assert rules.score(_completion(TOOL, calls=[wrong_args]))[0] == 0.5
    assert rules.score(_completion(TOOL, calls=[unknown]))[0] == 0.0
    assert rules.score(_completion(TOOL, calls=[broken]))[0] == 0.0
    assert rules.score(_completion(TOOL, "I cannot"))[0] == 0.0
    assert rules.score(_completion(TOOL, calls=[right, right]))[0] == 0.0
    bool_vs_int = {**TOOL, "expected": {"name": "convert", "arguments": {"value": 1, "unit": "km"}}}
    assert (
        rules.score(_completion(bool_vs_int, calls=[ParsedToolCall(0, "convert", '{"value": true, "unit": "km"}')]))[0]
        == 0.5
    )


def test_think_rule() -> None:
    rules = RewardSet(["think"])
    good = _completion(ARITH, "77", reasoning="8 + 69 = 77", ids=[30, 31, THINK_END_ID, 40, IM_END_ID], thinking=True)
    assert rules.score(good)[0] == 1.0
    unclosed = _completion(ARITH, "77", reasoning="8 + 69", ids=[30, 31, 40, IM_END_ID], thinking=True)
    assert rules.score(unclosed)[0] == 0.0
    empty = _completion(ARITH, "77", reasoning="", ids=[THINK_END_ID, 40, IM_END_ID], thinking=True)
    assert rules.score(empty)[0] == 0.0
    stray = _completion(ARITH, "77", reasoning="x", ids=[30, THINK_END_ID, THINK_ID, 40, IM_END_ID], thinking=True)
    assert rules.score(stray)[0] == 0.0
    no_answer = _completion(ARITH, " ", reasoning="x", ids=[30, THINK_END_ID, IM_END_ID], thinking=True)
    assert rules.score(no_answer)[0] == 0.0
    assert rules.score(_completion(ARITH, "77")) == (0.0, {})  # thinking off: not applicable


def test_length_rule_and_sums() -> None:
    short = _completion(ARITH, "77", ids=[5, 6, IM_END_ID])  # 3 of 10 tokens
    cut = _completion(ARITH, "77", ids=list(range(10, 20)), finish="length")
    assert RewardSet(["length"]).score(short)[0] == pytest.approx(0.7)
    assert RewardSet(["length"]).score(cut)[0] == 0.0
    total, parts = RewardSet(["arithmetic", "length"]).score(short)
    assert total == pytest.approx(1.7) and parts == pytest.approx({"arithmetic": 1.0, "length": 0.7})
    totals, means = RewardSet(["arithmetic", "length"]).score_all([short, cut])
    assert totals == pytest.approx([1.7, 1.0]) and means == pytest.approx(
        {"reward_arithmetic": 1.0, "reward_length": 0.35}
    )


def test_reward_names() -> None:
    from minigpt_core.errors import ConfigError

    assert parse_reward_names(" arithmetic, think ") == ["arithmetic", "think"]
    with pytest.raises(ConfigError, match="unknown reward"):
        parse_reward_names("arithmetic,vibes")


def test_likelihood_feature_is_the_response_log_probability(tiny_checkpoint: Path) -> None:
    from training.preference import pad_rows, sequence_logprobs

    lm, _ = load_checkpoint(tiny_checkpoint)
    rm = RewardModel(lm)  # default features: head (zero at init) + 1.0 x response log-likelihood
    rows = [[1, 40, 41, 42, 43, 44], [1, 50, 51, 52]]
    starts = [3, 2]
    ids, mask, _ = pad_rows([(r, [k >= s for k in range(len(r))]) for r, s in zip(rows, starts, strict=True)], "cpu")
    with torch.no_grad():
        expected = sequence_logprobs(lm, ids, mask).tolist()
    assert rm.score(rows, starts) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="response_starts"):
        rm.score(rows)
    head_only = RewardModel(lm, features="last")
    assert head_only.score(rows) == [0.0, 0.0]
