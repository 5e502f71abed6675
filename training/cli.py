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
(2: usage, 1: bad input or configuration, 3: training diverged, 128 + the signal after a
SIGINT (130) or SIGTERM (143) that stopped the run once the step in flight was saved).
What it is not: training logic; everything below `main` takes typed values, never the argparse Namespace.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn, get_args, get_type_hints

from minigpt_core.config import PRESETS
from minigpt_core.errors import MiniGPTError
from training.config import (
    MODES,
    SECTIONS,
    TrainConfig,
    flat_names,
    from_flat,
    resolve_config,
    to_flat,
    train_preset,
)
from training.errors import ResumeError, TrainingDiverged, TrainingError
from training.interrupt import TrainingInterrupted
from training.state import TRAINER_STATE_DIR, find_resume_point, read_trainer_state, run_dir_of

logger = logging.getLogger("training.cli")
PROG = "minigpt-train"


class UsageError(Exception):
    """Bad command line: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Train a MiniGPT model (pretrain, sft, dpo, reward, rlhf).")
    p.add_argument("--mode", choices=MODES, help="training stage (default: pretrain)")
    p.add_argument("--config", default="tiny", help=f"model preset ({', '.join(PRESETS)}) or a JSON file")
    p.add_argument("--resume", help="continue a run (its folder or one of its checkpoints/step_N)")
    add_setting_flags(p)
    p.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    return p


def add_setting_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig setting that has one, derived from its field: the option name (--flat-name
    unless the field says otherwise), its type, choices, metavar and help; `dest` is the flat setting name and the
    default None, so only the flags given override the preset. Booleans are switches. Each section of options
    (dpo, grpo, lora) is a group of --help."""
    groups: dict[str | None, Any] = {None: p}
    owners: list[tuple[type, str | None]] = [(TrainConfig, None), *SECTIONS.values()]
    for cls, title in owners:
        if title not in groups:
            groups[title] = p.add_argument_group(title)
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if not meta or not meta["cli"]:
                continue
            flat = meta["flat"] or f.name
            names = (*meta.get("names", ()), meta.get("flag") or "--" + flat.replace("_", "-"))
            kwargs: dict[str, Any] = {"dest": flat, "help": meta["help"]}
            kwargs.update({k: meta[k] for k in ("choices", "metavar") if k in meta})
            kind = next(t for t in (*get_args(hints[f.name]), hints[f.name]) if t is not type(None))
            if kind is bool:
                kwargs.update(action="store_true", default=None)
                kwargs.pop("metavar", None)
            else:
                kwargs["type"] = None if kind is str else kind  # argparse's default: the string as given
                if "choices" not in kwargs:  # named after the option, not the dest: `--out OUT`
                    kwargs.setdefault("metavar", names[-1].lstrip("-").replace("-", "_").upper())
            groups[title].add_argument(*names, **kwargs)


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, Path | None]:
    """The resolved TrainConfig and the checkpoint to resume from (None for a new run)."""
    overrides: dict[str, Any] = {
        name: getattr(args, name) for name in flat_names() if getattr(args, name, None) is not None
    }
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
    if args.lora_rank and args.resume is None and args.init is None:
        raise UsageError("--lora-rank needs --init <base checkpoint folder>")
    if args.lora_rank is not None and args.resume is not None:
        raise UsageError("--lora-rank cannot be changed on --resume (the run keeps its own)")
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
    try:
        saved = to_flat(TrainConfig.from_dict(read_trainer_state(point).config))  # older flat configs too
        if args.mode is not None and args.mode != saved["mode"]:
            raise UsageError(
                f"--mode {args.mode} does not match the resumed run ({saved['mode']}); use --init instead"
            )  # fmt: skip
        saved.update(threads=None, out_dir=str(run_dir_of(point)))  # threads: a property of this machine
        return from_flat({**saved, **overrides}), point
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
    cfg, resume_from = config_from_args(args)
    from minigpt_core.threads import configure_threads  # imports torch: only once the flags are valid

    cfg = cfg.replace(threads=configure_threads(cfg.runtime.threads))  # the count in force lands in run_config.json
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
