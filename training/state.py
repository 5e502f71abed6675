"""Training checkpoints on disk: servable directory + `trainer_state/`, written atomically, last N kept.

Layout of a run folder:

    RUN/run_config.json  metrics.jsonl  loss.png
    RUN/config.json model.safetensors tokenizer*.json generation_config.json   <- latest save, servable as is
    RUN/checkpoints/step_0000500/{servable files, trainer_state/{state.json, optimizer.pt, rng.pt}}

Each step directory is built in a temp directory, fsynced and renamed into place
(minigpt_core.checkpoint.write_dir_atomically),
so a crash or SIGKILL mid-save leaves the previous checkpoints untouched; the top-level servable files are then
hard-linked (or copied) over one by one with `os.replace`. Everything loads without unpickling arbitrary objects
(`torch.load(weights_only=True)`).
What it is not: the loop's policy of when to save (training.loop) or the model file format (minigpt_core).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from minigpt_core.checkpoint import load_checkpoint, write_dir_atomically
from minigpt_core.lora import WEIGHTS_FILE as ADAPTER_WEIGHTS
from minigpt_core.lora import LoRAWeights, read_adapter
from minigpt_core.model import MiniGPT
from minigpt_core.tokenizer import Tokenizer
from training.errors import ResumeError
from training.runtime import rng_state

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_DIR = "trainer_state"
SERVABLE_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
)
WEIGHT_FILES = ("model.safetensors", ADAPTER_WEIGHTS)  # a full checkpoint or a LoRA adapter
_STEP_RE = re.compile(r"^step_(\d+)$")
# Called as hook(step, temp_dir) once a checkpoint's files are written and fsynced, before the rename that
# publishes them: the place where tests inject a fault (a crash mid-save). Empty in normal runs.
SAVE_HOOKS: list[Callable[[int, Path], None]] = []


@dataclass
class TrainerState:
    """The non-tensor part of the trainer state (state.json)."""

    step: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    loader: dict[str, Any] = field(default_factory=dict)
    best_val_loss: float | None = None
    config: dict[str, Any] = field(default_factory=dict)


_REQUIRED_STATE_KEYS = {"step", "loader", "config"}
_STATE_TYPES: dict[str, type | tuple[type, ...]] = {
    "step": int,
    "tokens_seen": int,
    "elapsed_s": (int, float),
    "loader": dict,
    "best_val_loss": (int, float, type(None)),
    "config": dict,
}


@dataclass
class LoadedCheckpoint:
    path: Path
    model: MiniGPT
    tokenizer: Tokenizer
    state: TrainerState
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    adapter: LoRAWeights | None = None  # a LoRA run's checkpoint: `model` is then its --init base


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS_DIR / f"step_{step:07d}"


def save_training_checkpoint(
    run_dir: Path,
    write_files: Callable[[Path], None],
    optimizer: torch.optim.Optimizer,
    state: TrainerState,
    keep_last: int,
    published: Sequence[str] = SERVABLE_FILES,
) -> Path:
    """Write RUN/checkpoints/step_N atomically (`write_files(tmp)` puts the servable files in, then
    trainer_state/; all fsynced before the rename), publish `published` at the top level, prune old steps."""

    def fill(tmp: Path) -> None:
        write_files(tmp)
        sd = tmp / TRAINER_STATE_DIR
        sd.mkdir()
        torch.save(optimizer.state_dict(), sd / "optimizer.pt")
        torch.save(rng_state(), sd / "rng.pt")
        (sd / "state.json").write_text(json.dumps(asdict(state), indent=2) + "\n", encoding="utf-8")
        for f in sd.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        for hook in SAVE_HOOKS:
            hook(state.step, tmp)

    target = write_dir_atomically(step_dir(run_dir, state.step), fill)
    publish(target, run_dir, published)
    prune(run_dir, keep_last)
    return target


def publish(src: Path, run_dir: Path, names: Sequence[str] = SERVABLE_FILES) -> None:
    """Make RUN itself servable: replace each top-level file atomically with the new step's copy."""
    for name in names:
        if not (src / name).exists():
            continue
        tmp = run_dir / f".{name}.tmp-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        try:
            os.link(src / name, tmp)  # no extra disk space; survives pruning of src
        except OSError:
            shutil.copy2(src / name, tmp)
        os.replace(tmp, run_dir / name)


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete step directories of a run, oldest first."""
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _STEP_RE.match(d.name)
        weights = any((d / name).is_file() for name in WEIGHT_FILES)
        if m and (d / TRAINER_STATE_DIR / "state.json").is_file() and weights:
            found.append((int(m.group(1)), d))
    return sorted(found)


def prune(run_dir: Path, keep_last: int) -> None:
    for _, d in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(d, ignore_errors=True)


def clean_stale(run_dir: Path) -> None:
    """Remove temp directories left by a save that was killed."""
    root = run_dir / CHECKPOINTS_DIR
    if root.is_dir():
        for d in root.iterdir():
            if d.name.startswith(".") and (".tmp-" in d.name or ".old-" in d.name):
                logger.info("removing the leftovers of an interrupted save: %s", d)
                shutil.rmtree(d, ignore_errors=True)
    for f in run_dir.glob(".*.tmp-*"):
        f.unlink(missing_ok=True)


def find_resume_point(path: str | Path) -> Path:
    """A step directory to resume from: `path` itself, or the newest complete one of the run at `path`."""
    p = Path(path)
    if (p / TRAINER_STATE_DIR / "state.json").is_file():
        return p
    found = list_checkpoints(p)
    if not found:
        raise ResumeError(f"{p}: no checkpoint with trainer_state to resume from")
    return found[-1][1]


def trained_seq_len(model_dir: str | Path) -> int | None:
    """The row length a checkpoint written by minigpt-train was trained with, or None when it does not say.

    A step directory records it in trainer_state/state.json, a run folder in run_config.json.
    """
    root = Path(model_dir)

    def seq_len_of(config: dict[str, Any]) -> Any:  # nested (data.seq_len) or, from older versions, flat
        return config["data"].get("seq_len") if isinstance(config.get("data"), dict) else config.get("seq_len")

    for path, pick in (
        (root / TRAINER_STATE_DIR / "state.json", lambda d: seq_len_of(d.get("config", {}))),
        (root / "run_config.json", seq_len_of),
    ):
        try:
            value = pick(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, RecursionError, AttributeError):
            continue
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def run_dir_of(step_path: Path) -> Path:
    """RUN for RUN/checkpoints/step_N."""
    if step_path.parent.name == CHECKPOINTS_DIR:
        return step_path.parent.parent
    return step_path


def read_trainer_state(step_path: Path) -> TrainerState:
    """`trainer_state/state.json` of a step directory, checked key by key; ResumeError names the file."""
    path = step_path / TRAINER_STATE_DIR / "state.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ResumeError(f"{path}: cannot read the trainer state ({_one_line(exc)})") from exc
    except (ValueError, RecursionError) as exc:
        raise ResumeError(f"{path}: not valid JSON ({_one_line(exc)})") from exc
    if not isinstance(raw, dict):
        raise ResumeError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    known = {f.name for f in fields(TrainerState)}
    unknown, missing = sorted(set(raw) - known), sorted(_REQUIRED_STATE_KEYS - set(raw))
    if unknown or missing:
        parts = [f"unknown keys {', '.join(unknown)}"] if unknown else []
        parts += [f"missing {', '.join(missing)}"] if missing else []
        raise ResumeError(f"{path}: not a trainer state ({'; '.join(parts)})")
    for key, kinds in _STATE_TYPES.items():
        if key in raw and (not isinstance(raw[key], kinds) or isinstance(raw[key], bool)):
            raise ResumeError(f"{path}: {key!r} has the wrong type ({type(raw[key]).__name__})")
    loader = raw["loader"]
    packed = raw["config"].get("mode", "pretrain") in ("pretrain", "sft")  # the other stages keep other positions
    for key in ("epoch", "cursor", "offset") if packed else ():
        value = loader.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ResumeError(f"{path}: loader position {key!r} must be a non-negative integer, got {value!r}")
    if raw["step"] < 0:
        raise ResumeError(f"{path}: 'step' must be >= 0, got {raw['step']}")
    return TrainerState(**raw)


def _load_tensor_file(path: Path) -> dict[str, Any]:
    """A trainer-state `.pt` file that loads without unpickling code (weights_only), as a dict."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways (pickle, zip, EOF, weights_only); all mean "unreadable"
        raise ResumeError(f"{path}: not a plain tensor file ({_one_line(exc)})") from exc
    if not isinstance(obj, dict):
        raise ResumeError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return obj


def _one_line(exc: BaseException) -> str:
    """The first line of an exception message (torch's weights_only errors run to a dozen lines)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_training_checkpoint(path: Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Weights, tokenizer, state, optimizer and RNG state of a step directory; ResumeError on any bad file."""
    sd = path / TRAINER_STATE_DIR
    state = read_trainer_state(path)
    optimizer = _load_tensor_file(sd / "optimizer.pt")
    if not isinstance(optimizer.get("state"), dict) or not isinstance(optimizer.get("param_groups"), list):
        raise ResumeError(f"{sd / 'optimizer.pt'}: not an optimizer state (no 'state' and 'param_groups')")
    rng = _load_tensor_file(sd / "rng.pt")
    if not isinstance(rng.get("torch"), torch.Tensor) or not {"python", "numpy", "numpy_pos"} <= set(rng):
        raise ResumeError(f"{sd / 'rng.pt'}: not an RNG state (needs python, torch, numpy and numpy_pos)")
    adapter = None
    if not (path / "model.safetensors").is_file() and (path / ADAPTER_WEIGHTS).is_file():
        adapter = read_adapter(path)  # a LoRA step directory holds the adapter; the base is the run's --init
        base = state.config.get("init")
        if not isinstance(base, str) or not Path(base).is_dir():
            raise ResumeError(f"{path}: a LoRA checkpoint, but its base (--init {base}) is not there")
        model, tokenizer = load_checkpoint(base, device=device)
    else:
        model, tokenizer = load_checkpoint(path, device=device)
    model.train()
    return LoadedCheckpoint(path, model, tokenizer, state, optimizer, rng, adapter)
