"""`python -m training.demo` (`make demo-model`): train the bundled demo checkpoint on CPU from the bundled corpus.

What it is: pretrain (tiny preset) then SFT on the synthetic corpus, then write the servable checkpoint to
`minigpt_core/assets/demo/` (checked to stay under 10 MB), report the held-out SFT loss and print a few greedy
answers to held-out prompts. Steps, batch sizes and wall-time budgets are flags so the result can be tuned.
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
from minigpt_core.checkpoint import BUNDLED_TOKENIZER, DEMO_MODEL_DIR, load_checkpoint, save_checkpoint
from minigpt_core.model import MiniGPT
from minigpt_core.tokenizer import EOT_ID, IM_END_ID, Tokenizer
from training.config import resolve_config, train_preset
from training.data import iter_lines, normalize_conversation
from training.dataset import bundled_data_dir
from training.pipeline import run_training

logger = logging.getLogger("training.demo")
MAX_DEMO_BYTES = 10 * 1024 * 1024


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.demo", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny")
    p.add_argument("--data", help="corpus folder (default: the bundled corpus, generated on first use)")
    p.add_argument("--work-dir", default="checkpoints/demo", help="where the two runs are written")
    p.add_argument("--out", default=str(DEMO_MODEL_DIR), help="final servable checkpoint folder")
    p.add_argument("--pretrain-steps", type=int, default=1200)
    p.add_argument("--sft-steps", type=int, default=2400)
    p.add_argument("--pretrain-batch-size", type=int, default=32)
    p.add_argument("--sft-batch-size", type=int, default=8)
    p.add_argument("--pretrain-time-min", type=float, help="wall-time budget of pretraining (minutes)")
    p.add_argument("--sft-time-min", type=float, help="wall-time budget of SFT (minutes)")
    p.add_argument("--samples", type=int, default=4, help="greedy samples on held-out prompts to print")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (the reproducible default) or cuda")
    p.add_argument("--data-scale", type=float, default=1.0, help="generate the bundled corpus at this scale")
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
    retrain = not BUNDLED_TOKENIZER.is_file()
    if retrain:
        logger.warning("no bundled tokenizer at %s: training one on the corpus", BUNDLED_TOKENIZER)
    pre_dir, pre = _stage(args, "pretrain", data, retrain_tokenizer=retrain)
    sft_dir, sft = _stage(args, "sft", data, init=str(pre_dir))
    model, tokenizer = load_checkpoint(sft_dir)
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
