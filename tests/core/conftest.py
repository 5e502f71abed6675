"""Fixtures of the engine tests: a tiny model with well-separated greedy logits, and a started engine on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from minigpt_core.config import ModelConfig
from minigpt_core.engine import Engine
from minigpt_core.model import MiniGPT
from tests.core.engine_helpers import V


@pytest.fixture(scope="module")
def model() -> MiniGPT:
    torch.manual_seed(0)
    # A larger init spread than training uses, so greedy logits are well separated.
    config = ModelConfig(
        vocab_size=V, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, ffn_dim=128, max_seq_len=128, init_std=0.3
    )
    return MiniGPT(config).eval()


@pytest.fixture
def engine(model: MiniGPT) -> Iterator[Engine]:
    # Small prefill chunks and kv_len buckets, so tests cross chunk and bucket boundaries.
    eng = Engine(model, max_num_seqs=16, prefill_chunk=8, kv_len_bucket=16)
    eng.start()
    yield eng
    eng.shutdown()
