"""LoRA SFT: `minigpt-train --mode sft --init BASE --lora-rank R`, training only adapter weights.

What it is: `run_lora_sft(cfg)`, which loads the --init checkpoint, freezes it, wraps the target projections
(`minigpt_core.lora.apply_lora`), trains on SFT data with the pretrain/SFT step and evaluation
(`training.loop.train_step`, `evaluate`) driven by the stages' loop (`training.stage.run_loop`), and saves the
adapter in HF PEFT's layout. The run folder:

    RUN/adapter_config.json adapter_model.safetensors   <- the latest adapter (PEFT, minigpt-serve --lora-modules)
    RUN/run_config.json metrics.jsonl loss.png
    RUN/checkpoints/step_0000100/{adapter_config.json, adapter_model.safetensors}   (the last --keep-last kept)

What it is not: resumable (like the other --init stages, start again from the base; the adapter is small), nor
distributed (single process), nor the LoRA arithmetic or file format (minigpt_core.lora).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

from minigpt_core.lora import CONFIG_FILE, WEIGHTS_FILE, adapter_from_model, apply_lora, parse_targets, save_adapter
from training.config import TrainConfig
from training.dataset import PackedLoader, load_datasets, resolve_data_files, token_byte_lengths
from training.errors import DataError
from training.loop import Trainer, build_optimizer, evaluate, train_step
from training.runtime import setup_runtime
from training.stage import StageRun, load_init, run_loop
from training.state import CHECKPOINTS_DIR, TrainerState, step_dir

logger = logging.getLogger(__name__)

ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE)


def run_lora_sft(cfg: TrainConfig) -> TrainerState:
    """Train a LoRA adapter on top of the frozen --init checkpoint; the run folder is a PEFT adapter directory."""
    rt = setup_runtime(cfg.device, cfg.dtype)
    model, tokenizer, cfg = load_init(cfg, required=True)
    run = StageRun.create(cfg, rt)
    cfg.save(run.run_dir / "run_config.json")
    files = resolve_data_files(cfg.data, "sft", cfg.val_data)
    train_docs, val_docs = load_datasets(files, "sft", tokenizer, cfg.max_bad_fraction)
    if len(train_docs) == 0:
        raise DataError("no training documents")
    model.to(rt.device)
    params = apply_lora(model, rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=parse_targets(cfg.lora_targets))
    optimizer = build_optimizer(model, cfg, rt.device)
    loader = PackedLoader(train_docs, cfg.seq_len, cfg.batch_size, pack="docs", seed=cfg.seed)
    trainer = Trainer(
        cfg=cfg,
        rt=rt,
        run_dir=run.run_dir,
        model=model,
        forward=model,
        tokenizer=tokenizer,
        optimizer=optimizer,
        train_loader=loader,
        val_docs=val_docs,
        byte_lengths=token_byte_lengths(tokenizer),
        state=run.state,
    )
    base = str(Path(cfg.init).resolve()) if cfg.init else None
    logger.info(
        "LoRA sft on %s: rank %d, alpha %g, %s; %d trainable of %d parameters, %d train / %d val documents",
        base,
        cfg.lora_rank,
        cfg.lora_alpha or cfg.lora_rank,
        cfg.lora_targets,
        sum(p.numel() for p in params),
        sum(p.numel() for p in model.parameters()),
        len(train_docs),
        len(val_docs),
    )

    def step() -> dict[str, float]:
        m = train_step(trainer)
        run.state.tokens_seen += int(m["tokens"])
        loss, grad_norm = (float(torch.as_tensor(m[key]).detach().cpu()) for key in ("loss", "grad_norm"))
        return {"loss": loss, "grad_norm": grad_norm, "lr": m["lr"]}

    def save() -> Path:
        target = save_adapter(step_dir(run.run_dir, run.state.step), adapter_from_model(model, base_model=base))
        publish_adapter(target, run.run_dir)
        prune_adapters(run.run_dir, cfg.keep_last)
        logger.info("saved %s", target)
        return target

    return run_loop(run, step, lambda: evaluate(trainer), save)


def publish_adapter(src: Path, run_dir: Path) -> None:
    """Replace RUN's adapter files, each atomically, with the new step's (hard links where possible)."""
    for name in ADAPTER_FILES:
        tmp = run_dir / f".{name}.tmp-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        try:
            os.link(src / name, tmp)
        except OSError:
            shutil.copy2(src / name, tmp)
        os.replace(tmp, run_dir / name)


def prune_adapters(run_dir: Path, keep_last: int) -> None:
    root = run_dir / CHECKPOINTS_DIR
    steps = sorted(d for d in root.glob("step_*") if (d / CONFIG_FILE).is_file())
    for d in steps[:-keep_last]:
        shutil.rmtree(d, ignore_errors=True)
