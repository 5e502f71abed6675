"""Training knobs of issue 21: --epochs, --log-every, --grad-clip, --weight-decay, --dtype float16 (loss scaling),
--tensorboard DIR, and --device mps where there is no MPS.

`minigpt-train` runs in process on the tiny fixture files (as tests/training/test_train_cli.py); the one-line
failures run as real processes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from minigpt_core.errors import ConfigError
from minigpt_core.tokenizer import Tokenizer
from tests.training.helpers import base_args
from training import cli
from training.config import RuntimeSettings, ScheduleSettings, TrainConfig
from training.lm_stage import steps_per_epoch
from training.loader import PackedLoader, load_datasets, resolve_data_files
from training.loop import clip_and_step
from training.state import list_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _train(workdir: Path, out: Path, *extra: str, mode: str = "pretrain") -> Path:
    argv = [*base_args(workdir, workdir / "data", out, mode=mode), "--eval-every", "1000", "--eval-batches", "1"]
    assert cli.main([*argv, *extra]) == 0
    return out


def _last_step_dir(run: Path) -> Path:
    return list_checkpoints(run)[-1][1]


@pytest.mark.parametrize("mode", ["pretrain", "sft"])
def test_steps_per_epoch_counts_what_the_loader_yields(
    mode: str, train_workdir: Path, tiny_tokenizer: Tokenizer
) -> None:
    files = resolve_data_files(train_workdir / "data", mode)
    train, _ = load_datasets(files, mode, tiny_tokenizer)
    pack = {"pretrain": "stream", "sft": "docs"}[mode]
    for grad_accum in (1, 3):
        one_pass = PackedLoader(train, 64, 4, pack=pack, seed=0, repeat=False)
        batches = sum(1 for _ in one_pass)
        counted = steps_per_epoch(PackedLoader(train, 64, 4, pack=pack, seed=0), grad_accum)
        assert counted == math.ceil(batches / grad_accum)


def test_epochs_set_the_run_length_by_passes_over_the_data(train_workdir: Path, tmp_path: Path) -> None:
    one = _train(train_workdir, tmp_path / "one", "--epochs", "1", "--save-every", "1000")
    half = _train(train_workdir, tmp_path / "half", "--epochs", "0.5", "--save-every", "1000")
    steps_one = json.loads((_last_step_dir(one) / "trainer_state" / "state.json").read_text())
    steps = steps_one["step"]
    assert steps_one["config"]["schedule"]["max_steps"] == steps > 1
    # the loader has just finished its first pass over the documents: epoch 1 has begun, not more
    assert steps_one["loader"]["epoch"] == 1
    assert _metrics(half)[-1]["step"] == math.ceil(steps / 2)
    assert (
        cli.main(
            [*base_args(train_workdir, train_workdir / "data", tmp_path / "x"), "--epochs", "1", "--max-steps", "3"]
        )
        == 2
    )


def test_log_every_sets_the_metrics_rows(train_workdir: Path, tmp_path: Path) -> None:
    two = _train(train_workdir, tmp_path / "two", "--max-steps", "6", "--log-every", "2")
    three = _train(train_workdir, tmp_path / "three", "--max-steps", "6", "--log-every", "3")
    assert [r["step"] for r in _metrics(two)] == [1, 2, 4, 6]
    assert [r["step"] for r in _metrics(three)] == [1, 3, 6]


def test_grad_clip_bounds_the_update() -> None:
    """With SGD at lr 1 the update is the clipped gradient: its norm is the clip (and 0 means no clipping)."""
    for clip, expected in ((0.5, 0.5), (0.0, None)):
        torch.manual_seed(0)
        model = torch.nn.Linear(16, 16)
        before = [p.detach().clone() for p in model.parameters()]
        model(torch.randn(8, 16)).pow(2).sum().backward()
        norm = clip_and_step(model, torch.optim.SGD(model.parameters(), lr=1.0), clip)
        moved = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters(), strict=True)])
        assert float(norm) > 1.0  # the pre-clip norm is reported
        assert float(moved.norm()) == pytest.approx(expected if expected is not None else float(norm), rel=1e-5)


def test_grad_clip_and_weight_decay_reach_the_run(train_workdir: Path, tmp_path: Path) -> None:
    runs = {
        name: _train(train_workdir, tmp_path / name, "--max-steps", "2", *flags)
        for name, flags in {
            "plain": ("--grad-clip", "0"),
            "again": ("--grad-clip", "0"),
            "clipped": ("--grad-clip", "1e-4"),
            "decayed": ("--grad-clip", "0", "--weight-decay", "0.3"),
        }.items()
    }
    weights = {name: load_file(str(_last_step_dir(run) / "model.safetensors")) for name, run in runs.items()}
    same = weights["plain"]
    assert all(torch.equal(same[k], weights["again"][k]) for k in same)  # deterministic, so differences are the flags
    assert any(not torch.equal(same[k], weights["clipped"][k]) for k in same)
    assert any(not torch.equal(same[k], weights["decayed"][k]) for k in same)
    optimizer = torch.load(_last_step_dir(runs["decayed"]) / "trainer_state" / "optimizer.pt", weights_only=True)
    assert [g["weight_decay"] for g in optimizer["param_groups"]] == [0.3, 0.0]  # matrices decay, norms do not
    config = json.loads((runs["clipped"] / "run_config.json").read_text())
    assert config["optim"]["grad_clip"] == 1e-4 and config["optim"]["weight_decay"] == 0.1


def test_float16_trains_with_loss_scaling(train_workdir: Path, tmp_path: Path) -> None:
    run = _train(train_workdir, tmp_path / "fp16", "--max-steps", "8", "--log-every", "1", "--dtype", "float16")
    rows = _metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all(r["loss_scale"] > 1 for r in rows)  # the GradScaler ran
    losses = [r["loss"] for r in rows]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


def test_float16_and_tensorboard_are_refused_for_the_stages() -> None:
    with pytest.raises(ConfigError, match="--dtype float16 is supported for --mode pretrain and sft, not dpo"):
        TrainConfig(mode="dpo", config_name="tiny", runtime=RuntimeSettings(dtype="float16"))
    with pytest.raises(ConfigError, match="--tensorboard is supported"):
        TrainConfig(mode="rlhf", config_name="tiny", schedule=ScheduleSettings(tensorboard="tb"))


def test_tensorboard_events_hold_the_metrics(train_workdir: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    run = _train(train_workdir, tmp_path / "run", "--max-steps", "4", "--log-every", "2", "--tensorboard", str(tb))
    events = EventAccumulator(str(tb))
    events.Reload()
    rows = _metrics(run)
    for tag in ("loss", "lr", "grad_norm"):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [r["step"] for r in rows]
        assert [s.value for s in scalars] == pytest.approx([r[tag] for r in rows], rel=1e-6)


def _train_process(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "training.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def test_tensorboard_without_the_package_is_a_one_line_error(train_workdir: Path, tmp_path: Path) -> None:
    shim = tmp_path / "shim" / "tensorboard"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named tensorboard')\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(shim.parent)}
    args = [*base_args(train_workdir, train_workdir / "data", tmp_path / "run"), "--tensorboard", str(tmp_path / "tb")]
    proc = _train_process(args, env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "minigpt-train: error: --tensorboard needs the tensorboard package: pip install tensorboard"
    ]
    assert not (tmp_path / "run").exists()  # nothing was started


def test_device_mps_without_mps_is_a_one_line_error(train_workdir: Path, tmp_path: Path) -> None:
    """The same sentence as minigpt-serve's (tests/server/test_knobs.py): one resolve_device for both."""
    args = [*base_args(train_workdir, train_workdir / "data", tmp_path / "run"), "--max-steps", "1"]
    proc = _train_process([*args[: args.index("--device")], "--device", "mps"])
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "minigpt-train: error: --device mps was requested but MPS (Apple-silicon GPU) is not available on this machine"
    )
