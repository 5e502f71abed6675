"""Golden losses: a fixed seed and a tiny CPU config reproduce the stored per-step training losses of pretrain,
SFT, DPO, the reward model and GRPO (and GRPO's KL) in tests/training/fixtures/golden_losses.json, so a refactor
of the loop, the optimizer, the data order or the losses cannot change the numbers unnoticed.

After an intended change of the numbers, rewrite the fixture with `MINIGPT_WRITE_GOLDEN=1 pytest <this file>` and
say why in the commit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.training.helpers import base_args, write_jsonl
from tests.training.pref_data import pet_pairs, prompt_records
from training import cli

FIXTURE = Path(__file__).parent / "fixtures" / "golden_losses.json"
STEPS = 4
# One thread (fixed reduction order); the tolerance only absorbs float32 summation noise across machines.
COMMON = ["--max-steps", str(STEPS), "--log-every", "1", "--eval-every", "100", "--seed", "0", "--threads", "1"]
RTOL = 1e-4


def _losses(run: Path, key: str = "loss") -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in records if key in r]


def _pretrain(workdir: Path, tiny_checkpoint: Path, out: Path) -> list[str]:
    return [*base_args(workdir, workdir / "data", out), "--learning-rate", "3e-3", "--warmup-steps", "2"]


def _sft(workdir: Path, tiny_checkpoint: Path, out: Path) -> list[str]:
    return [*base_args(workdir, workdir / "data", out, mode="sft"), "--grad-accum", "2"]


def _pairs(workdir: Path) -> Path:
    data = workdir / "golden_pairs"
    if not data.is_dir():
        write_jsonl(data / "dpo_train.jsonl", pet_pairs(40, seed=1))
        write_jsonl(data / "dpo_val.jsonl", pet_pairs(8, seed=2))
    return data


def _stage(mode: str, workdir: Path, tiny_checkpoint: Path, out: Path) -> list[str]:
    argv = ["--mode", mode, "--init", str(tiny_checkpoint), "--data", str(_pairs(workdir)), "--out", str(out)]
    return [*argv, "--batch-size", "4", "--learning-rate", "3e-3", "--warmup-steps", "2", "--seq-len", "64", "-q"]


def _rlhf(workdir: Path, tiny_checkpoint: Path, out: Path) -> list[str]:
    prompts = workdir / "golden_prompts.jsonl"
    if not prompts.is_file():
        write_jsonl(prompts, prompt_records(24, seed=1))
    argv = ["--mode", "rlhf", "--init", str(tiny_checkpoint), "--data", str(prompts), "--out", str(out)]
    argv += ["--reward", "length", "--group-size", "4", "--batch-size", "2", "--max-new-tokens", "6"]
    return [*argv, "--learning-rate", "1e-2", "--warmup-steps", "1", "--grpo-epochs", "2", "--seq-len", "64", "-q"]


RUNS = {
    "pretrain": _pretrain,
    "sft": _sft,
    "dpo": lambda w, c, o: _stage("dpo", w, c, o),
    "reward": lambda w, c, o: _stage("reward", w, c, o),
    "rlhf": _rlhf,
}


@pytest.mark.parametrize("name", list(RUNS))
def test_fixed_seed_reproduces_the_stored_losses(
    name: str, train_workdir: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / name
    assert cli.main([*RUNS[name](train_workdir, tiny_checkpoint, out), *COMMON]) == 0
    got = {"loss": _losses(out)}
    if name == "rlhf":
        got["kl"] = _losses(out, "kl")
    assert all(len(values) == STEPS for values in got.values()), got
    golden = json.loads(FIXTURE.read_text()) if FIXTURE.is_file() else {}
    if os.environ.get("MINIGPT_WRITE_GOLDEN") == "1":
        golden[name] = got
        FIXTURE.write_text(json.dumps(golden, indent=2, sort_keys=True) + "\n")
    for key, values in got.items():
        assert values == pytest.approx(golden[name][key], rel=RTOL, abs=1e-9), key
