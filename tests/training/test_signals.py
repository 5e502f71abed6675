"""SIGINT / SIGTERM to a real `minigpt-train` process: the step in flight finishes, a complete checkpoint and the loss
plot are written, the exit code is 128 + the signal, and `--resume` continues from the saved step. Also: `-q` hides
the progress bar, and without it log lines are written through tqdm (each starts on a line of its own)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minigpt_core.checkpoint import load_checkpoint
from tests.training.helpers import base_args, write_jsonl
from tests.training.pref_data import pet_pairs
from training import cli
from training.state import list_checkpoints

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    return env


def _start(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "training.cli", *argv],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_step(run: Path, proc: subprocess.Popen[str], step: int = 1, timeout_s: float = 120.0) -> None:
    """Poll metrics.jsonl until a record of `step` (or later) is there: the trainer is inside its loop."""
    path, deadline = run / "metrics.jsonl", time.monotonic() + timeout_s
    while True:
        if path.is_file() and any(
            json.loads(line).get("step", 0) >= step for line in path.read_text().splitlines() if line.endswith("}")
        ):
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the trainer never logged a step")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[str], sig: int) -> str:
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return err


@pytest.mark.parametrize(("sig", "quiet"), [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_signal_saves_plots_and_resumes(train_workdir: Path, tmp_path: Path, sig: int, quiet: bool) -> None:
    out = tmp_path / "run"
    argv = [*base_args(train_workdir, train_workdir / "data", out), "--max-steps", "100000"]
    argv += ["--save-every", "100000", "--eval-every", "100000"]
    if not quiet:
        argv.remove("-q")
    proc = _start(argv)
    _wait_for_step(out, proc)
    err = _stop(proc, sig)
    assert proc.returncode == 128 + sig, err[-2000:]
    saved = list_checkpoints(out)
    assert len(saved) == 1, err[-2000:]
    step, path = saved[0]
    assert f"stopped by {signal.Signals(sig).name} at step {step}: saved {path}" in err
    state = json.loads((path / "trainer_state" / "state.json").read_text())
    assert state["step"] == step and (path / "trainer_state" / "optimizer.pt").is_file()
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == step
    assert (out / "loss.png").stat().st_size > 1000
    load_checkpoint(out)  # the run folder itself holds the saved step
    if quiet:
        assert "step/s" not in err and "%|" not in err, err[-2000:]
    else:
        assert "step/s" in err or "s/step" in err  # the bar was drawn ...
        for m in re.finditer(r"(INFO|WARNING) training", err):  # ... and every log line starts a line of its own
            assert m.start() == 0 or err[m.start() - 1] in "\r\n", repr(err[max(0, m.start() - 80) : m.end()])
        assert re.search(r"WARNING training\.interrupt: \w+ received: finishing this step", err)
    if sig == signal.SIGINT:  # --resume continues from the saved step (in process: no second torch import)
        assert cli.main(["--resume", str(out), "--max-steps", str(step + 2), "-q"]) == 0
        assert [s for s, _ in list_checkpoints(out)] == [step, step + 2]


def test_signal_stops_a_dpo_run_after_saving(tiny_checkpoint: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_jsonl(data / "dpo_train.jsonl", pet_pairs(40, seed=1))
    write_jsonl(data / "dpo_val.jsonl", pet_pairs(8, seed=2))
    out = tmp_path / "dpo"
    argv = ["--mode", "dpo", "--init", str(tiny_checkpoint), "--data", str(data), "--out", str(out)]
    argv += ["--max-steps", "100000", "--batch-size", "2", "--seq-len", "64", "--eval-every", "100000"]
    argv += ["--save-every", "100000", "--device", "cpu", "-q"]
    proc = _start(argv)
    _wait_for_step(out, proc)
    err = _stop(proc, signal.SIGINT)
    assert proc.returncode == 130, err[-2000:]
    saved = list_checkpoints(out)
    step = saved[0][0]
    assert len(saved) == 1 and f"stopped by SIGINT at step {step}" in err, err[-2000:]
    assert f"continue with --resume {out}" in err
    assert (out / "loss.png").is_file()
    load_checkpoint(out)
    assert cli.main(["--resume", str(out), "--max-steps", str(step + 2), "-q"]) == 0  # DPO resumes like pretrain
    assert [s for s, _ in list_checkpoints(out)] == [step, step + 2]
