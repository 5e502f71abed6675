"""Training-test fixtures: a work folder with the tiny tokenizer, a tiny model config and fixture data files."""

from __future__ import annotations

from pathlib import Path

import pytest

from minigpt_core.tokenizer import Tokenizer
from tests.training.helpers import pretrain_lines, sft_lines, write_jsonl, write_model_config


@pytest.fixture(scope="session")
def train_workdir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Tokenizer) -> Path:
    """tok/tokenizer.json, model.json, pretrain_train/val.jsonl, sft_train/val.jsonl (minimind format)."""
    root = tmp_path_factory.mktemp("train")
    tiny_tokenizer.save(root / "tok")
    write_model_config(root / "model.json", tiny_tokenizer)
    write_jsonl(root / "data" / "pretrain_train.jsonl", pretrain_lines(300, seed=1))
    write_jsonl(root / "data" / "pretrain_val.jsonl", pretrain_lines(30, seed=2))
    write_jsonl(root / "data" / "sft_train.jsonl", sft_lines(200, seed=3))
    write_jsonl(root / "data" / "sft_val.jsonl", sft_lines(20, seed=4))
    return root
