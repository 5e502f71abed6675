"""Training in real subprocesses: SIGKILL in the middle of a save, and 2-process torchrun (gloo) runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from minigpt_core.checkpoint import load_checkpoint
from tests.training.helpers import base_args, write_jsonl
from tests.training.pref_data import pet_pairs
from training.state import list_checkpoints

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}
    env.pop("WORLD_SIZE", None)
    return env


# A trainer whose save of step 4 kills the process once the files are written, before the rename (a fault
# injected through training.state.SAVE_HOOKS: what a crash or SIGKILL mid-save leaves behind).
KILL_AT_STEP_4 = """
import os, signal, sys
from training import cli, state
state.SAVE_HOOKS.append(lambda step, tmp: os.kill(os.getpid(), signal.SIGKILL) if step == 4 else None)
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigkill_during_save_keeps_the_previous_checkpoint(train_workdir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [*base_args(train_workdir, train_workdir / "data", out), "--max-steps", "4", "--save-every", "2"]
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AT_STEP_4, *args, "--eval-every", "100"],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=120,
    )
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


def test_torchrun_two_processes_run_dpo(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A post-SFT stage under torchrun: each rank trains on its share of the pairs, rank 0 logs and saves."""
    pytest.importorskip("torch.distributed.run")
    data, out = tmp_path / "data", tmp_path / "dpo"
    write_jsonl(data / "dpo_train.jsonl", pet_pairs(32, seed=1))
    write_jsonl(data / "dpo_val.jsonl", pet_pairs(8, seed=2))
    args = ["--mode", "dpo", "--init", str(tiny_checkpoint), "--data", str(data), "--out", str(out), "-q"]
    args += ["--max-steps", "3", "--batch-size", "2", "--seq-len", "64", "--eval-every", "3", "--device", "cpu"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    rc = subprocess.run(
        [*cmd, "-m", "training.cli", *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=180
    )
    assert rc.returncode == 0, rc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_pref_acc" in r] == [0, 3]  # only rank 0 writes
    assert [s for s, _ in list_checkpoints(out)] == [3]
    load_checkpoint(out)
