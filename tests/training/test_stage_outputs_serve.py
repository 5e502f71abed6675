"""Each post-SFT stage (dpo, reward, rlhf) writes a checkpoint folder that minigpt-serve serves over real HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.server.conftest import MODEL_NAME, live_server
from tests.training.helpers import write_jsonl
from tests.training.pref_data import pet_pairs, prompt_records
from training import cli


def _stage_args(mode: str, tmp_path: Path) -> list[str]:
    if mode == "rlhf":
        prompts = write_jsonl(tmp_path / "prompts.jsonl", prompt_records(16, seed=0))
        return ["--data", str(prompts), "--reward", "length", "--group-size", "4", "--max-new-tokens", "6"]
    data = tmp_path / "pairs"
    write_jsonl(data / "dpo_train.jsonl", pet_pairs(16, seed=1))
    write_jsonl(data / "dpo_val.jsonl", pet_pairs(8, seed=2))
    return ["--data", str(data)]


@pytest.mark.parametrize("mode", ["dpo", "reward", "rlhf"])
def test_stage_output_is_served(mode: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / mode
    argv = ["--mode", mode, "--init", str(tiny_checkpoint), "--out", str(out), *_stage_args(mode, tmp_path)]
    argv += ["--max-steps", "2", "--batch-size", "4", "--seq-len", "64", "--eval-every", "2", "--device", "cpu", "-q"]
    assert cli.main(argv) == 0
    with live_server(out) as srv:
        body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        resp = httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
