"""Fixture-file writers shared by the training tests: small minimind-format JSONL files and a tiny model config.

What it is: deterministic generators of pretrain `{"text"}` and SFT `{"conversations"}` lines with a learnable
pattern (so loss visibly falls in a few steps), and a JSON model config small enough for CPU tests.
What it is not: the bundled corpus (training.datagen) or a pytest fixture module (conftest.py holds those).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from minigpt_core.tokenizer import Tokenizer

WORDS = "the cat sat on a mat and the dog ran in the park while one two three four five birds sang".split()


def pretrain_lines(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start = rng.randrange(len(WORDS))
        count = rng.randint(6, 24)
        # Mostly a cyclic walk through WORDS: easy to learn, so the loss falls within a few steps.
        out.append({"text": " ".join(WORDS[(start + k) % len(WORDS)] for k in range(count))})
    return out


def sft_conversation(a: int, b: int) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": f"what is {a} plus {b}?"},
        {"role": "assistant", "content": f"{a} plus {b} is {a + b}."},
    ]


def sft_lines(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"conversations": sft_conversation(rng.randint(0, 9), rng.randint(0, 9))} for _ in range(n)]


def write_jsonl(path: Path, records: list[Any], extra_lines: tuple[str, ...] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        for line in extra_lines:
            fh.write(line + "\n")
    return path


def write_model_config(path: Path, tokenizer: Tokenizer) -> Path:
    cfg = {
        "base": "tiny",
        "vocab_size": tokenizer.vocab_size,
        "n_layer": 2,
        "n_embd": 64,
        "n_head": 4,
        "n_kv_head": 2,
        "ffn_dim": 128,
        "max_seq_len": 256,
    }
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def base_args(workdir: Path, data: Path, out: Path, mode: str = "pretrain") -> list[str]:
    """Flags for a tiny, fast CPU run (the caller adds --max-steps etc.)."""
    return [
        "--mode",
        mode,
        "--config",
        str(workdir / "model.json"),
        "--tokenizer",
        str(workdir / "tok"),
        "--data",
        str(data),
        "--out",
        str(out),
        "--seq-len",
        "64",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "-q",
    ]
