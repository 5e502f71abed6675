"""Resuming: a damaged trainer state is a one-line error naming the file, the time limit applies to each invocation,
and the files of a saved checkpoint get the umask's usual modes (0644 / 0755 under umask 022), not mkstemp's 0600."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from tests.training.helpers import base_args
from training import cli
from training.config import TrainConfig, to_flat
from training.state import list_checkpoints


@pytest.fixture(scope="module")
def umask_022() -> Iterator[None]:
    before = os.umask(0o022)
    yield
    os.umask(before)


@pytest.fixture(scope="module")
def two_steps(train_workdir: Path, tmp_path_factory: pytest.TempPathFactory, umask_022: None) -> Path:
    """A finished 2-step run (one checkpoint, step 2)."""
    out = tmp_path_factory.mktemp("resume") / "run"
    argv = [*base_args(train_workdir, train_workdir / "data", out), "--max-steps", "2", "--eval-every", "100"]
    assert cli.main(argv) == 0
    return out


def test_checkpoint_files_are_readable_like_any_other_file(two_steps: Path) -> None:
    step = list_checkpoints(two_steps)[-1][1]
    paths = [step, *step.rglob("*"), two_steps / "model.safetensors", two_steps / "config.json"]
    modes = {str(p.relative_to(two_steps)): stat.S_IMODE(p.stat().st_mode) for p in paths}
    for name, mode in modes.items():
        expected = 0o755 if (two_steps / name).is_dir() else 0o644
        assert mode == expected, f"{name}: {oct(mode)}"


def _state_json(sd: Path) -> None:
    (sd / "state.json").write_bytes(b"\x00{garbage")


def _state_keys(sd: Path) -> None:
    (sd / "state.json").write_text(json.dumps({"steps": 2, "config": {}}))


def _state_config(sd: Path) -> None:
    raw = json.loads((sd / "state.json").read_text())
    raw["config"]["optim"]["learning_rate"] = "fast"
    (sd / "state.json").write_text(json.dumps(raw))


def _rng_garbage(sd: Path) -> None:
    (sd / "rng.pt").write_bytes(os.urandom(256))


def _rng_shape(sd: Path) -> None:
    torch.save({"torch": torch.zeros(3)}, sd / "rng.pt")


def _optimizer_pickle(sd: Path) -> None:
    torch.save(argparse.Namespace(lr=1.0), sd / "optimizer.pt")  # loads only by unpickling code


def _optimizer_mismatch(sd: Path) -> None:
    torch.save({"state": {}, "param_groups": [{"params": [0, 1, 2]}]}, sd / "optimizer.pt")


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (_state_json, "state.json: not valid JSON"),
        (_state_keys, "state.json: not a trainer state (unknown keys steps; missing loader, step)"),
        (_state_config, "state.json: its run config is not usable"),
        (_rng_garbage, "rng.pt: not a plain tensor file"),
        (_rng_shape, "rng.pt: not an RNG state"),
        (_optimizer_pickle, "optimizer.pt: not a plain tensor file"),
        (_optimizer_mismatch, "optimizer.pt: does not fit this model's optimizer"),
    ],
)
def test_damaged_trainer_state_is_one_line_naming_the_file(
    two_steps: Path, tmp_path: Path, damage: Callable[[Path], None], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    point = tmp_path / "step"
    shutil.copytree(list_checkpoints(two_steps)[-1][1], point)
    damage(point / "trainer_state")
    capsys.readouterr()
    rc = cli.main(["--resume", str(point), "--out", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.startswith("minigpt-train: error: ") and err.count("\n") == 1, err
    assert f"{point / 'trainer_state'}/" in err and needle in err, err


def test_time_limit_applies_to_each_invocation(two_steps: Path, tmp_path: Path) -> None:
    point = tmp_path / "step"
    shutil.copytree(list_checkpoints(two_steps)[-1][1], point)
    state_path = point / "trainer_state" / "state.json"
    raw = json.loads(state_path.read_text())
    raw["elapsed_s"] = 1e6  # the earlier invocations ran for days
    state_path.write_text(json.dumps(raw))
    out = tmp_path / "out"
    assert cli.main(["--resume", str(point), "--out", str(out), "--max-steps", "4", "--time-limit", "3600", "-q"]) == 0
    saved = list_checkpoints(out)
    assert [s for s, _ in saved] == [4]
    assert json.loads((saved[-1][1] / "trainer_state" / "state.json").read_text())["elapsed_s"] > 1e6  # total kept


def test_resume_of_a_checkpoint_with_the_flat_config_of_an_older_version(two_steps: Path, tmp_path: Path) -> None:
    point = tmp_path / "step"
    shutil.copytree(list_checkpoints(two_steps)[-1][1], point)
    state_path = point / "trainer_state" / "state.json"
    raw = json.loads(state_path.read_text())
    raw["config"] = {**to_flat(TrainConfig.from_dict(raw["config"])), "model": raw["config"]["model"]}  # old layout
    state_path.write_text(json.dumps(raw))
    out = tmp_path / "out"
    assert cli.main(["--resume", str(point), "--out", str(out), "--max-steps", "3", "-q"]) == 0
    resumed = json.loads((list_checkpoints(out)[-1][1] / "trainer_state" / "state.json").read_text())
    assert resumed["step"] == 3 and resumed["config"]["schedule"]["max_steps"] == 3
    assert resumed["config"]["data"]["seq_len"] == 64 and resumed["config"]["data"]["batch_size"] == 4
