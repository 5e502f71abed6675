"""Builds a run from a resolved TrainConfig and trains it: the one path of every mode, new or resumed.

What it is: `run_training(cfg, resume_from=None)`, the one function behind `minigpt-train`. It prepares the run
folder, loads the checkpoint to resume from, has the mode's builder make its `training.loop.Stage` (pretrain and
SFT here, `build_lm_stage`, LoRA included; DPO, reward model and GRPO in their modules), writes run_config.json,
restores optimizer, data position and RNG when resuming, runs `training.loop.fit`, draws the loss plot and turns a
signal into `TrainingInterrupted`. For pretrain/SFT it also picks the tokenizer (resumed or `--init` checkpoint's,
`--tokenizer`, a new one with `--retrain-tokenizer`, else the bundled one), builds or loads the model and
tokenizes the data (rank 0 first under torchrun).
What it is not: argument parsing (training.cli), the loop (training.loop) or a stage's loss.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from minigpt_core.chat_template import tool_call_text
from minigpt_core.checkpoint import load_checkpoint
from minigpt_core.errors import ConfigError
from minigpt_core.lora import apply_lora, parse_targets
from minigpt_core.model import MiniGPT
from minigpt_core.resources import BUNDLED_TOKENIZER
from minigpt_core.tokenizer import Tokenizer, train_tokenizer
from training.config import TrainConfig
from training.errors import DataError, ResumeError
from training.interrupt import TrainingInterrupted
from training.lm_stage import LMStage, LoRAStage, load_adapter_weights
from training.loader import (
    DataFiles,
    DocumentSet,
    PackedLoader,
    load_datasets,
    resolve_data_files,
    token_byte_lengths,
    training_files,
)
from training.loop import Run, Stage, build_optimizer, fit
from training.plaintext import is_text_file, iter_text_pieces
from training.plot import plot_after_run
from training.precision import MasterWeights
from training.runtime import Runtime, seed_everything, set_rng_state, setup_runtime
from training.shards import iter_lines
from training.stage import distribute
from training.state import (
    TRAINER_STATE_DIR,
    LoadedCheckpoint,
    TrainerState,
    clean_stale,
    load_training_checkpoint,
    step_dir,
)

logger = logging.getLogger(__name__)

PACKING = {"pretrain": "stream", "sft": "docs"}  # pretrain packs a token stream; SFT keeps conversations whole


def tokenizer_texts(files: list[Path]) -> Iterator[str]:
    """Every text a tokenizer should learn from: pretrain `text` and plain-text files, SFT message contents and
    reasoning."""
    for path in files:
        if is_text_file(path):
            yield from (piece.text for piece in iter_text_pieces(path) if piece.text)
            continue
        for _, obj, _err in iter_lines(path):
            if obj is None:
                continue
            if isinstance(obj.get("text"), str):
                yield obj["text"]
            messages = [*(obj.get("conversations") or []), *(obj.get("chosen") or []), *(obj.get("rejected") or [])]
            for message in messages:
                if isinstance(message, dict):
                    for key in ("content", "reasoning_content"):
                        if isinstance(message.get(key), str):
                            yield message[key]
                    yield from _tool_texts(message)


def _tool_texts(message: dict[str, Any]) -> Iterator[str]:
    """The JSON a rendered conversation shows for offered tools and tool calls (names like `export_podcast`
    must be split by merges learned from training text, not left to whatever the other texts happen to teach)."""
    for tool in message.get("tools") or []:
        if isinstance(tool, dict):
            yield json.dumps(tool, ensure_ascii=False)
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            arguments = function.get("arguments")
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments, ensure_ascii=False)
            yield tool_call_text(function.get("name"), arguments)


def choose_tokenizer(cfg: TrainConfig, files: DataFiles, rt: Runtime, run_dir: Path) -> Tokenizer:
    if cfg.init and cfg.data.retrain_tokenizer:
        raise ConfigError("--retrain-tokenizer cannot be combined with --init (the weights belong to its tokenizer)")
    if cfg.init:
        return Tokenizer.from_dir(cfg.init)
    if cfg.data.tokenizer:
        path = Path(cfg.data.tokenizer)
        return Tokenizer.from_dir(path) if path.is_dir() else Tokenizer.from_file(path)
    retrain = cfg.data.retrain_tokenizer
    if not retrain and not BUNDLED_TOKENIZER.is_file():
        logger.warning("the bundled tokenizer %s is missing: training one on the data instead", BUNDLED_TOKENIZER)
        retrain = True
    if retrain:
        target = run_dir / ".tokenizer" / "tokenizer.json"
        # From a folder, learn from every training file (pretrain, SFT, DPO) so later stages are covered too.
        folder = files.train[0].parent
        sources = files.train
        if cfg.data.path is None or Path(cfg.data.path).is_dir():
            sources = training_files(folder)
        if rt.is_main:
            logger.info("training a %d-token tokenizer on %s", cfg.model.vocab_size, ", ".join(map(str, sources)))
            train_tokenizer(tokenizer_texts(sources), cfg.model.vocab_size).save(target.parent)
        rt.barrier()
        return Tokenizer.from_file(target)
    return Tokenizer.from_file(BUNDLED_TOKENIZER)


def build_model(cfg: TrainConfig, tokenizer: Tokenizer) -> tuple[MiniGPT, TrainConfig]:
    """A fresh model (seeded) or the --init checkpoint's weights; returns the config with the real model shape."""
    if cfg.init:
        model, _ = load_checkpoint(cfg.init)
        if model.config != cfg.model:
            logger.info("--init: using the checkpoint's model shape instead of the %s preset", cfg.config_name)
        cfg = cfg.replace(model=model.config)
    else:
        if tokenizer.vocab_size != cfg.model.vocab_size:
            logger.info("vocab_size %d -> %d to match the tokenizer", cfg.model.vocab_size, tokenizer.vocab_size)
            cfg = cfg.replace(model=cfg.model.replace(vocab_size=tokenizer.vocab_size))
        seed_everything(cfg.runtime.seed)
        model = MiniGPT(cfg.model)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ConfigError(f"tokenizer has {tokenizer.vocab_size} tokens, the model only {model.config.vocab_size}")
    model.train()
    return model, cfg


def _datasets(cfg: TrainConfig, files: DataFiles, tokenizer: Tokenizer, rt: Runtime) -> tuple[DocumentSet, ...]:
    # Rank 0 tokenizes (and caches) first, so the other ranks only open the memmaps.
    if rt.is_main:
        train, val = load_datasets(files, cfg.mode, tokenizer, cfg.data.max_bad_fraction)
    rt.barrier()
    if not rt.is_main:
        train, val = load_datasets(files, cfg.mode, tokenizer, cfg.data.max_bad_fraction)
    if len(train) == 0:
        raise DataError("no training documents")
    return train, val


def _prepare_run_dir(cfg: TrainConfig, rt: Runtime, fresh: bool) -> Path:
    """RUN created, the leftovers of a killed save removed; a new run starts a new metrics.jsonl."""
    run_dir = Path(cfg.out_dir)
    if rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        clean_stale(run_dir)
        if fresh:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    rt.barrier()
    return run_dir


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """On resume, forget metrics logged after the checkpoint (they will be produced again)."""
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= step]
        path.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")


def _restore(loaded: LoadedCheckpoint, stage: Stage) -> None:
    """Put the optimizer, data position and RNG back where the checkpoint left them; ResumeError names the file."""
    sd = loaded.path / TRAINER_STATE_DIR
    try:
        stage.optimizer.load_state_dict(loaded.optimizer)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
        raise ResumeError(f"{sd / 'optimizer.pt'}: does not fit this model's optimizer ({exc})") from exc
    try:
        stage.load_data_state(loaded.state.loader)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ResumeError(f"{sd / 'state.json'}: not a usable data position ({exc})") from exc
    try:
        set_rng_state(loaded.rng)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
        raise ResumeError(f"{sd / 'rng.pt'}: not a usable RNG state ({exc})") from exc


def run_training(cfg: TrainConfig, resume_from: Path | None = None) -> TrainerState:
    """Train per `cfg` (any mode); with `resume_from` (a step directory) continue that checkpoint exactly."""
    rt = setup_runtime(cfg.runtime.device, cfg.runtime.dtype)
    try:
        return _run(cfg, rt, resume_from)
    finally:
        rt.shutdown()


def _run(cfg: TrainConfig, rt: Runtime, resume_from: Path | None) -> TrainerState:
    run_dir = _prepare_run_dir(cfg, rt, fresh=resume_from is None)
    loaded = load_training_checkpoint(resume_from) if resume_from is not None else None
    stage = _builder(cfg.mode)(cfg, rt, run_dir, loaded)
    if rt.is_main:
        stage.cfg.save(run_dir / "run_config.json")
    cfg = stage.resolve_length() if isinstance(stage, LMStage) else stage.cfg
    state = TrainerState(config=cfg.to_dict())
    if loaded is not None:
        _restore(loaded, stage)
        state = loaded.state
        if rt.is_main:
            _truncate_metrics(run_dir, state.step)
        logger.info("resuming from %s at step %d", loaded.path, state.step)
    run = Run(cfg, rt, run_dir, stage, state)
    with stage.session():
        final = fit(run)
    if rt.is_main and isinstance(stage, LMStage) and stage.loader.truncated:
        logger.warning("%d conversations were longer than --seq-len and were truncated", stage.loader.truncated)
    if rt.is_main:
        plot_after_run(run_dir)
    if run.stopped_by is not None:
        raise TrainingInterrupted(run.stopped_by, final.step, step_dir(run_dir, final.step), resumable=True)
    return final


Builder = Callable[[TrainConfig, Runtime, Path, "LoadedCheckpoint | None"], Stage]


def _builder(mode: str) -> Builder:
    """The function that builds the stage of `mode` (imported on demand: each pulls in its own dependencies)."""
    if mode in ("pretrain", "sft"):
        return build_lm_stage
    if mode == "dpo":
        from training.dpo import build_dpo

        return build_dpo
    if mode == "reward":
        from training.reward_model import build_reward

        return build_reward
    from training.rlhf import build_grpo

    return build_grpo


def build_lm_stage(cfg: TrainConfig, rt: Runtime, run_dir: Path, loaded: LoadedCheckpoint | None) -> LMStage:
    """Pretrain / SFT: tokenizer, model (fresh, --init or resumed), data, optimizer; a LoRA adapter with
    --lora-rank."""
    files = resolve_data_files(cfg.data.path, cfg.mode, cfg.data.val_data)
    if loaded is not None:
        model, tokenizer = loaded.model, loaded.tokenizer
        cfg = cfg.replace(model=model.config)
    else:
        tokenizer = choose_tokenizer(cfg, files, rt, run_dir)
        model, cfg = build_model(cfg, tokenizer)
    train_docs, val_docs = _datasets(cfg, files, tokenizer, rt)
    model.to(rt.device)
    lora_params = None
    if cfg.lora.rank:
        seed_everything(cfg.runtime.seed)
        targets = parse_targets(cfg.lora.targets)
        lora_params = apply_lora(model, rank=cfg.lora.rank, alpha=cfg.lora.alpha, targets=targets)
        if loaded is not None and loaded.adapter is not None:
            load_adapter_weights(model, loaded.adapter)
    optimizer = build_optimizer(model, cfg, rt.device)
    loader = PackedLoader(
        train_docs, cfg.data.seq_len, cfg.data.batch_size, pack=PACKING[cfg.mode], seed=cfg.runtime.seed, rank=rt.rank,
        world_size=rt.world_size,
    )  # fmt: skip
    master = MasterWeights(model) if cfg.runtime.param_dtype == "bfloat16" else None
    trained = master.module if master is not None else model  # what the forward and backward run on
    trained.activation_checkpointing = cfg.runtime.activation_checkpointing
    forward = distribute(trained, rt, compile=cfg.runtime.compile, compile_mode=cfg.runtime.compile_mode)
    args = (cfg, rt, model, forward, tokenizer, optimizer, loader, val_docs, token_byte_lengths(tokenizer), master)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "%s %s: %.2fM parameters, %d train / %d val documents, %d tokens per step on %d rank(s), device %s, "
        "%d CPU thread(s)",
        cfg.mode, cfg.config_name, n_params / 1e6, len(train_docs), len(val_docs), cfg.tokens_per_step * rt.world_size,
        rt.world_size, rt.device, torch.get_num_threads(),
    )  # fmt: skip
    if lora_params is None:
        return LMStage(*args)
    base = str(Path(cfg.init).resolve()) if cfg.init else None
    logger.info(
        "LoRA on %s: rank %d, alpha %g, %s; %d trainable parameters",
        base, cfg.lora.rank, cfg.lora.alpha or cfg.lora.rank, cfg.lora.targets, sum(p.numel() for p in lora_params),
    )  # fmt: skip
    return LoRAStage(*args, base_model=base)
