"""Shared fixtures: a tokenizer trained on a small in-test corpus and a random-weight tiny checkpoint."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from minigpt_core.checkpoint import save_checkpoint
from minigpt_core.config import ModelConfig
from minigpt_core.model import MiniGPT
from minigpt_core.tokenizer import Tokenizer, train_tokenizer

# The CPU server's defaults (the engine in a process of its own, the compiled forward built by a background child:
# issue 17) cost seconds of start-up and minutes of a compiling child per server. Tests start dozens of servers and
# test those paths in their own modules, so every other server here, in process or spawned, runs eager and in the
# API's process unless its settings say otherwise.
os.environ.setdefault("MINIGPT_ENGINE_PROCESS", "false")
os.environ.setdefault("MINIGPT_COMPILE_DECODE_CPU", "false")

WORDS = (
    "the a model token train serve hello world minigpt assistant user system answer question number "
    "calculator unit convert time date text search think tool call result json name arguments value "
    "one two three four five six seven eight nine ten plus minus times equals is are what who how why "
    "你好 世界 我是 模型 助手 谢谢 数字 回答 问题 🙂 🚀 ✓ café naïve"
).split()


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
        lines.append(" ".join(words) + rng.choice([".", "?", "!", ""]) + f" {rng.randint(0, 999)}")
    lines.append('{"name": "calculator", "arguments": {"expression": "2 + 3"}}')
    return lines


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Tokenizer:
    return train_tokenizer(corpus(), vocab_size=512)


def tiny_config(vocab_size: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, ffn_dim=128, max_seq_len=512)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Tokenizer) -> Path:
    torch.manual_seed(0)
    model = MiniGPT(tiny_config(tiny_tokenizer.vocab_size))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", model, tiny_tokenizer)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Token-by-token work on tiny models: extra intra-op threads only spin (10-25x slower on a busy 2-core box).

    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
