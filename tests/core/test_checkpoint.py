"""The checkpoint directory: round trip, HF transformers parity, clear errors, no unpickling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from minigpt_core.checkpoint import load_checkpoint, save_checkpoint
from minigpt_core.config import ModelConfig
from minigpt_core.errors import CheckpointError, ConfigError
from minigpt_core.model import MiniGPT
from minigpt_core.tokenizer import Tokenizer

EXPECTED = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"}


def test_directory_layout_and_hf_names(tiny_checkpoint: Path) -> None:
    assert {p.name for p in tiny_checkpoint.iterdir()} >= EXPECTED
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["tie_word_embeddings"] is True
    from safetensors import safe_open

    with safe_open(str(tiny_checkpoint / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert "model.layers.0.self_attn.q_proj.weight" in names
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names


def test_round_trip_gives_identical_logits(tiny_checkpoint: Path) -> None:
    model, tok = load_checkpoint(tiny_checkpoint)
    again, _ = load_checkpoint(tiny_checkpoint)
    ids = torch.randint(0, tok.vocab_size, (1, 10))
    with torch.no_grad():
        assert torch.equal(model(ids), again(ids))


@pytest.mark.parametrize("qk_norm", [False, True])
def test_transformers_loads_it_unchanged(tmp_path: Path, tiny_tokenizer: Tokenizer, qk_norm: bool) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=tiny_tokenizer.vocab_size,
        n_layer=2,
        n_embd=64,
        n_head=4,
        n_kv_head=2,
        ffn_dim=128,
        max_seq_len=128,
        qk_norm=qk_norm,
        rope_theta=10000.0,
    )
    ours = MiniGPT(cfg).eval()
    path = save_checkpoint(tmp_path / "ck", ours, tiny_tokenizer)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 33))
    with torch.no_grad():
        diff = (hf(ids).logits.float() - ours(ids)).abs().max().item()
    assert diff < 1e-4


def test_missing_and_corrupt_files_name_the_file(tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(broken)
    (broken / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(broken)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")


def test_save_replaces_atomically_and_leaves_no_temp(tiny_checkpoint: Path, tmp_path: Path) -> None:
    model, tok = load_checkpoint(tiny_checkpoint)
    out = tmp_path / "out"
    save_checkpoint(out, model, tok)
    torch.nn.init.zeros_(model.model.norm.weight)
    save_checkpoint(out, model, tok)
    reloaded, _ = load_checkpoint(out)
    assert torch.count_nonzero(reloaded.model.norm.weight) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _with_config(src: Path, dst: Path, **changes: object) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text(encoding="utf-8"))
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return dst


def test_absurd_config_dimensions_are_rejected_before_allocating(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A vocab_size of 10**13 used to reach torch (RuntimeError, or the OOM killer) instead of a CheckpointError."""
    huge = _with_config(tiny_checkpoint, tmp_path / "huge", vocab_size=10**13)
    with pytest.raises(CheckpointError, match=r"config.json: vocab_size is 10000000000000, above"):
        load_checkpoint(huge)
    with pytest.raises(ConfigError, match="n_layer"):
        ModelConfig(n_layer=10**6)


def test_config_larger_than_the_weights_fails_on_shapes_not_memory(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Within the bounds but ~1 TB of parameters: the shapes are compared on the meta device, nothing is allocated."""
    big = _with_config(
        tiny_checkpoint, tmp_path / "big", hidden_size=1 << 16, intermediate_size=1 << 18, head_dim=(1 << 16) // 4
    )
    with pytest.raises(CheckpointError, match="has shape"):
        load_checkpoint(big)
