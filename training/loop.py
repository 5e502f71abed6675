"""The one training loop of every stage, split into step / evaluate / save, plus the optimizer and its schedule.

What it is: `Stage` (what a stage supplies: `step()`, `evaluate()`, its data position and the files it saves),
`Run` (what the loop touches: config, runtime, run folder, optimizer, progress state), `fit` (step until
max_steps, the time limit or a SIGINT/SIGTERM; evaluate, log and save on schedule), `read_metrics` (the one
finite-loss check), `append_metrics` (metrics.jsonl and optional TensorBoard events), `save` (through the one
atomic, fsynced checkpoint writer, `training.state.save_training_checkpoint`), `lr_at` (linear warmup, cosine
decay to `min_lr_ratio` of the peak), `set_lr`, `build_optimizer` (AdamW, fused on CUDA, no decay on norms),
`clip_and_step` and `progress_bar`.
What it is not: any stage's loss or data (training.lm_stage for pretrain/SFT/LoRA, training.dpo,
training.reward_model, training.rlhf) or the building of a run (training.pipeline).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from minigpt_core.checkpoint import write_checkpoint_files
from minigpt_core.errors import ConfigError
from minigpt_core.tokenizer import Tokenizer
from training.config import TrainConfig
from training.errors import TrainingDiverged
from training.interrupt import stop_on_signals
from training.runtime import Runtime
from training.state import SERVABLE_FILES, TrainerState, list_checkpoints, save_training_checkpoint

logger = logging.getLogger(__name__)


class Stage:
    """One kind of training (pretrain/SFT, LoRA, DPO, reward model, GRPO) as the loop sees it.

    A subclass sets `cfg`, `model` (the raw module whose weights are saved), `tokenizer` and `optimizer`, and
    implements `step` and `evaluate`. `step` may return device tensors for "loss" and "grad_norm": the loop reads
    them (one host sync) only on logging and saving steps.
    """

    cfg: TrainConfig
    model: torch.nn.Module
    tokenizer: Tokenizer
    optimizer: torch.optim.Optimizer
    eval_at_start = True  # the post-SFT stages log a step-0 evaluation (the baseline of the run)
    tokens_per_step = 0  # target tokens per optimizer step over all ranks (0: not a token-counting stage)
    published: tuple[str, ...] = SERVABLE_FILES  # files copied to the top of the run folder after each save

    def step(self, step: int) -> dict[str, Any]:
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError

    def data_state(self) -> dict[str, Any]:
        """Where the stage is in its data (saved as the trainer state's `loader`), so a resume continues exactly."""
        return {}

    def load_data_state(self, state: dict[str, Any]) -> None:
        """Put the data position back (the inverse of `data_state`)."""

    def write_files(self, directory: Path) -> None:
        """Write the servable files of a checkpoint into `directory` (a temp directory of the atomic save)."""
        write_checkpoint_files(directory, self.model, self.tokenizer)  # type: ignore[arg-type]

    def session(self) -> contextlib.AbstractContextManager[Any]:
        """Held open while the loop runs (GRPO's rollout engine)."""
        return contextlib.nullcontext()


@dataclass
class Run:
    cfg: TrainConfig
    rt: Runtime
    run_dir: Path
    stage: Stage
    state: TrainerState = field(default_factory=TrainerState)
    stopped_by: int | None = None  # the signal that stopped `fit` early, if any


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine to min_lr_ratio."""
    peak, floor = cfg.optim.learning_rate, cfg.optim.learning_rate * cfg.optim.min_lr_ratio
    if step < cfg.optim.warmup_steps:
        return peak * (step + 1) / cfg.optim.warmup_steps
    span = max(1, cfg.schedule.max_steps - cfg.optim.warmup_steps)
    progress = min(1.0, (step - cfg.optim.warmup_steps) / span)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, step: int, cfg: TrainConfig) -> float:
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = device.type == "cuda"  # fused kernels are a CUDA win; CPU keeps the reference path
    return torch.optim.AdamW(groups, lr=cfg.optim.learning_rate, betas=(cfg.optim.beta1, cfg.optim.beta2), fused=fused)


def clip_and_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    grad_clip: float,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """Clip gradients (grad_clip <= 0: measure only), step, clear; returns the pre-clip norm as a device tensor.

    With a float16 `scaler` the gradients are unscaled first (so the clip and the norm are in true units), and a
    step whose gradients overflowed is skipped by the scaler, which lowers its scale; its norm is inf.
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def read_metrics(run: Run, m: dict[str, Any]) -> dict[str, Any]:
    """Turn a step's tensors into floats (one host sync) and stop the run if the loss or gradient blew up.

    Checked before every save, so a non-finite step is never written; on a GPU up to log_every - 1 steps may
    run between the blow-up and the check (their updates are discarded with the run). Under float16 loss scaling
    an overflowing gradient is not a divergence: the scaler skipped that step (grad_norm is logged as null and
    `loss_scale` shows the lowered scale).
    """
    values = torch.stack([torch.as_tensor(m["loss"]).double().cpu(), torch.as_tensor(m["grad_norm"]).double().cpu()])
    loss_value, grad_norm = values.tolist()
    scaler = run.rt.scaler
    if scaler is not None:
        out = {**m, "loss": loss_value, "grad_norm": grad_norm if math.isfinite(grad_norm) else None}
        if math.isfinite(loss_value):
            return {**out, "loss_scale": float(scaler.get_scale())}
    if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
        run.stage.optimizer.zero_grad(set_to_none=True)
        saved = list_checkpoints(run.run_dir)
        keep = f"the last good checkpoint is {saved[-1][1]}" if saved else "no checkpoint was saved yet"
        raise TrainingDiverged(
            f"training diverged at or before step {run.state.step}: loss={loss_value}, grad_norm={grad_norm} "
            f"(try a lower --learning-rate); stopped without saving, {keep}"
        )
    return {**m, "loss": loss_value, "grad_norm": grad_norm}


def save(run: Run) -> Path:
    """Save on rank 0 (weights and optimizer state are identical on every rank); all ranks wait."""
    stage, path = run.stage, None
    if run.rt.is_main:
        run.state.loader = stage.data_state()
        run.state.config = run.cfg.to_dict()
        path = save_training_checkpoint(
            run.run_dir, stage.write_files, stage.optimizer, run.state, keep_last=run.cfg.schedule.keep_last,
            published=stage.published,
        )  # fmt: skip
        logger.info("saved %s", path)
    run.rt.barrier()
    return path if path is not None else run.run_dir


def append_metrics(run: Run, record: dict[str, Any], tensorboard: Any = None) -> None:
    """One metrics.jsonl line (rank 0), and the same numbers as TensorBoard scalars when `--tensorboard` is on."""
    if run.rt.is_main:
        with open(run.run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
    if tensorboard is not None:
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                tensorboard.add_scalar(key, value, record["step"])


def open_tensorboard(cfg: TrainConfig, rt: Runtime) -> Any:
    """A `SummaryWriter` on `cfg.schedule.tensorboard` (rank 0), else None; a missing package is a ConfigError."""
    if cfg.schedule.tensorboard is None or not rt.is_main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch's wrapper needs the tensorboard package, an optional dependency
        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard") from exc
    return SummaryWriter(log_dir=cfg.schedule.tensorboard)


@contextlib.contextmanager
def progress_bar(total: int, initial: int = 0, *, enabled: bool = True) -> Iterator[tqdm]:
    """The step bar on stderr; while it is open, console log lines go through `tqdm.write` so they do not break it.

    Shown only where INFO logging is on (`-q` hides it) and `enabled` (rank 0).
    """
    enabled = enabled and logger.isEnabledFor(logging.INFO)
    bar = tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True, mininterval=0.5)
    try:
        with logging_redirect_tqdm() if enabled else contextlib.nullcontext():
            yield bar
    finally:
        bar.close()


def _evaluate(run: Run, record: dict[str, Any]) -> None:
    """Add the stage's validation metrics to `record`, keep the best val_loss, log the val_ numbers."""
    record.update(run.stage.evaluate())
    if "val_loss" in record:
        best = run.state.best_val_loss
        run.state.best_val_loss = record["val_loss"] if best is None else min(best, record["val_loss"])
    if run.rt.is_main:
        logger.info("step %d: %s", record["step"], _fmt({k: v for k, v in record.items() if k.startswith("val_")}))


def fit(run: Run) -> TrainerState:
    """Train until max_steps, the time limit or a SIGINT/SIGTERM, evaluating and saving on schedule.

    The time limit counts this invocation only (a resumed run gets the full limit again); `elapsed_s` in the
    state and metrics keeps the total. After a signal the step in flight (under torchrun without a time limit: the
    steps up to the next logging step) finishes, is logged and saved, and `run.stopped_by` holds the signal number
    (the caller plots and raises `TrainingInterrupted`).
    """
    rt, st, stage = run.rt, run.state, run.stage
    sch = run.cfg.schedule
    if stage.eval_at_start and st.step == 0:
        before: dict[str, Any] = {"step": 0}
        _evaluate(run, before)
        append_metrics(run, before)
    started, base_elapsed = time.monotonic(), st.elapsed_s
    tok_rate = 0.0
    last_t, last_step = time.perf_counter(), st.step
    tensorboard = open_tensorboard(run.cfg, rt)
    with (
        stop_on_signals() as stop,
        progress_bar(sch.max_steps, st.step, enabled=rt.is_main) as bar,
        contextlib.closing(tensorboard) if tensorboard is not None else contextlib.nullcontext(),
    ):
        while st.step < sch.max_steps:
            m = stage.step(st.step)
            st.step += 1
            st.tokens_seen += stage.tokens_per_step
            run_s = time.monotonic() - started
            st.elapsed_s = base_elapsed + run_s
            bar.update(1)
            last = st.step >= sch.max_steps
            # One collective for both flags, so every rank stops at the same step even if only one got the signal.
            # A collective is a host sync: under torchrun it runs every step only with a time limit; otherwise a
            # signal is agreed on at the next logging step, where the loop syncs anyway.
            if rt.distributed and sch.time_limit_s is None and not (last or st.step % max(sch.log_every, 1) == 0):
                over = signalled = 0.0
            else:
                flags = [float(sch.time_limit_s is not None and run_s > sch.time_limit_s), float(stop.requested)]
                over, signalled = rt.all_reduce_sum(flags)
            out_of_time, stopping = over > 0, signalled > 0
            checkpoint_due = st.step % sch.save_every == 0 or last or out_of_time or stopping
            eval_due = bool(sch.eval_every) and not stopping and (st.step % sch.eval_every == 0 or last or out_of_time)
            log_due = st.step % max(sch.log_every, 1) == 0 or st.step == 1 or last or eval_due or stopping
            if rt.device.type == "cuda" and not (log_due or checkpoint_due):
                continue  # no host sync: the GPU runs ahead while the next batch is prepared
            m = read_metrics(run, m)
            now = time.perf_counter()
            step_s = (now - last_t) / max(st.step - last_step, 1)
            last_t, last_step = now, st.step
            record: dict[str, Any] = {"step": st.step, **m}
            if stage.tokens_per_step:
                rate = stage.tokens_per_step / max(step_s, 1e-9)
                tok_rate = rate if tok_rate == 0.0 else 0.9 * tok_rate + 0.1 * rate
                bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{tok_rate:,.0f}", lr=f"{m['lr']:.2e}")
                record["tok_per_s"] = rate
            else:
                bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}")
                record["step_s"] = step_s
            record["elapsed_s"] = st.elapsed_s
            if eval_due:
                _evaluate(run, record)
            if log_due:
                append_metrics(run, record, tensorboard)
            if checkpoint_due:
                save(run)
            if stopping:
                run.stopped_by = stop.signum or signal.SIGTERM  # another rank's signal: report it as a TERM
                break
            if out_of_time:
                logger.info("time limit of %.0f s reached at step %d", sch.time_limit_s, st.step)
                break
    return st


def _fmt(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
