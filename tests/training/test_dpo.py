"""DPO: the sigmoid and IPO losses against hand-computed values, log-probs over assistant tokens only, and a tiny
end-to-end run through `minigpt-train --mode dpo` that raises held-out preference accuracy (fixed seed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from minigpt_core.checkpoint import load_checkpoint
from minigpt_core.tokenizer import Tokenizer
from tests.training.helpers import write_jsonl
from tests.training.pref_data import pet_pairs
from training import cli
from training.dpo import dpo_loss
from training.preference import collate, load_pairs, sequence_logprobs

PC, PR = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
RC, RR = torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0])


pytestmark = pytest.mark.usefixtures("one_thread")


def test_sigmoid_loss_matches_hand_computed_values() -> None:
    # h = (pc - pr) - (rc - rr) = [2, -1]; beta 0.5 -> -log sigmoid([1, -0.5])
    loss, stats = dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="sigmoid")
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert loss.item() == pytest.approx(0.6436693, abs=1e-6)
    assert stats["chosen_rewards"].tolist() == pytest.approx([0.5, 0.0])
    assert stats["rejected_rewards"].tolist() == pytest.approx([-0.5, 0.5])
    assert stats["margins"].tolist() == pytest.approx([1.0, -0.5])
    assert stats["accuracies"].tolist() == [1.0, 0.0]


def test_ipo_loss_matches_hand_computed_values() -> None:
    # (h - 1 / (2 beta))^2 with 1 / (2 * 0.5) = 1: (2 - 1)^2 = 1, (-1 - 1)^2 = 4 -> mean 2.5
    loss, _ = dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="ipo")
    assert loss.item() == pytest.approx(2.5)
    with pytest.raises(ValueError):
        dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="hinge")


def test_sigmoid_loss_gradient_favours_chosen() -> None:
    pc, pr = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    loss, _ = dpo_loss(pc, pr, torch.zeros(1), torch.zeros(1), beta=0.1)
    loss.backward()
    assert pc.grad is not None and pr.grad is not None
    assert pc.grad.item() == pytest.approx(-0.05) and pr.grad.item() == pytest.approx(0.05)  # beta * sigmoid(0)


class _FixedLogits(torch.nn.Module):
    """A stand-in language model whose next-token distribution is fixed: p(token 1) = 1/2, others 1/4."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = torch.log(torch.tensor([0.25, 0.5, 0.25]))
        return logits.expand(ids.size(0), ids.size(1), 3).clone()


def test_sequence_logprobs_sum_only_masked_targets() -> None:
    ids = torch.tensor([[0, 1, 2, 1], [0, 1, 2, 1]])
    mask = torch.tensor([[True, False, True, True], [False, False, False, True]])  # mask[0] never counts
    got = sequence_logprobs(_FixedLogits(), ids, mask)
    assert got.tolist() == pytest.approx([math.log(0.25) + math.log(0.5), math.log(0.5)])


def test_pairs_mask_only_assistant_tokens(tiny_tokenizer: Tokenizer, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "dpo_train.jsonl", [*pet_pairs(3, seed=0), {"chosen": []}])
    pairs = load_pairs(path, tiny_tokenizer, seq_len=128, max_bad_fraction=0.5)
    assert len(pairs) == 3
    ids, mask, lengths = collate(pairs, torch.device("cpu"))
    assert ids.shape[0] == 6 and mask.shape == ids.shape and lengths.tolist()[:3] == [len(p.chosen_ids) for p in pairs]
    answer = tiny_tokenizer.decode([t for t, m in zip(pairs[0].chosen_ids, pairs[0].chosen_mask, strict=True) if m])
    assert answer.startswith("a ") and "pet" not in answer  # the user turn is never scored


@pytest.fixture(scope="module")
def pet_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dpo_data")
    write_jsonl(root / "dpo_train.jsonl", pet_pairs(160, seed=1))
    write_jsonl(root / "dpo_val.jsonl", pet_pairs(40, seed=2))
    return root


def _metrics(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_tiny_dpo_run_raises_heldout_preference_accuracy(
    loss: str, tiny_checkpoint: Path, pet_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    argv = ["--mode", "dpo", "--init", str(tiny_checkpoint), "--data", str(pet_data), "--out", str(out), "--loss", loss]
    argv += ["--max-steps", "25", "--batch-size", "8", "--learning-rate", "3e-3", "--warmup-steps", "2"]
    argv += ["--eval-every", "25", "--seq-len", "64", "--device", "cpu", "--seed", "0", "-q"]
    assert cli.main(argv) == 0
    records = _metrics(out)
    before, after = records[0], records[-1]
    assert before["step"] == 0 and after["step"] == 25
    assert after["val_pref_acc"] > before["val_pref_acc"]
    assert after["val_reward_acc"] >= 0.9  # implicit reward beta * log(pi / ref) ranks held-out pairs right
    if loss == "sigmoid":  # IPO only pulls the log-ratio gap towards 1 / (2 beta), not the absolute preference
        assert after["val_pref_acc"] >= 0.9
    logged = [r for r in records if "loss" in r]
    assert {"rewards_chosen", "rewards_rejected", "reward_margin", "pref_accuracy"} <= set(logged[-1])
    assert logged[-1]["loss"] < logged[0]["loss"]
    model, _ = load_checkpoint(out)  # the run folder is a normal servable checkpoint
    assert model.config.n_layer == 2


def test_dpo_usage_errors(capsys: pytest.CaptureFixture[str], tiny_checkpoint: Path) -> None:
    assert cli.main(["--mode", "dpo"]) == 2
    assert "needs --init" in capsys.readouterr().err
    assert cli.main(["--mode", "dpo", "--init", str(tiny_checkpoint), "--loss", "hinge"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert cli.main(["--mode", "dpo", "--init", str(tiny_checkpoint), "--beta", "0"]) == 1
    assert "beta must be positive" in capsys.readouterr().err
