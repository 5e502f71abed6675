"""Every post-SFT stage resumes exactly: a DPO, reward-model or GRPO run stopped after step 3 and resumed from that
checkpoint ends with the weights, the metrics (every loss, reward and held-out figure) and the data position of
the same run left uninterrupted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.helpers import write_jsonl
from tests.training.pref_data import pet_pairs, prompt_records
from training import cli
from training.state import list_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stage_data")
    write_jsonl(root / "pairs" / "dpo_train.jsonl", pet_pairs(24, seed=1))
    write_jsonl(root / "pairs" / "dpo_val.jsonl", pet_pairs(6, seed=2))
    write_jsonl(root / "prompts.jsonl", prompt_records(24, seed=1))
    return root


def _stage_args(mode: str, data: Path) -> list[str]:
    if mode == "rlhf":
        prompts = str(data / "prompts.jsonl")
        return ["--data", prompts, "--reward", "length", "--group-size", "2", "--max-new-tokens", "4"]
    return ["--data", str(data / "pairs")]


def _untimed(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]


@pytest.mark.parametrize("mode", ["dpo", "reward", "rlhf"])
def test_a_stopped_stage_resumes_exactly(mode: str, tiny_checkpoint: Path, data: Path, tmp_path: Path) -> None:
    argv = ["--mode", mode, "--init", str(tiny_checkpoint), *_stage_args(mode, data), "--batch-size", "2"]
    argv += ["--max-steps", "6", "--save-every", "3", "--eval-every", "3", "--log-every", "1", "--seq-len", "64"]
    full, resumed = tmp_path / "a", tmp_path / "b"
    assert cli.main([*argv, "--out", str(full), "--device", "cpu", "--learning-rate", "1e-2", "-q"]) == 0
    shutil.copytree(full, resumed, ignore=shutil.ignore_patterns("step_0000006"))  # as if stopped after step 3
    assert cli.main(["--resume", str(resumed / "checkpoints" / "step_0000003"), "-q"]) == 0
    a, b = (dict(list_checkpoints(run))[6] for run in (full, resumed))
    files = ["model.safetensors", *(["reward_head.safetensors"] if mode == "reward" else [])]
    for name in files:
        wa, wb = load_file(str(a / name)), load_file(str(b / name))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name
    assert _untimed(resumed) == _untimed(full)
    states = [json.loads((p / "trainer_state" / "state.json").read_text()) for p in (a, b)]
    assert states[1]["loader"] == states[0]["loader"] and states[1]["step"] == 6
