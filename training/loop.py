"""The training loop, split into step / evaluate / save, plus the learning-rate schedule and the optimizer.

What it is: `Trainer` (everything the loop touches), `lr_at` (linear warmup, cosine decay to `min_lr_ratio` of the
peak), `build_optimizer` (AdamW, fused on CUDA, no decay on norms), `train_step` (gradient accumulation over
micro-batches normalised by the number of target tokens across all ranks, float16 loss scaling, clipping, NaN/inf
guard), `evaluate` (validation loss and bits-per-byte), `save`, `progress_bar`, `steps_per_epoch` (for `--epochs`)
and `fit` (metrics.jsonl and optional TensorBoard events, eval/save cadence, time limit, a clean stop on
SIGINT/SIGTERM).
What it is not: building the run (tokenizer, model, data: `training.pipeline`) or parsing flags (`training.cli`).
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
import torch.nn.functional as F
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from minigpt_core.errors import ConfigError
from minigpt_core.model import MiniGPT
from minigpt_core.tokenizer import Tokenizer
from training.config import TrainConfig
from training.dataset import IGNORE_INDEX, DocumentSet, PackedLoader
from training.errors import TrainingDiverged
from training.interrupt import stop_on_signals
from training.runtime import Runtime
from training.state import TrainerState, list_checkpoints, save_training_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class Trainer:
    cfg: TrainConfig
    rt: Runtime
    run_dir: Path
    model: MiniGPT  # the raw module: saved, evaluated
    forward: torch.nn.Module  # what the step calls: the model, DDP-wrapped and/or compiled
    tokenizer: Tokenizer
    optimizer: torch.optim.Optimizer
    train_loader: PackedLoader
    val_docs: DocumentSet
    byte_lengths: torch.Tensor  # (V,) UTF-8 bytes per token id
    state: TrainerState = field(default_factory=TrainerState)
    stopped_by: int | None = None  # the signal that stopped `fit` early, if any

    @property
    def pack(self) -> str:
        return self.train_loader.pack


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine to min_lr_ratio."""
    peak, floor = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = device.type == "cuda"  # fused kernels are a CUDA win; CPU keeps the reference path
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=fused)


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


def train_step(tr: Trainer) -> dict[str, Any]:
    """One optimizer step over `grad_accum` micro-batches; raises TrainingDiverged on NaN/inf."""
    cfg, rt = tr.cfg, tr.rt
    batches = []
    for _ in range(cfg.grad_accum):
        batch = tr.train_loader.next_batch()
        assert batch is not None  # the training loader repeats forever
        batches.append(batch)
    n_local = float(sum(int((y != IGNORE_INDEX).sum()) for _, y in batches))
    n_global = rt.all_reduce_sum([n_local])[0]
    # DDP averages gradients over ranks, so each rank scales by world/N to get sum/N overall.
    scale = rt.world_size / max(n_global, 1.0)
    lr = lr_at(tr.state.step, cfg)
    for group in tr.optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=rt.device)
    for i, (x, y) in enumerate(batches):
        if rt.device.type == "cuda":  # pinned host memory lets the copy overlap the previous step's kernels
            x, y = x.pin_memory(), y.pin_memory()
        x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
        last = i == len(batches) - 1
        no_sync = getattr(tr.forward, "no_sync", None)
        sync_ctx = no_sync() if (rt.distributed and not last and no_sync) else contextlib.nullcontext()
        with sync_ctx:
            with rt.autocast():
                logits = tr.forward(x)  # (B, T, V) float32
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=IGNORE_INDEX, reduction="sum"
            )
            scaled = loss * scale
            (rt.scaler.scale(scaled) if rt.scaler is not None else scaled).backward()
        loss_sum += loss.detach()
    if rt.distributed:
        dist_loss = torch.stack([loss_sum.double()])
        torch.distributed.all_reduce(dist_loss)
        loss_sum = dist_loss[0]
    grad_norm = clip_and_step(tr.model, tr.optimizer, cfg.grad_clip, rt.scaler)
    # Device tensors: reading them is a host sync, so `fit` does it only every log_every steps on a GPU.
    return {"loss": loss_sum / max(n_global, 1.0), "lr": lr, "grad_norm": grad_norm, "tokens": n_global}


def read_metrics(tr: Trainer, m: dict[str, Any]) -> dict[str, float]:
    """Turn a step's tensors into floats (one host sync) and stop the run if the loss or gradient blew up.

    Checked before every save, so a non-finite step is never written; on a GPU up to log_every - 1 steps may
    run between the blow-up and the check (their updates are discarded with the run). Under float16 loss scaling
    an overflowing gradient is not a divergence: the scaler skipped that step (grad_norm is logged as null and
    `loss_scale` shows the lowered scale).
    """
    values = torch.stack([torch.as_tensor(m["loss"]).double().cpu(), torch.as_tensor(m["grad_norm"]).double().cpu()])
    loss_value, grad_norm = values.tolist()
    scaler = tr.rt.scaler
    if scaler is not None:
        out = {**m, "loss": loss_value, "grad_norm": grad_norm if math.isfinite(grad_norm) else None}
        if math.isfinite(loss_value):
            return {**out, "loss_scale": float(scaler.get_scale())}
    if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
        tr.optimizer.zero_grad(set_to_none=True)
        saved = list_checkpoints(tr.run_dir)
        keep = f"the last good checkpoint is {saved[-1][1]}" if saved else "no checkpoint was saved yet"
        raise TrainingDiverged(
            f"training diverged at or before step {tr.state.step}: loss={loss_value}, grad_norm={grad_norm} "
            f"(try a lower --learning-rate); stopped without saving, {keep}"
        )
    return {**m, "loss": loss_value, "grad_norm": grad_norm}


def evaluate(tr: Trainer) -> dict[str, float]:
    """Validation loss (nats per target token) and bits per byte over up to `eval_batches` batches."""
    cfg = tr.cfg
    return evaluate_docs(
        tr.model,
        tr.val_docs,
        tr.rt,
        tr.byte_lengths,
        pack=tr.pack,
        seq_len=cfg.seq_len,
        batch_size=cfg.batch_size,
        max_batches=cfg.eval_batches,
    )


@torch.no_grad()
def evaluate_docs(
    model: torch.nn.Module,
    docs: DocumentSet,
    rt: Runtime,
    byte_lengths: torch.Tensor,
    *,
    pack: str,
    seq_len: int,
    batch_size: int,
    max_batches: int | None = None,
) -> dict[str, float]:
    """Loss and bits-per-byte of `model` over `docs` (this rank's share, summed over ranks); {} if empty."""
    loader = PackedLoader(
        docs, seq_len, batch_size, pack=pack, shuffle=False, repeat=False, rank=rt.rank, world_size=rt.world_size
    )
    was_training = model.training
    model.eval()
    byte_lengths = byte_lengths.to(rt.device)
    nats = tokens = byte_nats = n_bytes = 0.0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, y = x.to(rt.device), y.to(rt.device)
        with rt.autocast():
            logits = model(x)
        per_token = F.cross_entropy(
            logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=IGNORE_INDEX, reduction="none"
        )
        valid = y.view(-1) != IGNORE_INDEX
        tb = byte_lengths[y.view(-1).clamp(min=0)] * valid  # special tokens count 0 bytes (and are left out)
        nats += float(per_token[valid].sum())
        tokens += float(valid.sum())
        byte_nats += float(per_token[tb > 0].sum())
        n_bytes += float(tb.sum())
    model.train(was_training)
    nats, tokens, byte_nats, n_bytes = rt.all_reduce_sum([nats, tokens, byte_nats, n_bytes])
    if tokens == 0:
        return {}
    bpb = byte_nats / (math.log(2) * n_bytes) if n_bytes else float("nan")
    return {"val_loss": nats / tokens, "val_bpb": bpb, "val_tokens": tokens}


def save(tr: Trainer) -> Path | None:
    """Save on rank 0 (weights and optimizer state are identical on every rank); all ranks wait."""
    path = None
    if tr.rt.is_main:
        tr.state.loader = tr.train_loader.state_dict()
        tr.state.config = tr.cfg.to_dict()
        path = save_training_checkpoint(
            tr.run_dir, tr.model, tr.tokenizer, tr.optimizer, tr.state, keep_last=tr.cfg.keep_last
        )
        logger.info("saved %s", path)
    tr.rt.barrier()
    return path


def append_metrics(tr: Trainer, record: dict[str, Any], tensorboard: Any = None) -> None:
    """One metrics.jsonl line (rank 0), and the same numbers as TensorBoard scalars when `--tensorboard` is on."""
    if tr.rt.is_main:
        with open(tr.run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
    if tensorboard is not None:
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                tensorboard.add_scalar(key, value, record["step"])


def open_tensorboard(cfg: TrainConfig, rt: Runtime) -> Any:
    """A `SummaryWriter` on `cfg.tensorboard` (rank 0), else None; a missing package is a ConfigError."""
    if cfg.tensorboard is None or not rt.is_main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch's wrapper needs the tensorboard package, an optional dependency
        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard") from exc
    return SummaryWriter(log_dir=cfg.tensorboard)


def steps_per_epoch(loader: PackedLoader, grad_accum: int) -> int:
    """Optimizer steps in one pass over this rank's share of the data, counted from document lengths only.

    Rows are counted the way `PackedLoader` fills them: a token stream cut every seq_len + 1 tokens (pretrain),
    or whole conversations packed greedily in the current epoch's order, a longer one truncated (SFT).
    """
    docs, need = loader.docs, loader.seq_len + 1
    lengths = [docs.length(int(i)) for i in loader.order()]
    if loader.pack == "stream":
        rows = math.ceil(sum(lengths) / need)
    else:
        rows = filled = 0
        for length in lengths:
            if filled and length > need - filled:
                rows, filled = rows + 1, 0
            filled += min(length, need)
            if filled == need:
                rows, filled = rows + 1, 0
        rows += filled > 0
    return max(1, math.ceil(math.ceil(rows / loader.batch_size) / grad_accum))


def apply_epochs(tr: Trainer) -> TrainConfig:
    """`cfg` with max_steps = epochs x steps per epoch (averaged over ranks); a warmup as long as the run shrinks."""
    cfg, rt = tr.cfg, tr.rt
    assert cfg.epochs is not None
    per_epoch = math.ceil(rt.all_reduce_sum([float(steps_per_epoch(tr.train_loader, cfg.grad_accum))])[0])
    per_epoch = max(1, math.ceil(per_epoch / rt.world_size))
    max_steps = max(1, math.ceil(cfg.epochs * per_epoch))
    warmup = cfg.warmup_steps if cfg.warmup_steps < max_steps else max(1, max_steps // 10)
    if rt.is_main:
        logger.info("--epochs %g: %d steps per epoch, %d steps (warmup %d)", cfg.epochs, per_epoch, max_steps, warmup)
    return cfg.replace(max_steps=max_steps, warmup_steps=warmup)


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


def fit(tr: Trainer) -> TrainerState:
    """Train until max_steps, the time limit or a SIGINT/SIGTERM, evaluating and saving on schedule.

    The time limit counts this invocation only (a resumed run gets the full limit again); `elapsed_s` in the
    state and metrics keeps the total. After a signal the step in flight (under torchrun without a time limit: the
    steps up to the next logging step) finishes, is logged and saved, and
    `tr.stopped_by` holds the signal number (the caller plots and raises `TrainingInterrupted`). With `epochs` set,
    max_steps is derived from the data first (`apply_epochs`).
    """
    if tr.cfg.epochs is not None:
        tr.cfg = apply_epochs(tr)
    cfg, rt, st = tr.cfg, tr.rt, tr.state
    tokens_per_step = cfg.tokens_per_step * rt.world_size
    started, base_elapsed = time.monotonic(), st.elapsed_s
    tok_rate = 0.0
    last_t, last_step = time.perf_counter(), st.step
    tensorboard = open_tensorboard(cfg, rt)
    with (
        stop_on_signals() as stop,
        progress_bar(cfg.max_steps, st.step, enabled=rt.is_main) as bar,
        contextlib.closing(tensorboard) if tensorboard is not None else contextlib.nullcontext(),
    ):
        while st.step < cfg.max_steps:
            m = train_step(tr)
            st.step += 1
            st.tokens_seen += tokens_per_step
            run_s = time.monotonic() - started
            st.elapsed_s = base_elapsed + run_s
            bar.update(1)
            last = st.step >= cfg.max_steps
            # One collective for both flags, so every rank stops at the same step even if only one got the signal.
            # A collective is a host sync: under torchrun it runs every step only with a time limit (as it always
            # has); otherwise a signal is agreed on at the next logging step, where the loop syncs anyway.
            if rt.distributed and cfg.time_limit_s is None and not (last or st.step % max(cfg.log_every, 1) == 0):
                over = signalled = 0.0
            else:
                flags = [float(cfg.time_limit_s is not None and run_s > cfg.time_limit_s), float(stop.requested)]
                over, signalled = rt.all_reduce_sum(flags)
            out_of_time, stopping = over > 0, signalled > 0
            checkpoint_due = st.step % cfg.save_every == 0 or last or out_of_time or stopping
            eval_due = bool(cfg.eval_every) and not stopping and (st.step % cfg.eval_every == 0 or last or out_of_time)
            log_due = st.step % max(cfg.log_every, 1) == 0 or st.step == 1 or last or eval_due or stopping
            if rt.device.type == "cuda" and not (log_due or checkpoint_due):
                continue  # no host sync: the GPU runs ahead while the next batch is prepared
            m = read_metrics(tr, m)
            now = time.perf_counter()
            rate = tokens_per_step * (st.step - last_step) / max(now - last_t, 1e-9)
            last_t, last_step = now, st.step
            tok_rate = rate if tok_rate == 0.0 else 0.9 * tok_rate + 0.1 * rate
            bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{tok_rate:,.0f}", lr=f"{m['lr']:.2e}")
            record: dict[str, Any] = {"step": st.step, **m, "tok_per_s": rate, "elapsed_s": st.elapsed_s}
            if eval_due:
                record.update(evaluate(tr))
                if "val_loss" in record and rt.is_main:
                    logger.info("step %d: val_loss %.4f, bpb %.4f", st.step, record["val_loss"], record["val_bpb"])
                    best = st.best_val_loss
                    st.best_val_loss = record["val_loss"] if best is None else min(best, record["val_loss"])
            if log_due:
                append_metrics(tr, record, tensorboard)
            if checkpoint_due:
                save(tr)
            if stopping:
                tr.stopped_by = stop.signum or signal.SIGTERM  # another rank's signal: report it as a TERM
                break
            if out_of_time:
                logger.info("time limit of %.0f s reached at step %d", cfg.time_limit_s, st.step)
                break
    return st
