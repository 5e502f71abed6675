"""`minigpt-train`: the command line of training (pretrain, SFT, DPO, reward model, RLHF with GRPO).

    minigpt-train --mode pretrain --config tiny --max-steps 50
    minigpt-train --mode sft --config tiny --init checkpoints/pretrain_tiny --max-steps 50
    minigpt-train --mode sft --init checkpoints/sft_tiny --lora-rank 8 --data identity.jsonl --max-steps 100
    minigpt-train --mode dpo --config tiny --init checkpoints/sft_tiny --loss sigmoid --beta 0.1 --max-steps 100
    minigpt-train --mode reward --config tiny --init checkpoints/sft_tiny --max-steps 150
    minigpt-train --mode rlhf --config tiny --init checkpoints/dpo_tiny --reward arithmetic --group-size 8
    minigpt-train --resume checkpoints/pretrain_tiny --max-steps 100
    torchrun --nproc_per_node 2 -m training.cli --mode pretrain --device cpu ...
    minigpt-train plot checkpoints/pretrain_tiny

What it is: flag parsing into a resolved `TrainConfig` (preset, then explicit flags; on --resume the saved
settings, then explicit flags), logging setup, and the one place that maps errors to exit codes
(2: usage or not implemented, 1: bad input or configuration, 3: training diverged, 128 + the signal after a
SIGINT (130) or SIGTERM (143) that stopped the run once the step in flight was saved).
What it is not: training logic; everything below `main` takes typed values, never the argparse Namespace.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from minigpt_core.config import PRESETS
from minigpt_core.errors import MiniGPTError
from training.config import (
    DEVICES,
    DPO_LOSSES,
    DTYPES,
    MODES,
    REWARD_FEATURES,
    UNIMPLEMENTED_MODES,
    TrainConfig,
    resolve_config,
    train_preset,
)
from training.errors import ResumeError, TrainingDiverged, TrainingError
from training.interrupt import TrainingInterrupted
from training.state import TRAINER_STATE_DIR, find_resume_point, read_trainer_state, run_dir_of

logger = logging.getLogger("training.cli")
REWARD_RULES = ("arithmetic", "tool", "think", "length")  # training.rewards.RULES, named here to keep --help light
PROG = "minigpt-train"

# flag dest -> TrainConfig field, for flags that override a preset only when given.
OVERRIDES = {
    "data": "data",
    "val_data": "val_data",
    "out": "out_dir",
    "init": "init",
    "tokenizer": "tokenizer",
    "max_steps": "max_steps",
    "epochs": "epochs",
    "weight_decay": "weight_decay",
    "grad_clip": "grad_clip",
    "log_every": "log_every",
    "tensorboard": "tensorboard",
    "learning_rate": "learning_rate",
    "warmup_steps": "warmup_steps",
    "batch_size": "batch_size",
    "grad_accum": "grad_accum",
    "seq_len": "seq_len",
    "device": "device",
    "dtype": "dtype",
    "seed": "seed",
    "eval_every": "eval_every",
    "eval_batches": "eval_batches",
    "save_every": "save_every",
    "keep_last": "keep_last",
    "time_limit": "time_limit_s",
    "max_bad_fraction": "max_bad_fraction",
    "beta": "beta",
    "loss": "dpo_loss",
    "reward_features": "reward_features",
    "reward": "rewards",
    "reward_model": "reward_model",
    "group_size": "group_size",
    "kl_coef": "kl_coef",
    "clip_eps": "clip_eps",
    "max_new_tokens": "max_new_tokens",
    "temperature": "temperature",
    "grpo_epochs": "grpo_epochs",
    "eval_data": "eval_data",
    "eval_prompts": "eval_prompts",
    "threads": "threads",
    "lora_rank": "lora_rank",
    "lora_alpha": "lora_alpha",
    "lora_targets": "lora_targets",
}


class UsageError(Exception):
    """Bad command line: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Train a MiniGPT model (pretrain, sft, dpo, reward, rlhf).")
    p.add_argument("--mode", choices=[*MODES, *UNIMPLEMENTED_MODES], help="training stage (default: pretrain)")
    p.add_argument("--config", default="tiny", help=f"model preset ({', '.join(PRESETS)}) or a JSON file")
    p.add_argument(
        "--data", help="JSONL file or folder; pretraining also reads plain .txt (default: the bundled corpus)"
    )
    p.add_argument("--val-data", help="validation file or folder (default: *_val files beside --data, else 1 in 50)")
    p.add_argument("--out", help="run folder (default: checkpoints/<mode>_<config>/)")
    p.add_argument("--resume", help="continue a run (its folder or one of its checkpoints/step_N)")
    p.add_argument("--init", help="start from a checkpoint's weights and tokenizer (e.g. SFT from pretrain)")
    p.add_argument("--tokenizer", help="tokenizer.json or a folder holding one (default: the bundled tokenizer)")
    p.add_argument("--retrain-tokenizer", action="store_true", help="train a new tokenizer on the training data")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--epochs", type=float, help="passes over the training data (instead of --max-steps)")
    p.add_argument("--learning-rate", type=float, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay of matrices (default 0.1; norms get none)")
    p.add_argument("--grad-clip", type=float, help="clip the gradient norm to this (default 1.0; 0 = no clipping)")
    p.add_argument("--batch-size", type=int, help="rows per micro-batch per process")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    p.add_argument("--seq-len", type=int)
    p.add_argument("--device", choices=DEVICES)
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        help="auto = bf16 autocast on CUDA, fp32 elsewhere; float16 = fp16 autocast + loss scaling (no-bf16 GPUs)",
    )
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument(
        "-t",
        "--threads",
        type=int,
        help="CPU threads for torch (default: $OMP_NUM_THREADS, else half the usable CPUs)",
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--log-every", type=int, help="a metrics.jsonl row every N steps (default 10)")
    p.add_argument("--tensorboard", metavar="DIR", help="also write the metrics as TensorBoard events into DIR")
    p.add_argument("--eval-every", type=int, help="validate every N steps")
    p.add_argument("--eval-batches", type=int, help="batches per validation")
    p.add_argument("--save-every", type=int, help="checkpoint every N steps")
    p.add_argument("--keep-last", type=int, help="checkpoints to keep (default 3)")
    p.add_argument("--time-limit", type=float, metavar="SECONDS", help="stop and save after this much time")
    p.add_argument("--max-bad-fraction", type=float, help="fail when more data lines than this are bad")
    g = p.add_argument_group("dpo / reward (batch size counts pairs)")
    g.add_argument("--beta", type=float, help="DPO temperature beta (default 0.1)")
    g.add_argument("--loss", choices=DPO_LOSSES, help="DPO loss (default sigmoid)")
    g.add_argument(
        "--reward-features",
        choices=REWARD_FEATURES,
        help="reward model score: a head on the last hidden state, plus (default) a learned weight times the "
        "response's log-likelihood under the model itself",
    )
    g = p.add_argument_group("rlhf: GRPO (batch size counts prompts per step)")
    g.add_argument("--reward", help=f"comma-separated rule rewards: {', '.join(REWARD_RULES)} (default arithmetic)")
    g.add_argument("--reward-model", help="a reward-model folder (--mode reward) whose score is added")
    g.add_argument("--group-size", type=int, help="samples per prompt (default 8)")
    g.add_argument("--kl-coef", type=float, help="weight of the KL penalty to the reference (default 0.04)")
    g.add_argument("--clip-eps", type=float, help="ratio clipping epsilon (default 0.2)")
    g.add_argument("--max-new-tokens", type=int, help="answer length limit of a rollout (default 64)")
    g.add_argument("--temperature", type=float, help="rollout sampling temperature (default 1.0)")
    g.add_argument("--thinking", action="store_true", default=None, help="prompt with thinking on")
    g.add_argument("--grpo-epochs", type=int, help="optimizer steps per rollout batch (default 1)")
    g.add_argument("--eval-data", help="held-out prompt JSONL (default: the bundled eval_think.jsonl)")
    g.add_argument("--eval-prompts", type=int, help="held-out prompts per evaluation (default 64)")
    g = p.add_argument_group("LoRA (with --mode sft --init BASE): train only adapter weights, saved in PEFT's layout")
    g.add_argument("--lora-rank", type=int, metavar="R", help="adapter rank; 0 = full fine-tuning (default)")
    g.add_argument("--lora-alpha", type=float, metavar="A", help="scaling alpha / rank (default alpha = rank)")
    g.add_argument(
        "--lora-targets",
        metavar="NAMES",
        help="comma-separated projections (default all: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    return p


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, Path | None]:
    """The resolved TrainConfig and the checkpoint to resume from (None for a new run)."""
    overrides: dict[str, Any] = {
        field: getattr(args, dest) for dest, field in OVERRIDES.items() if getattr(args, dest) is not None
    }
    if args.compile:
        overrides["compile"] = True
    if args.retrain_tokenizer:
        overrides["retrain_tokenizer"] = True
    if args.thinking:
        overrides["thinking"] = True
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if args.epochs is not None and args.max_steps is not None:
        raise UsageError("--epochs and --max-steps both set the length of the run; give one")
    if args.tensorboard is not None:
        _require_tensorboard()
    for flag in ("data", "val_data", "tokenizer", "reward_model", "eval_data"):
        if flag in overrides and not Path(overrides[flag]).exists():
            raise UsageError(f"--{flag.replace('_', '-')} {overrides[flag]}: no such file or folder")
    if args.init is not None and not (Path(args.init) / "config.json").is_file():
        raise UsageError(f"--init {args.init}: not a checkpoint folder (no config.json)")
    if args.lora_rank and (args.resume is not None or args.init is None):
        raise UsageError("--lora-rank needs --init <base checkpoint folder> and cannot be resumed")
    if args.resume is None and args.mode in ("dpo", "rlhf") and args.init is None:
        raise UsageError(f"--mode {args.mode} needs --init <checkpoint folder> (the policy and its reference)")
    if args.resume is None:
        mode = args.mode or "pretrain"
        settings = train_preset(args.config, mode)
        kind = f"{mode}_lora" if args.lora_rank else mode
        overrides.setdefault("out_dir", str(Path("checkpoints") / f"{kind}_{Path(args.config).stem}"))
        settings.update(overrides)
        return resolve_config(settings), None
    if not Path(args.resume).exists():
        raise UsageError(f"--resume {args.resume}: no such folder")
    if args.init is not None:
        raise UsageError("--resume and --init cannot be combined")
    point = find_resume_point(args.resume)
    saved = dict(read_trainer_state(point).config)
    saved.pop("threads", None)  # a property of this machine, not of the run
    if args.mode is not None and args.mode != saved.get("mode"):
        raise UsageError(f"--mode {args.mode} does not match the resumed run ({saved.get('mode')}); use --init instead")
    overrides.setdefault("out_dir", str(run_dir_of(point)))
    saved.update(overrides)
    try:
        return TrainConfig.from_dict(saved), point
    except (MiniGPTError, TypeError, ValueError) as exc:
        raise ResumeError(f"{point / TRAINER_STATE_DIR / 'state.json'}: its run config is not usable ({exc})") from exc


def _require_tensorboard() -> None:
    """Fail before any work when `--tensorboard` is asked for and the optional package is missing."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
    except ImportError:
        raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard") from None


def _setup_logging(quiet: bool) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.WARNING if quiet or rank != 0 else logging.INFO
    prefix = f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    logging.basicConfig(level=level, format=f"{prefix}%(levelname)s %(name)s: %(message)s")


def _plot_main(argv: list[str]) -> int:
    from training.plot import plot_run

    p = _Parser(prog=f"{PROG} plot", description="Draw RUN_DIR/loss.png from RUN_DIR/metrics.jsonl.")
    p.add_argument("run_dir")
    p.add_argument("--out", help="PNG path (default RUN_DIR/loss.png)")
    args = p.parse_args(argv)
    path = plot_run(args.run_dir, args.out)
    if path is None:
        raise TrainingError(f"{args.run_dir}: metrics.jsonl has no loss values yet")
    print(path)
    return 0


def _train_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.quiet)
    if args.mode in UNIMPLEMENTED_MODES:
        print(f"{PROG}: --mode {args.mode} is not implemented yet (only pretrain and sft)", file=sys.stderr)
        return 2
    cfg, resume_from = config_from_args(args)
    from minigpt_core.threads import configure_threads  # imports torch: only once the flags are valid

    cfg = cfg.replace(threads=configure_threads(cfg.threads))  # the count in force lands in run_config.json
    from training.pipeline import run_training  # torch-heavy imports only once the flags are valid

    state = run_training(cfg, resume_from)
    logger.info("done: step %d, %d tokens, run folder %s", state.step, state.tokens_seen, cfg.out_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["plot"]:
            return _plot_main(argv[1:])
        return _train_main(argv)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 3
    except TrainingInterrupted as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    except MiniGPTError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
