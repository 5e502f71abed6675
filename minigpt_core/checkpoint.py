"""The checkpoint directory, the only on-disk format: HF-Llama-compatible and servable as is.

    config.json              HF Llama keys (model_type "llama")
    model.safetensors        HF Llama tensor names; the tied embedding is stored once
    tokenizer.json           byte-level BPE (tokenizers)
    tokenizer_config.json    special tokens + the Jinja chat_template
    generation_config.json   eos/pad ids and default sampling

Writes are atomic (a temp directory renamed into place); loading never unpickles. Training state
(optimizer etc.) is not written here: `training` adds its own `trainer_state/` beside these files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from minigpt_core.chat_template import CHAT_TEMPLATE_JINJA
from minigpt_core.config import ModelConfig
from minigpt_core.errors import CheckpointError, ConfigError, MiniGPTError
from minigpt_core.model import MiniGPT
from minigpt_core.tokenizer import (
    EOT_ID,
    IM_END_ID,
    IM_START_ID,
    SPECIAL_TOKENS,
    TOKENIZER_CONFIG_FILE,
    Tokenizer,
    atomic_write_text,
)

REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def default_generation_config() -> dict[str, Any]:
    return {
        "eos_token_id": [IM_END_ID, EOT_ID],
        "pad_token_id": EOT_ID,
        "bos_token_id": 1,
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
    }


def tokenizer_config_dict(tokenizer: Tokenizer, *, model_max_length: int = 2048) -> dict[str, object]:
    """The HF `tokenizer_config.json` content, chat template included."""
    added = {
        str(i): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, tok in enumerate(SPECIAL_TOKENS)
    }
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": SPECIAL_TOKENS[IM_START_ID],
        "eos_token": SPECIAL_TOKENS[IM_END_ID],
        "pad_token": SPECIAL_TOKENS[EOT_ID],
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE_JINJA,
    }


def write_tokenizer_config(
    directory: str | os.PathLike[str], tokenizer: Tokenizer, *, model_max_length: int = 2048
) -> Path:
    """Write `directory/tokenizer_config.json` (HF format) atomically; returns its path."""
    path = Path(directory) / TOKENIZER_CONFIG_FILE
    config = tokenizer_config_dict(tokenizer, model_max_length=model_max_length)
    atomic_write_text(path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return path


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_checkpoint_files(
    out_dir: Path, model: MiniGPT, tokenizer: Tokenizer, generation_config: dict[str, Any] | None = None
) -> None:
    """Write the checkpoint files into an existing directory (not atomic; see save_checkpoint)."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # HF ties lm_head to embed_tokens (tie_word_embeddings=true), so the shared tensor is stored once.
    state.pop("lm_head.weight", None)
    dtype = next(iter(state.values())).dtype
    hf = model.config.to_hf_dict()
    hf["torch_dtype"] = str(dtype).removeprefix("torch.")
    _write_json(out_dir / "config.json", hf)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save(out_dir)
    write_tokenizer_config(out_dir, tokenizer, model_max_length=model.config.max_seq_len)
    _write_json(out_dir / "generation_config.json", generation_config or default_generation_config())


def save_checkpoint(
    out_dir: str | Path,
    model: MiniGPT,
    tokenizer: Tokenizer,
    generation_config: dict[str, Any] | None = None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Atomically (re)write a checkpoint directory: build it beside the target, then rename into place.

    `extra(tmp_dir)` may add files (e.g. training state) before the rename, so they land atomically too.
    """

    def fill(tmp: Path) -> None:
        write_checkpoint_files(tmp, model, tokenizer, generation_config)
        if extra is not None:
            extra(tmp)

    return write_dir_atomically(out_dir, fill)


def write_dir_atomically(out_dir: str | Path, fill: Callable[[Path], None]) -> Path:
    """(Re)write a directory atomically: `fill(tmp)` builds it beside the target (fsynced), then a rename puts it
    in place; on any failure the partial copy is removed and the old directory stays as it was."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fill(tmp)
        _fsync_dir(tmp)
        make_readable(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def make_readable(tmp: Path) -> None:
    """Give a finished temp tree the modes a plain `mkdir`/`open` would have had under the current umask.

    `tempfile.mkdtemp` creates 0700 and safetensors writes 0600, so without this a saved checkpoint would be
    private to its owner while every other file the user writes is not. The umask is read from a probe file
    (not `os.umask`, which would change it process-wide for a moment under other threads).
    """
    probe = tmp / ".mode-probe"
    os.close(os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o666))
    file_mode = probe.stat().st_mode & 0o777  # 0o666 & ~umask
    probe.unlink()
    dir_mode = file_mode | ((file_mode & 0o444) >> 2)  # x wherever r: 0o644 -> 0o755
    for root, dirs, files in os.walk(tmp):
        os.chmod(root, dir_mode)
        for name in files:
            os.chmod(os.path.join(root, name), file_mode)
        for name in dirs:
            os.chmod(os.path.join(root, name), dir_mode)


def replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished temp directory into place, replacing `out` (the old one is removed after the swap)."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def read_json_object(path: Path, error: type[MiniGPTError] = CheckpointError) -> dict[str, Any]:
    """The JSON object in `path`, or `error` with the file's name and what is wrong with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data


def load_config(model_dir: str | Path) -> ModelConfig:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (not a MiniGPT checkpoint directory?)")
    data = read_json_object(path)
    try:
        return ModelConfig.from_hf_dict(data)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def load_checkpoint(
    model_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[MiniGPT, Tokenizer]:
    """Load (model, tokenizer) from a checkpoint directory; the model is in eval mode."""
    root = Path(model_dir)
    if not root.is_dir():
        raise CheckpointError(f"{root}: checkpoint directory not found")
    for name in REQUIRED_FILES:
        if not (root / name).is_file():
            raise CheckpointError(f"{root / name}: missing from the checkpoint directory")
    config = load_config(root)
    tokenizer = Tokenizer.from_dir(root)
    weights = root / "model.safetensors"
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{weights}: cannot read safetensors ({exc})") from exc
    state.pop("lm_head.weight", None)
    _check_tensors(weights, state, config)
    model = MiniGPT(config)  # allocated only now that the file holds every tensor the config implies
    model.load_state_dict(state, strict=True)
    if dtype is not None:
        model.to(dtype=dtype)
    model.to(device)
    model.eval()
    return model, tokenizer


def _check_tensors(weights: Path, state: dict[str, torch.Tensor], config: ModelConfig) -> None:
    """The file's tensor names and shapes must be the config's, checked on a meta-device model (no memory)."""
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in MiniGPT(config).state_dict().items()}
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: tensor names do not match the config "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise CheckpointError(f"{weights}: {name} has shape {tuple(state[name].shape)}, config implies {shape}")
