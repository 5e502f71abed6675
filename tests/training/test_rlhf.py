"""GRPO: advantages and the clipped, KL-penalised loss against hand-computed values; rollouts through the Engine;
a tiny `minigpt-train --mode rlhf` run that raises the mean reward of a toy verifiable task (fixed seed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from minigpt_core.checkpoint import load_checkpoint
from minigpt_core.engine import Engine
from minigpt_core.sampling import SamplingParams
from tests.training.helpers import write_jsonl
from tests.training.pref_data import prompt_records
from training import cli
from training.reward_model import RewardModel
from training.rlhf import grpo_advantages, grpo_loss, rollout, score
from training.rule_rewards import RULES, Completion, RewardSet

pytestmark = pytest.mark.usefixtures("one_thread")


def test_group_relative_advantages_by_hand() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    adv = grpo_advantages(rewards)
    std = math.sqrt(1.0 / 3.0)  # unbiased std of [1, 0, 0, 1]
    expected = 0.5 / (std + 1e-4)
    assert adv[0].tolist() == pytest.approx([expected, -expected, -expected, expected], rel=1e-6)
    assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # a group that agrees teaches nothing


def test_clipped_policy_term_by_hand() -> None:
    # ratios 1.5 and 0.5 with A = +1, eps 0.2: min(1.5, 1.2) = 1.2 and min(0.5, 0.8) = 0.5; the 3rd token is masked.
    old = torch.zeros(1, 3)
    logp = torch.tensor([[math.log(1.5), math.log(0.5), 50.0]])
    mask = torch.tensor([[True, True, False]])
    loss, stats = grpo_loss(logp, old, logp.clone(), torch.tensor([1.0]), mask, clip_eps=0.2, kl_coef=0.5)
    assert loss.item() == pytest.approx(-(1.2 + 0.5) / 2)
    assert stats["kl"].item() == pytest.approx(0.0)
    assert stats["clip_fraction"].item() == pytest.approx(0.5)  # only the first token hit the clip
    # With A = -1 the pessimistic side flips: max(-1.5, -1.2) -> -1.5 and max(-0.5, -0.8) -> -0.8, clipped: token 2.
    loss, stats = grpo_loss(logp, old, logp.clone(), torch.tensor([-1.0]), mask, clip_eps=0.2, kl_coef=0.5)
    assert loss.item() == pytest.approx((1.5 + 0.8) / 2)
    assert stats["clip_fraction"].item() == pytest.approx(0.5)


def test_kl_penalty_k3_by_hand() -> None:
    # ratio 1 and A = 0 leave only the KL term: ref - logp = ln 2 -> k3 = 2 - ln 2 - 1; the other token 0.
    logp = torch.zeros(2, 2)
    ref = torch.tensor([[math.log(2.0), 0.0], [0.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    loss, stats = grpo_loss(logp, logp.clone(), ref, torch.zeros(2), mask, clip_eps=0.2, kl_coef=0.1)
    k3 = 1.0 - math.log(2.0)
    assert loss.item() == pytest.approx(0.1 * (k3 / 2 + 0.0) / 2)
    assert stats["kl"].item() == pytest.approx(k3 / 3)


def test_grpo_gradient_pushes_up_the_better_sample() -> None:
    logp = torch.zeros(2, 1, requires_grad=True)
    adv = grpo_advantages(torch.tensor([[1.0, 0.0]])).view(-1)
    loss, _ = grpo_loss(
        logp, logp.detach(), logp.detach(), adv, torch.ones(2, 1, dtype=torch.bool), clip_eps=0.2, kl_coef=0.0
    )
    loss.backward()
    assert logp.grad is not None and logp.grad[0, 0] < 0 < logp.grad[1, 0]


def test_rollouts_go_through_the_engine_and_reward_model_scores_add(tiny_checkpoint: Path) -> None:
    model, tok = load_checkpoint(tiny_checkpoint)
    records = prompt_records(3, seed=0)
    params = [SamplingParams(max_new_tokens=5, temperature=1.0, seed=i) for i in range(3)]
    with Engine(model, max_num_seqs=4, max_model_len=128, output_vocab=tok.vocab_size) as engine:
        prompts, completions = rollout(engine, tok, records, params, thinking=False)
        again = rollout(engine, tok, records, params, thinking=False)[1]
    assert [c.token_ids for c in completions] == [c.token_ids for c in again]  # seeded samples repeat
    assert all(1 <= len(c.token_ids) <= 5 and c.record is r for c, r in zip(completions, records, strict=True))
    assert prompts[0][-1] != completions[0].token_ids[0] or len(prompts[0]) > 0
    rm = RewardModel(model, features="last")
    torch.nn.init.constant_(rm.score_head.bias, 1.5)  # weight 0: every answer scores exactly 1.5
    totals, parts = score(completions, prompts, RewardSet(["length"]), rm)
    plain, _ = score(completions, prompts, RewardSet(["length"]), None)
    assert totals == pytest.approx([t + 1.5 for t in plain]) and parts["reward_model"] == pytest.approx(1.5)


def _even_fraction(c: Completion) -> float:
    """Toy verifiable reward: the share of generated ids that are even (about 1/2 for a random model)."""
    return sum(1 for t in c.token_ids if t % 2 == 0) / max(len(c.token_ids), 1)


def test_tiny_grpo_run_raises_mean_reward(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(RULES, "even", _even_fraction)
    train = write_jsonl(tmp_path / "prompts.jsonl", prompt_records(64, seed=1))
    val = write_jsonl(tmp_path / "heldout.jsonl", prompt_records(16, seed=2))
    out = tmp_path / "run"
    argv = ["--mode", "rlhf", "--init", str(tiny_checkpoint), "--data", str(train), "--eval-data", str(val)]
    argv += ["--out", str(out), "--reward", "even", "--group-size", "8", "--batch-size", "4", "--max-new-tokens", "8"]
    argv += ["--max-steps", "12", "--learning-rate", "1e-2", "--warmup-steps", "1", "--eval-every", "12"]
    argv += ["--grpo-epochs", "2", "--seq-len", "64", "--device", "cpu", "--seed", "0", "-q"]
    assert cli.main(argv) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    before, after = records[0], records[-1]
    assert before["step"] == 0 and after["step"] == 12
    assert after["val_reward"] > before["val_reward"]
    steps = [r for r in records if "reward_mean" in r]
    assert {"kl", "clip_fraction", "response_len", "reward_even"} <= set(steps[-1])
    assert steps[-1]["reward_mean"] > steps[0]["reward_mean"]
    assert load_checkpoint(out)[0].config.n_layer == 2


def test_rlhf_usage_errors(tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--mode", "rlhf"]) == 2
    assert "needs --init" in capsys.readouterr().err
    assert cli.main(["--mode", "rlhf", "--init", str(tiny_checkpoint), "--reward", "vibes"]) == 1
    assert "unknown reward" in capsys.readouterr().err
    assert cli.main(["--mode", "rlhf", "--init", str(tiny_checkpoint), "--group-size", "1"]) == 1
    assert "group_size" in capsys.readouterr().err


def test_tool_reward_runs_on_train_split_tool_requests_and_holds_out_eval_tools() -> None:
    from training.config import resolve_config, train_preset
    from training.datagen.synthetic_tools import NOUNS
    from training.rlhf import prompt_sets

    cfg = resolve_config(train_preset("tiny", "rlhf") | {"rewards": "tool", "eval_prompts": 50})
    train, val = prompt_sets(cfg)
    assert len(val) == 50 and all("tools" in r and "expected" in r for r in train[:200] + val)
    names = {r["expected"]["name"] for r in train[:500] if r["expected"]}
    assert not any(name.endswith(f"_{noun}") for name in names for noun in NOUNS["val"])  # no held-out tool names
    arithmetic, _ = prompt_sets(resolve_config(train_preset("tiny", "rlhf")))
    assert all("answer" in r for r in arithmetic[:50])
