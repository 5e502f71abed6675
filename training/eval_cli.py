"""`minigpt-eval`: offline evaluation of a checkpoint directory.

    minigpt-eval --model DIR --data FILE            # same as `minigpt-eval loss ...`
    minigpt-eval loss --model DIR --data FILE --seq-len 512 --json
    minigpt-eval think --model DIR [--data FILE] [--limit N] [--budget 8] [--json OUT]
    minigpt-eval tools --model DIR [--data FILE] [--limit N] [--json OUT]
    minigpt-eval identity --model DIR [--data FILE] [--limit N] [--json OUT]
    minigpt-eval bfcl (--model DIR | --base-url URL) [--data DIR] [--categories a,b] [--limit N] [--out FILE]

What it is: a subcommand-shaped CLI. `loss` reports the loss (nats per target token), perplexity and
bits-per-byte of a model on a minimind-format JSONL file (pretrain text: every token; SFT conversations:
assistant tokens only), using the same tokenized cache and loader as training. `think`, `tools` and `identity`
generate greedy answers to held-out prompts (default: the bundled corpus's eval_*.jsonl) on one batching
`Engine` and score them (training/evals.py); each prints a table and, with `--json OUT`, writes the metrics
and every sample to OUT. `bfcl` scores function calling on the Berkeley Function Calling Leaderboard's data
(training/bfcl.py) for a checkpoint or any OpenAI-compatible server. `SUBCOMMANDS` is the registry.
What it is not: a benchmark suite for speed (minigpt-bench) or a data generator.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
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


def _add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-t",
        "--threads",
        type=int,
        help="CPU threads for torch (default: $OMP_NUM_THREADS, else half the usable CPUs)",
    )


def _add_loss_args(p: argparse.ArgumentParser) -> None:
    _add_threads_arg(p)
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--data", required=True, help="JSONL file (pretrain text or SFT conversations)")
    p.add_argument("--mode", choices=["auto", "pretrain", "sft"], default="auto", help="format (default: detect)")
    p.add_argument(
        "--seq-len", type=int, help="row length (default: the one it was trained with, else min(1024, its context))"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batches", type=int, help="stop after this many batches")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--max-bad-fraction", type=float, default=0.05)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run_loss(args: argparse.Namespace) -> int:
    from minigpt_core.checkpoint import load_checkpoint
    from training.lm_stage import evaluate_docs
    from training.loader import documents_of, token_byte_lengths
    from training.pipeline import PACKING
    from training.runtime import setup_runtime
    from training.shards import detect_format, open_shard
    from training.state import trained_seq_len

    data = Path(args.data)
    if not data.is_file():
        raise UsageError(f"--data {data}: no such file")
    mode = detect_format(data) if args.mode == "auto" else args.mode
    if mode not in PACKING:
        raise UsageError(f"--data {data}: cannot tell pretrain from SFT data ({mode or 'no valid lines'})")
    rt = setup_runtime(args.device, "auto")
    model, tokenizer = load_checkpoint(args.model, device=rt.device)
    seq_len = args.seq_len or min(trained_seq_len(args.model) or 1024, model.config.max_seq_len)
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
    report["seq_len"] = seq_len
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


def _add_generation_args(name: str, max_new_tokens: int) -> Callable[[argparse.ArgumentParser], None]:
    def add(p: argparse.ArgumentParser) -> None:
        _add_threads_arg(p)
        p.add_argument("--model", required=True, help="checkpoint directory")
        p.add_argument("--data", help=f"held-out JSONL (default: the bundled eval_{name}.jsonl)")
        p.add_argument("--limit", type=int, help="evaluate the first N records only")
        p.add_argument("--json", metavar="OUT", help="write the metrics and every sample to this JSON file")
        p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
        p.add_argument("--max-num-seqs", type=int, default=32, help="engine batch slots")
        p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
        if name == "think":
            p.add_argument("--budget", type=int, default=8, help="max_thinking_tokens for the budget run")

    return add


def _load_for_generation(args: argparse.Namespace, name: str) -> tuple[Any, Any, list[dict[str, Any]]]:
    from minigpt_core.checkpoint import load_checkpoint
    from minigpt_core.engine import Engine
    from minigpt_core.resources import resolve_device
    from training.evals import load_records

    for flag in ("limit", "max_new_tokens", "max_num_seqs", "budget"):
        value = getattr(args, flag, None)
        if value is not None and value < (0 if flag == "budget" else 1):
            raise UsageError(f"--{flag.replace('_', '-')} must be {'>= 0' if flag == 'budget' else 'positive'}")
    if args.data is None:
        from training.loader import bundled_data_dir

        data = bundled_data_dir() / f"eval_{name}.jsonl"
    else:
        data = Path(args.data)
    records = load_records(data, args.limit)
    model, tokenizer = load_checkpoint(args.model, device=resolve_device(args.device))
    engine = Engine(
        model,
        max_num_seqs=min(args.max_num_seqs, max(1, 3 * len(records))),
        max_queued=max(256, 3 * len(records)),
        output_vocab=tokenizer.vocab_size,
    )
    args.data = str(data)
    return engine, tokenizer, records


def run_think(args: argparse.Namespace) -> int:
    from training.evals import evaluate_think

    engine, tok, records = _load_for_generation(args, "think")
    with engine:
        result = evaluate_think(engine, tok, records, max_new_tokens=args.max_new_tokens, budget=args.budget)
    rows = [
        ("well-formed think blocks", _pct(result["well_formed"]) + f"  (target {_pct(result['well_formed_target'])})"),
        ("accuracy, thinking on", _pct(result["accuracy_think"])),
        ("accuracy, thinking off", _pct(result["accuracy_no_think"])),
        (f"budget {args.budget}: compliance", _pct(result["budget_compliance"])),
        (f"budget {args.budget}: max reasoning tokens", str(result["max_budget_reasoning_tokens"])),
        (f"budget {args.budget}: accuracy", _pct(result["accuracy_budget"])),
        ("mean reasoning tokens (no budget)", f"{result['mean_reasoning_tokens']:.1f}"),
        ("malformed", json.dumps(result["malformed_reasons"]) or "-"),
    ]
    return _finish("think", args, rows, result)


def run_tools(args: argparse.Namespace) -> int:
    from training.evals import evaluate_tools

    engine, tok, records = _load_for_generation(args, "tools")
    with engine:
        modes = {
            "constrained": evaluate_tools(engine, tok, records, constrained=True, max_new_tokens=args.max_new_tokens),
            "free": evaluate_tools(engine, tok, records, constrained=False, max_new_tokens=args.max_new_tokens),
        }
    labels = (
        ("called", "made a call when one fits"),
        ("tool_selection", "right tool"),
        ("schema_valid", "arguments schema-valid"),
        ("selection_and_valid", "right tool + schema-valid"),
        ("arguments_correct", "arguments correct"),
        ("no_call_when_none", "no call when none fits"),
        ("final_answer", "final answer uses the result"),
    )
    c, f = modes["constrained"], modes["free"]
    rows = [("metric", "constrained | free")]
    rows += [(label, f"{_pct(c[key]):>11} | {_pct(f[key])}") for key, label in labels]
    rows.append(("calls that did not parse", f"{c['parse_failures']:>11} | {f['parse_failures']}"))
    rows.append(("records (call / none)", f"{c['expects_call_n']} / {c['expects_none_n']}"))
    return _finish("tools", args, rows, modes)


def run_identity(args: argparse.Namespace) -> int:
    from training.evals import evaluate_identity

    engine, tok, records = _load_for_generation(args, "identity")
    with engine:
        result = evaluate_identity(engine, tok, records, max_new_tokens=args.max_new_tokens)
    rows = [
        ("answers containing must_contain", _pct(result["accuracy"])),
        ("system persona kept (name, not MiniGPT)", _pct(result["persona_accuracy"])),
        ("world questions answered, not identity", _pct(result["off_topic_accuracy"])),
    ]
    return _finish("identity", args, rows, result)


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"


def _finish(name: str, args: argparse.Namespace, rows: list[tuple[str, str]], result: dict[str, Any]) -> int:
    """Print the table; write {"eval", "model", "data", ..., "result"} to --json OUT when given."""
    width = max(len(label) for label, _ in rows)
    print(f"minigpt-eval {name}: {args.model} on {args.data}")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    if args.json:
        report = {"eval": name, "model": str(args.model), "data": str(args.data), "limit": args.limit}
        report["result"] = result
        write_json(Path(args.json), report)
    return 0


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Write `report` atomically: a temporary file beside `path`, then one rename (no half-written report)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(_nan_to_none(report), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _nan_to_none(value: Any) -> Any:
    """JSON has no NaN: a metric over zero samples is written as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def _add_bfcl_args(p: argparse.ArgumentParser) -> None:
    from training.bfcl import CATEGORIES, DATA_ENV

    _add_threads_arg(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="checkpoint directory (generates in-process, as minigpt-serve would)")
    target.add_argument("--base-url", help="an OpenAI-compatible API, e.g. http://localhost:8000/v1")
    p.add_argument("--api-key", help="API key for --base-url (default: $OPENAI_API_KEY)")
    p.add_argument("--model-name", help="model to ask at --base-url (default: the first one it lists)")
    p.add_argument("--data", help=f"folder of BFCL_v4_*.json files (default: ${DATA_ENV})")
    p.add_argument("--categories", default=",".join(CATEGORIES), help="comma-separated BFCL categories")
    p.add_argument("--limit", type=int, help="evaluate the first N cases of each category only")
    p.add_argument("--out", metavar="FILE", help="write the scores and every sample to this JSON file")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-num-seqs", type=int, default=32, help="engine batch slots (--model)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (--base-url)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")


def _bfcl_answers(args: argparse.Namespace, cases: list[Any]) -> tuple[str, list[Any]]:
    """(what was asked, its answers): the server at --base-url, else the checkpoint in-process."""
    from training import bfcl

    if args.base_url:
        name, answers = bfcl.generate_openai(
            cases,
            base_url=args.base_url,
            api_key=args.api_key or os.environ.get("OPENAI_API_KEY"),
            model=args.model_name,
            max_tokens=args.max_new_tokens,
            concurrency=args.concurrency,
        )
        return f"{name} at {args.base_url}", answers
    from minigpt_core.checkpoint import load_checkpoint
    from minigpt_core.engine import Engine
    from minigpt_core.resources import resolve_device

    if not Path(args.model).is_dir():
        raise UsageError(f"--model {args.model}: no such folder")
    model, tok = load_checkpoint(args.model, device=resolve_device(args.device))
    engine = Engine(model, max_num_seqs=args.max_num_seqs, max_queued=max(256, len(cases)), output_vocab=tok.vocab_size)
    with engine:
        return str(args.model), bfcl.generate_in_process(engine, tok, cases, max_new_tokens=args.max_new_tokens)


def run_bfcl(args: argparse.Namespace) -> int:
    from training import bfcl

    for flag in ("limit", "max_new_tokens", "max_num_seqs", "concurrency"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be positive")
    categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    unknown = [c for c in categories if c not in bfcl.CATEGORIES]
    if unknown or not categories:
        raise UsageError(f"--categories: unknown {unknown or 'empty'} (choose from {', '.join(bfcl.CATEGORIES)})")
    data = args.data or os.environ.get(bfcl.DATA_ENV)
    if not data:
        raise UsageError(f"--data DIR is required (or set {bfcl.DATA_ENV})")
    if not Path(data).is_dir():
        raise UsageError(f"--data {data}: no such folder")
    cases = [case for c in categories for case in bfcl.load_cases(Path(data), c, args.limit)]
    target, answers = _bfcl_answers(args, cases)
    result = bfcl.score(cases, answers)
    print(f"minigpt-eval bfcl: {target} on {data}")
    print(f"  {'category':<14} {'n':>5}  accuracy")
    rows = [*result["categories"].items(), ("total", result["total"])]
    for name, stats in rows:
        strict = f"  (no call at all: {_pct(stats['strict_accuracy'])})" if "strict_accuracy" in stats else ""
        print(f"  {name:<14} {stats['n']:>5}  {_pct(stats['accuracy'])}{strict}")
    if args.out:
        report = {"eval": "bfcl", "target": target, "data": str(data), "limit": args.limit}
        write_json(Path(args.out), report | {"max_new_tokens": args.max_new_tokens, "result": result})
    return 0


# name -> (help, add arguments, run).
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "loss": ("loss, perplexity and bits-per-byte on a JSONL file", _add_loss_args, run_loss),
    "think": (
        "ultra think: well-formed think blocks, accuracy with vs without thinking, budget compliance",
        _add_generation_args("think", 256),
        run_think,
    ),
    "tools": (
        "tool calling: right tool, valid and correct arguments, no call when none fits, final answer",
        _add_generation_args("tools", 160),
        run_tools,
    ),
    "identity": (
        "identity: answers that contain the expected name/maker",
        _add_generation_args("identity", 96),
        run_identity,
    ),
    "bfcl": (
        "function calling on BFCL data (simple, multiple, parallel, irrelevance) for a checkpoint or an API",
        _add_bfcl_args,
        run_bfcl,
    ),
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
        if args.threads is not None and args.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {args.threads}")
        from minigpt_core.threads import configure_threads  # imports torch: only once the flags are valid

        configure_threads(args.threads)
        return SUBCOMMANDS[args.command][2](args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except MiniGPTError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
