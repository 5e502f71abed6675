"""Training in real subprocesses: SIGKILL in the middle of a save, and a 2-process torchrun (gloo) run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minigpt_core.checkpoint import load_checkpoint
from tests.training.helpers import base_args
from training.state import PAUSE_ENV, list_checkpoints

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}
    env.pop("WORLD_SIZE", None)
    return env


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the save never reached the pause hook")
        time.sleep(0.05)


def test_sigkill_during_save_keeps_the_previous_checkpoint(train_workdir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [*base_args(train_workdir, train_workdir / "data", out), "--max-steps", "4", "--save-every", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.cli", *args, "--eval-every", "100"],
        cwd=ROOT,
        env=_env(**{PAUSE_ENV: "4"}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _wait_for(out / ".save-paused", proc)  # step 4's files are written, not yet renamed into place
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert [s for s, _ in list_checkpoints(out)] == [2]
    leftovers = [d.name for d in (out / "checkpoints").iterdir() if d.name.startswith(".")]
    assert leftovers, "the interrupted save should have left its temp directory behind"
    model, _ = load_checkpoint(out / "checkpoints" / "step_0000002")
    assert model.config.n_layer == 2
    load_checkpoint(out)  # the top-level servable files are those of step 2
    # Resuming the run folder picks step 2, cleans up and finishes.
    rc = subprocess.run(
        [sys.executable, "-m", "training.cli", "--resume", str(out), "-q"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rc.returncode == 0, rc.stderr
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]
    assert not [d for d in (out / "checkpoints").iterdir() if d.name.startswith(".")]


def test_torchrun_two_processes_on_cpu(train_workdir: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch.distributed.run")
    out = tmp_path / "ddp"
    args = [*base_args(train_workdir, train_workdir / "data", out), "--max-steps", "6", "--eval-every", "3"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    rc = subprocess.run(
        [*cmd, "-m", "training.cli", *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=180
    )
    assert rc.returncode == 0, rc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [3, 6]
    assert len({r["step"] for r in records}) == len(records)  # only rank 0 writes
    assert records[-1]["loss"] < records[0]["loss"]
    state = json.loads((list_checkpoints(out)[-1][1] / "trainer_state" / "state.json").read_text())
    assert state["loader"]["world_size"] == 2 and state["tokens_seen"] == 6 * 2 * 4 * 64
    load_checkpoint(out)
