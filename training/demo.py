"""`python -m training.demo` (`make demo-model`): train the bundled demo checkpoint on CPU from the bundled corpus.

What it is: pretrain then SFT (the `demo_model.json` shape: 4.7M parameters, 10 x 192, stored in bf16) on the
synthetic corpus generated at `--data-scale`, then write the servable checkpoint to `minigpt_core/assets/demo/`
(checked to stay under 10 MB), report the held-out SFT loss and print a few greedy answers to held-out prompts.
`--retrain-tokenizer` first relearns the bundled tokenizer from the corpus's training files. Steps, batch sizes
and wall-time budgets are flags so the result can be tuned.
What it is not: a benchmark or a quality gate; the tool-call and thinking evaluations come with their issues.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from minigpt_core.chat_template import render
from minigpt_core.checkpoint import load_checkpoint, save_checkpoint
from minigpt_core.model import MiniGPT
from minigpt_core.resources import BUNDLED_TOKENIZER, DEMO_MODEL_DIR
from minigpt_core.tokenizer import EOT_ID, IM_END_ID, Tokenizer, train_tokenizer
from training.config import resolve_config, train_preset
from training.loader import bundled_data_dir, training_files
from training.pipeline import run_training, tokenizer_texts
from training.shards import iter_lines, normalize_conversation

logger = logging.getLogger("training.demo")
MAX_DEMO_BYTES = 10 * 1024 * 1024
DEMO_MODEL_CONFIG = Path(__file__).with_name("demo_model.json")
SAVE_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.demo", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(DEMO_MODEL_CONFIG), help="preset name or model JSON")
    p.add_argument("--data", help="corpus folder (default: the bundled corpus, generated on first use)")
    p.add_argument("--work-dir", default="checkpoints/demo", help="where the two runs are written")
    p.add_argument("--out", default=str(DEMO_MODEL_DIR), help="final servable checkpoint folder")
    p.add_argument("--pretrain-steps", type=int, default=2000)
    p.add_argument("--sft-steps", type=int, default=6000)
    p.add_argument("--pretrain-batch-size", type=int, default=64)
    p.add_argument("--sft-batch-size", type=int, default=64)
    p.add_argument("--pretrain-time-min", type=float, help="wall-time budget of pretraining (minutes)")
    p.add_argument("--sft-time-min", type=float, help="wall-time budget of SFT (minutes)")
    p.add_argument("--samples", type=int, default=4, help="greedy samples on held-out prompts to print")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (the reproducible default) or cuda")
    p.add_argument("--data-scale", type=float, default=24.0, help="generate the bundled corpus at this scale")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (faster on a GPU)")
    p.add_argument("--save-dtype", choices=sorted(SAVE_DTYPES), default="bf16", help="weights dtype on disk")
    p.add_argument(
        "--retrain-tokenizer",
        action="store_true",
        help=f"relearn {BUNDLED_TOKENIZER.name} (written to the assets) from the corpus's training files first",
    )
    return p


def _stage(args: argparse.Namespace, mode: str, data: Path, **extra: Any) -> tuple[Path, dict[str, Any]]:
    out = Path(args.work_dir) / mode
    steps, batch = (
        (args.pretrain_steps, args.pretrain_batch_size) if mode == "pretrain" else (args.sft_steps, args.sft_batch_size)
    )
    minutes = args.pretrain_time_min if mode == "pretrain" else args.sft_time_min
    settings = train_preset(args.config, mode)
    settings.update(
        data=str(data),
        out_dir=str(out),
        max_steps=steps,
        batch_size=batch,
        device=args.device,
        seed=args.seed,
        compile=args.compile,
        eval_every=max(1, steps // 5),
        save_every=steps,
        keep_last=1,
        time_limit_s=minutes * 60 if minutes else None,
        **extra,
    )
    if out.exists():
        shutil.rmtree(out)  # a fresh run each time: the demo must be reproducible
    started = time.monotonic()
    state = run_training(resolve_config(settings))
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    val = [r for r in records if "val_loss" in r]
    return out, {
        "steps": state.step,
        "minutes": round((time.monotonic() - started) / 60, 2),
        "train_loss": records[-1]["loss"] if records else None,
        "val_loss": val[-1]["val_loss"] if val else None,
        "val_bpb": val[-1]["val_bpb"] if val else None,
    }


@torch.no_grad()
def greedy(
    model: MiniGPT,
    tokenizer: Tokenizer,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    max_new_tokens: int = 96,
) -> str:
    """Plain full-recompute greedy decoding (the demo is tiny; the engine is not needed)."""
    ids = render(messages, tools, add_generation_prompt=True, tokenizer=tokenizer).ids
    out: list[int] = []
    for _ in range(max_new_tokens):
        window = (ids + out)[-model.config.max_seq_len :]
        nxt = int(model(torch.tensor([window]))[0, -1].argmax())
        if nxt in (IM_END_ID, EOT_ID):
            break
        out.append(nxt)
    return tokenizer.decode(out)


def _samples(model_dir: Path, val_file: Path, n: int) -> list[tuple[str, str]]:
    model, tokenizer = load_checkpoint(model_dir)
    shown: list[tuple[str, str]] = []
    with open(val_file, "rb") as fh:
        n_lines = sum(1 for _ in fh)
    every = max(1, n_lines // max(n, 1))  # spread the samples over the file's kinds of dialogue
    for lineno, obj, _err in iter_lines(val_file):
        if len(shown) >= n:
            break
        if obj is None or (lineno - 1) % every:
            continue
        messages, tools = normalize_conversation(obj.get("conversations"))
        first_user = next((i for i, m in enumerate(messages) if m.get("role") == "user"), None)
        if first_user is None:
            continue
        prompt = messages[: first_user + 1]
        shown.append((str(prompt[-1].get("content")), greedy(model, tokenizer, prompt, tools)))
    return shown


def retrain_bundled_tokenizer(data: Path, vocab_size: int) -> None:
    """Learn the bundled BPE from the corpus's training files only (never the val / eval files)."""
    sources = training_files(data)
    logger.info("training the bundled tokenizer on %s", ", ".join(p.name for p in sources))
    train_tokenizer(tokenizer_texts(sources), vocab_size).save(BUNDLED_TOKENIZER.parent)  # atomic


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.data:
        data = Path(args.data)
    elif args.data_scale != 1.0:
        from training.datagen import generate_corpus

        data = Path(args.work_dir) / f"data-x{args.data_scale:g}"
        if not (data / "sft_train.jsonl").is_file():
            generate_corpus(data, seed=args.seed, scale=args.data_scale)
    else:
        data = bundled_data_dir()
    if args.retrain_tokenizer or not BUNDLED_TOKENIZER.is_file():
        retrain_bundled_tokenizer(data, train_preset(args.config, "pretrain")["model"].vocab_size)
    pre_dir, pre = _stage(args, "pretrain", data)
    sft_dir, sft = _stage(args, "sft", data, init=str(pre_dir))
    model, tokenizer = load_checkpoint(sft_dir, dtype=SAVE_DTYPES[args.save_dtype])
    out = save_checkpoint(args.out, model, tokenizer)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    if size > MAX_DEMO_BYTES:
        raise SystemExit(f"demo checkpoint is {size / 2**20:.1f} MB > 10 MB; use a smaller config")
    report = {"pretrain": pre, "sft": sft, "size_mb": round(size / 2**20, 2), "out": str(out)}
    print(json.dumps(report, indent=2))
    val_files = sorted(data.glob("sft_val*.jsonl"))
    if val_files and args.samples:
        for prompt, answer in _samples(out, val_files[0], args.samples):
            print(f"\n>>> {prompt}\n{answer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
