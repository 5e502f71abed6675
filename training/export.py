"""minigpt-export: turn a checkpoint directory into a GGUF file (llama.cpp / Ollama) or a plain HF directory.

What it is: a one-way converter. `--format gguf` writes a llama-architecture GGUF (a `qwen3` one for qk-norm
models) with the full tokenizer (byte-level BPE, Qwen2 split regex -> `tokenizer.ggml.pre = "qwen2"`), the nine
special tokens as CONTROL tokens and the Jinja chat template; `--format hf` copies the servable files of the
checkpoint (already transformers / vLLM loadable) without the trainer state.

`--merge-lora ADAPTER` first folds a PEFT LoRA adapter (minigpt-train --lora-rank, or HF PEFT's) into the weights,
W + (alpha / r) B A, so the output is a plain checkpoint that needs no adapter support (llama.cpp, Ollama, vLLM).

What it is not: a quantiser (use llama.cpp's `llama-quantize` on the f32/f16 output) or an importer.

Weight layout: our q/k projections follow HF's rotate-half RoPE. llama.cpp's LLM_ARCH_LLAMA applies RoPE to
interleaved pairs (GPT-J style), so, like llama.cpp's own convert_hf_to_gguf.py (LlamaModel.permute), the rows of
every head of q_proj / k_proj are reordered from [x0..x(D/2-1), y0..y(D/2-1)] to [x0, y0, x1, y1, ...]. Qwen3
uses NEOX (rotate-half) RoPE in llama.cpp, so qk-norm models are written unpermuted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minigpt_core.checkpoint import (
    load_checkpoint,
    load_config,
    read_json_object,
    replace_dir,
    write_checkpoint_files,
)
from minigpt_core.config import ModelConfig
from minigpt_core.errors import MiniGPTError
from minigpt_core.lora import merge_lora, read_adapter
from minigpt_core.model import MiniGPT
from minigpt_core.tokenizer import EOT_ID, IM_END_ID, IM_START_ID, NUM_SPECIAL, TOKENIZER_CONFIG_FILE, Tokenizer
from training.errors import TrainingError

logger = logging.getLogger(__name__)

PROG = "minigpt-export"
GGUF_PRE_TOKENIZER = "qwen2"  # llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2 runs exactly our SPLIT_PATTERN
HF_FILES = ("config.json", "model.safetensors", "tokenizer.json", TOKENIZER_CONFIG_FILE, "generation_config.json")
DTYPES = ("f32", "f16")

# HF Llama name (inside model.layers.N.) -> llama.cpp name (inside blk.N.)
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")


class ExportError(TrainingError):
    """The export cannot be done (bad arguments, unsupported checkpoint, missing `gguf` package)."""


# ----- weights -----


def gguf_arch(config: ModelConfig) -> str:
    return "qwen3" if config.qk_norm else "llama"


def permute_for_llama(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF rotate-half row order -> GGML interleaved pairs, per head (llama.cpp's LlamaModel.permute)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_from_llama(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """The inverse of `permute_for_llama` (GGML interleaved -> HF rotate-half)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name: str) -> str:
    """Map one HF Llama tensor name to its llama.cpp name; ExportError for names we do not know."""
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    m = _LAYER_RE.fullmatch(hf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"blk.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    raise ExportError(f"tensor {hf_name!r} has no llama.cpp equivalent")


def gguf_tensors(state: dict[str, torch.Tensor], config: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """(llama.cpp name, float32 tensor) for every weight, q/k permuted for the llama arch; sorted as llama.cpp
    writes them (globals, then blocks in order). The tied output matrix is not repeated."""
    permute = gguf_arch(config) == "llama"
    order = {n: i for i, n in enumerate(_LAYER_NAMES)}

    def key(name: str) -> tuple[int, int]:
        m = _LAYER_RE.fullmatch(name)
        return (int(m.group(1)), order.get(m.group(2), 99)) if m else (-1, 0 if "embed" in name else 1)

    for name in sorted(state, key=key):
        if name == "lm_head.weight":
            continue
        tensor = state[name].detach().to("cpu", torch.float32)
        if permute and name.endswith("self_attn.q_proj.weight"):
            tensor = permute_for_llama(tensor, config.n_head)
        elif permute and name.endswith("self_attn.k_proj.weight"):
            tensor = permute_for_llama(tensor, config.n_kv_head)
        yield gguf_name(name), tensor


# ----- tokenizer -----


def gguf_vocab(tokenizer: Tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) as llama.cpp's "gpt2" BPE expects them, padded to the embedding rows."""
    from gguf import TokenType

    if tokenizer.vocab_size > vocab_size:
        raise ExportError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only {vocab_size} embeddings")
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i < tokenizer.vocab_size:
            tokens.append(tokenizer.id_to_token(i))
            types.append(int(TokenType.CONTROL if i < NUM_SPECIAL else TokenType.NORMAL))
        else:  # embedding rows past the tokenizer (padding to a multiple): never produced by the tokenizer
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
    model = json.loads(tokenizer.to_json_str()).get("model", {})
    if model.get("type") != "BPE":
        raise ExportError(f"only byte-level BPE tokenizers can be exported, got {model.get('type')!r}")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def _chat_template(model_dir: Path) -> str:
    path = model_dir / TOKENIZER_CONFIG_FILE
    if path.is_file():
        template = read_json_object(path, ExportError).get("chat_template")
        if isinstance(template, str) and template:
            return template
    from minigpt_core.chat_template import CHAT_TEMPLATE_JINJA

    return CHAT_TEMPLATE_JINJA


# ----- writers -----


def _write_metadata(writer: Any, config: ModelConfig, name: str, dtype: str) -> None:
    from gguf import LlamaFileType

    writer.add_name(name)
    writer.add_file_type(int(LlamaFileType.ALL_F32 if dtype == "f32" else LlamaFileType.MOSTLY_F16))
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.ffn_dim)
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.n_kv_head)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)


def _write_tokenizer(writer: Any, tokenizer: Tokenizer, vocab_size: int, chat_template: str) -> None:
    tokens, types, merges = gguf_vocab(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(GGUF_PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(IM_START_ID)
    writer.add_eos_token_id(IM_END_ID)
    writer.add_eot_token_id(IM_END_ID)
    writer.add_pad_token_id(EOT_ID)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(chat_template)


def _load_merged(model_dir: Path, lora: str | Path | None) -> tuple[MiniGPT, Tokenizer]:
    """The checkpoint in float32, with the adapter at `lora` merged into its weights when one is given."""
    model, tokenizer = load_checkpoint(model_dir, device="cpu", dtype=torch.float32)
    if lora is not None:
        merge_lora(model, read_adapter(lora))
    return model, tokenizer


def export_gguf(
    model_dir: str | Path, out_path: str | Path, *, dtype: str = "f32", lora: str | Path | None = None
) -> Path:
    """Write `out_path` (atomically: temp file + rename) from the checkpoint in `model_dir`; returns the path."""
    try:
        import gguf
    except ImportError as exc:
        raise ExportError("--format gguf needs the gguf package: pip install 'minigpt[gguf]'") from exc
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    src, out = Path(model_dir), Path(out_path)
    if out.is_dir():
        raise ExportError(f"{out}: is a directory; --out must name the .gguf file to write")
    model, tokenizer = _load_merged(src, lora)
    config = model.config
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp, gguf_arch(config))
        _write_metadata(writer, config, src.resolve().name, dtype)
        _write_tokenizer(writer, tokenizer, config.vocab_size, _chat_template(src))
        for name, tensor in gguf_tensors(model.state_dict(), config):
            array = tensor.numpy()
            # 1-D tensors (norms) stay f32, as llama.cpp's converter does.
            writer.add_tensor(name, array.astype(np.float16) if dtype == "f16" and array.ndim > 1 else array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("wrote %s (%s, %s, %d tensors)", out, gguf_arch(config), dtype, len(model.state_dict()))
    return out


def export_hf(model_dir: str | Path, out_dir: str | Path, *, lora: str | Path | None = None) -> Path:
    """Copy the servable files of a checkpoint (no trainer state) into `out_dir`, atomically; with `lora`, the
    weights are the checkpoint's with that adapter merged (in float32, written in the checkpoint's dtype)."""
    src, out = Path(model_dir), Path(out_dir)
    merged = _load_merged(src, lora) if lora is not None else None  # also validates the directory
    if merged is None:
        load_checkpoint(src)  # validates the directory (files, names, shapes) before anything is written
    if out.resolve() == src.resolve():
        raise ExportError(f"{out}: --out must differ from --model")
    if out.exists() and not (out / "config.json").is_file():
        raise ExportError(f"{out}: exists and is not a checkpoint directory; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        if merged is not None:
            model, tokenizer = merged
            model.to(_checkpoint_dtype(src))
            write_checkpoint_files(tmp, model, tokenizer)
        for name in HF_FILES:
            if (src / name).is_file() and not (merged is not None and name in ("config.json", "model.safetensors")):
                shutil.copy2(src / name, tmp / name)
        tmp.chmod(0o755)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _checkpoint_dtype(model_dir: Path) -> torch.dtype:
    """The weight dtype a checkpoint's config.json records (float32 when it says nothing we know)."""
    try:
        name = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("torch_dtype")
    except (OSError, ValueError, AttributeError):
        name = None
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(str(name), torch.float32)


# ----- CLI -----


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Export a MiniGPT checkpoint to GGUF or an HF directory.")
    p.add_argument("--model", required=True, help="checkpoint directory (config.json, model.safetensors, ...)")
    p.add_argument("--format", required=True, choices=("gguf", "hf"), help="gguf file or HF directory")
    p.add_argument("--out", required=True, help="the .gguf file (gguf) or the directory (hf) to write")
    p.add_argument("--dtype", default="f32", choices=DTYPES, help="gguf weight type (norms stay f32)")
    p.add_argument(
        "--merge-lora", metavar="ADAPTER", help="a PEFT LoRA adapter directory to merge into the weights first"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        if args.format == "gguf":
            path = export_gguf(args.model, args.out, dtype=args.dtype, lora=args.merge_lora)
        else:
            path = export_hf(args.model, args.out, lora=args.merge_lora)
    except (MiniGPTError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(describe_output(path, args.format, args.dtype, args.model))
    return 0


def describe_output(path: Path, fmt: str, dtype: str, model_dir: str) -> str:
    """The line `minigpt-export` prints: what it wrote, where, and how big."""
    if fmt == "gguf":
        arch = gguf_arch(load_config(model_dir))
        return f"wrote {path}: GGUF for llama.cpp / Ollama ({arch}, {dtype}), {_size(path.stat().st_size)}"
    files = sorted(p for p in path.iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in files)
    names = ", ".join(p.name for p in files)
    return f"wrote {path}: Hugging Face checkpoint directory ({names}), {_size(total)}"


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 100_000 else f"{n_bytes / 1e3:.1f} kB"


if __name__ == "__main__":
    sys.exit(main())
