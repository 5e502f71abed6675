"""`minigpt-eval`: offline evaluation of a checkpoint directory.

    minigpt-eval --model DIR --data FILE            # same as `minigpt-eval loss ...`
    minigpt-eval loss --model DIR --data FILE --seq-len 512 --json

What it is: a subcommand-shaped CLI whose first subcommand, `loss`, reports the loss (nats per target token),
perplexity and bits-per-byte of a model on a minimind-format JSONL file (pretrain text: every token; SFT
conversations: assistant tokens only), using the same tokenized cache and loader as training.
`SUBCOMMANDS` is the registry later issues extend (`think`, `tools`).
What it is not: generation quality or benchmark suites.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from minigpt_core.errors import MiniGPTError

PROG = "minigpt-eval"
logger = logging.getLogger("training.eval_cli")


class UsageError(Exception):
    """Bad command line: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _add_loss_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--data", required=True, help="JSONL file (pretrain text or SFT conversations)")
    p.add_argument("--mode", choices=["auto", "pretrain", "sft"], default="auto", help="format (default: detect)")
    p.add_argument("--seq-len", type=int, help="row length (default: min(1024, the model's context))")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batches", type=int, help="stop after this many batches")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--max-bad-fraction", type=float, default=0.05)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run_loss(args: argparse.Namespace) -> int:
    from minigpt_core.checkpoint import load_checkpoint
    from training.data import detect_format, open_shard
    from training.dataset import documents_of, token_byte_lengths
    from training.loop import evaluate_docs
    from training.pipeline import PACKING
    from training.runtime import setup_runtime

    data = Path(args.data)
    if not data.is_file():
        raise UsageError(f"--data {data}: no such file")
    mode = detect_format(data) if args.mode == "auto" else args.mode
    if mode not in PACKING:
        raise UsageError(f"--data {data}: cannot tell pretrain from SFT data ({mode or 'no valid lines'})")
    rt = setup_runtime(args.device, "auto")
    model, tokenizer = load_checkpoint(args.model, device=rt.device)
    seq_len = args.seq_len or min(1024, model.config.max_seq_len)
    if not 0 < seq_len <= model.config.max_seq_len:
        raise UsageError(f"--seq-len must lie in [1, {model.config.max_seq_len}]")
    shard = open_shard(data, mode, tokenizer, args.max_bad_fraction)
    docs = documents_of([shard])
    result = evaluate_docs(
        model,
        docs,
        rt,
        token_byte_lengths(tokenizer),
        pack=PACKING[mode],
        seq_len=seq_len,
        batch_size=args.batch_size,
        max_batches=args.max_batches,
    )
    report = _report(result, mode, args)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>13}: {value:.4f}" if isinstance(value, float) else f"{key:>13}: {value}")
    return 0


def _report(result: dict[str, float], mode: str, args: argparse.Namespace) -> dict[str, Any]:
    if not result:
        raise UsageError(f"--data {args.data}: no target tokens to evaluate")
    loss = result["val_loss"]
    return {
        "model": str(args.model),
        "data": str(args.data),
        "mode": mode,
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bits_per_byte": result["val_bpb"],
        "tokens": int(result["val_tokens"]),
    }


# name -> (help, add arguments, run). `think` and `tools` evaluations plug in here.
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "loss": ("loss, perplexity and bits-per-byte on a JSONL file", _add_loss_args, run_loss),
}
DEFAULT_SUBCOMMAND = "loss"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Evaluate a MiniGPT checkpoint.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    for name, (help_text, add_args, _run) in SUBCOMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        argv = [DEFAULT_SUBCOMMAND, *argv]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        return SUBCOMMANDS[args.command][2](args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except MiniGPTError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
