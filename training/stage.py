"""What the post-SFT stages (DPO, reward model, GRPO) share: run setup, the step loop, metrics and checkpoints.

What it is: `StageRun` (config, runtime, run folder, progress state), `load_init` (the --init checkpoint, a fresh
model when none is given), `frozen_copy` (the reference model), `run_loop` (calls a stage's `step()` until
max_steps, the time limit or a SIGINT/SIGTERM, evaluates and saves on the usual cadence, appends metrics.jsonl
records and draws loss.png like the pretrain/SFT loop) and `save_stage` (the normal servable step directory +
trainer_state/, published at the top of the run folder, with optional extra files such as a reward head written
inside the same atomic save).
What it is not: any loss or data handling (training.dpo, training.reward, training.rlhf) and not the
pretrain/SFT loop (training.loop, whose `lr_at` and `build_optimizer` the stages reuse). Single process only:
these stages do not run under torchrun.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from minigpt_core.checkpoint import BUNDLED_TOKENIZER, load_checkpoint, save_checkpoint
from minigpt_core.model import MiniGPT
from minigpt_core.tokenizer import Tokenizer
from training.config import TrainConfig
from training.errors import TrainingDiverged, TrainingError
from training.interrupt import TrainingInterrupted, stop_on_signals
from training.loop import lr_at, progress_bar
from training.plot import plot_after_run
from training.runtime import Runtime, rng_state, seed_everything
from training.state import SERVABLE_FILES, TRAINER_STATE_DIR, TrainerState, clean_stale, prune, publish, step_dir

logger = logging.getLogger(__name__)

ExtraFiles = Callable[[Path], None]


@dataclass
class StageRun:
    cfg: TrainConfig
    rt: Runtime
    run_dir: Path
    state: TrainerState = field(default_factory=TrainerState)

    @classmethod
    def create(cls, cfg: TrainConfig, rt: Runtime) -> StageRun:
        if rt.distributed:
            raise TrainingError(f"--mode {cfg.mode} runs in a single process; launch it without torchrun")
        run_dir = Path(cfg.out_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        clean_stale(run_dir)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        seed_everything(cfg.seed)
        return cls(cfg, rt, run_dir, TrainerState(config=cfg.to_dict()))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def load_init(cfg: TrainConfig, *, required: bool) -> tuple[MiniGPT, Tokenizer, TrainConfig]:
    """The --init checkpoint's model and tokenizer (in train mode), or a fresh seeded model when allowed."""
    if cfg.init:
        model, tokenizer = load_checkpoint(cfg.init)
        cfg = cfg.replace(model=model.config, seq_len=min(cfg.seq_len, model.config.max_seq_len))
    elif required:
        raise TrainingError(f"--mode {cfg.mode} needs --init <checkpoint folder> (e.g. an SFT run)")
    else:
        tok_path = Path(cfg.tokenizer) if cfg.tokenizer else BUNDLED_TOKENIZER
        tokenizer = Tokenizer.from_dir(tok_path) if tok_path.is_dir() else Tokenizer.from_file(tok_path)
        if tokenizer.vocab_size != cfg.model.vocab_size:
            cfg = cfg.replace(model=cfg.model.replace(vocab_size=tokenizer.vocab_size))
        seed_everything(cfg.seed)
        model = MiniGPT(cfg.model)
    model.train()
    return model, tokenizer, cfg


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A detached copy in eval mode with no gradients: the reference policy."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def set_lr(optimizer: torch.optim.Optimizer, step: int, cfg: TrainConfig) -> float:
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def check_finite(run: StageRun, metrics: dict[str, float]) -> None:
    for key in ("loss", "grad_norm"):
        value = metrics.get(key)
        if value is not None and not (value == value and abs(value) != float("inf")):
            raise TrainingDiverged(f"{key} became {value} at step {run.state.step} (try a lower --learning-rate)")


def save_stage(
    run: StageRun,
    model: MiniGPT,
    tokenizer: Tokenizer,
    optimizer: torch.optim.Optimizer,
    extra: ExtraFiles | None = None,
) -> Path:
    """RUN/checkpoints/step_N (servable files, extra files, trainer_state/) atomically; publish; prune."""
    state = run.state

    def add_files(tmp: Path) -> None:
        if extra is not None:
            extra(tmp)
        sd = tmp / TRAINER_STATE_DIR
        sd.mkdir()
        torch.save(optimizer.state_dict(), sd / "optimizer.pt")
        torch.save(rng_state(), sd / "rng.pt")
        (sd / "state.json").write_text(json.dumps(asdict(state), indent=2) + "\n", encoding="utf-8")

    target = save_checkpoint(step_dir(run.run_dir, state.step), model, tokenizer, extra=add_files)
    publish(target, run.run_dir)
    for f in target.iterdir():  # extra files (a reward head) are published next to the servable ones
        if f.is_file() and f.name not in SERVABLE_FILES:
            tmp = run.run_dir / f".{f.name}.tmp-{os.getpid()}"
            tmp.write_bytes(f.read_bytes())
            os.replace(tmp, run.run_dir / f.name)
    prune(run.run_dir, run.cfg.keep_last)
    logger.info("saved %s", target)
    return target


def run_loop(
    run: StageRun,
    step: Callable[[], dict[str, float]],
    evaluate: Callable[[], dict[str, float]],
    save: Callable[[], Path],
) -> TrainerState:
    """Evaluate once before training (step 0), then step until max_steps, the time limit or a SIGINT/SIGTERM;
    save at the end and draw the loss plot. After a signal the step in flight finishes and is saved, then
    `TrainingInterrupted` is raised (these stages cannot be resumed: the message says where the weights are)."""
    cfg, st = run.cfg, run.state
    before = evaluate()
    run.append_metrics({"step": 0, **before})
    logger.info("before training: %s", _fmt(before))
    started = time.monotonic()
    saved: Path | None = None
    stopping = False
    with stop_on_signals() as stop, progress_bar(cfg.max_steps) as bar:
        while st.step < cfg.max_steps:
            t0 = time.perf_counter()
            metrics = step()
            check_finite(run, metrics)
            st.step += 1
            st.elapsed_s = time.monotonic() - started
            bar.update(1)
            bar.set_postfix({k: f"{metrics[k]:.3f}" for k in list(metrics)[:3]})
            last = st.step >= cfg.max_steps
            out_of_time = cfg.time_limit_s is not None and st.elapsed_s > cfg.time_limit_s
            stopping = stop.requested
            record: dict[str, Any] = {"step": st.step, **metrics, "step_s": time.perf_counter() - t0}
            eval_due = bool(cfg.eval_every) and not stopping and (st.step % cfg.eval_every == 0 or last or out_of_time)
            if eval_due:
                record.update(evaluate())
                logger.info("step %d: %s", st.step, _fmt({k: v for k, v in record.items() if k.startswith("val_")}))
            if st.step % max(cfg.log_every, 1) == 0 or st.step == 1 or last or out_of_time or eval_due or stopping:
                run.append_metrics(record)
            if st.step % cfg.save_every == 0 or last or out_of_time or stopping:
                saved = save()
            if stopping or out_of_time:
                if out_of_time and not stopping:
                    logger.info("time limit of %.0f s reached at step %d", cfg.time_limit_s, st.step)
                break
    plot_after_run(run.run_dir)
    if stopping and stop.signum is not None:
        raise TrainingInterrupted(stop.signum, st.step, saved, resumable=False)
    return st


def _fmt(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
