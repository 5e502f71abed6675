"""minigpt-export: GGUF tensor/metadata round trip, the q/k RoPE permutation, the HF copy, CLI errors.

The llama.cpp parity test (greedy ids of llama.cpp vs our model) is slow and needs `llama_cpp` importable;
see docs/export.md for how it was run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from minigpt_core.chat_template import render
from minigpt_core.checkpoint import load_checkpoint, save_checkpoint
from minigpt_core.config import ModelConfig
from minigpt_core.model import MiniGPT
from minigpt_core.tokenizer import NUM_SPECIAL, Tokenizer
from training.export import export_gguf, export_hf, main, permute_for_llama, unpermute_from_llama

gguf = pytest.importorskip("gguf")

_LAYER_MAP = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(name: str) -> str:
    """Independent inverse of the exporter's naming, written out by hand."""
    if name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if name == "output_norm.weight":
        return "model.norm.weight"
    _, layer, kind, _ = name.split(".")
    return f"model.layers.{layer}.{_LAYER_MAP[kind]}.weight"


def read_gguf(path: Path) -> tuple[dict[str, object], dict[str, np.ndarray], dict[str, str]]:
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items()}
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    return fields, tensors, types


def undo_permutation(name: str, array: np.ndarray, config: ModelConfig) -> torch.Tensor:
    tensor = torch.from_numpy(array.astype(np.float32))
    if name.endswith("attn_q.weight"):
        return unpermute_from_llama(tensor, config.n_head)
    if name.endswith("attn_k.weight"):
        return unpermute_from_llama(tensor, config.n_kv_head)
    return tensor


# ----- the permutation -----


def rope_rotate_half(x: torch.Tensor, pos: int, theta: float) -> torch.Tensor:
    """HF / our model: pairs (i, i + D/2). x: (rows=D,) one head."""
    d = x.shape[0]
    freqs = pos * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    cos, sin = torch.cat([freqs.cos(), freqs.cos()]), torch.cat([freqs.sin(), freqs.sin()])
    rotated = torch.cat([-x[d // 2 :], x[: d // 2]])
    return x * cos + rotated * sin


def rope_interleaved(x: torch.Tensor, pos: int, theta: float) -> torch.Tensor:
    """GGML "normal" RoPE (LLM_ARCH_LLAMA): pairs (2i, 2i + 1)."""
    d = x.shape[0]
    freqs = pos * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    a, b = x[0::2], x[1::2]
    out = torch.empty_like(x)
    out[0::2] = a * freqs.cos() - b * freqs.sin()
    out[1::2] = a * freqs.sin() + b * freqs.cos()
    return out


def test_permutation_turns_rotate_half_rope_into_interleaved_rope() -> None:
    torch.manual_seed(0)
    n_head, head_dim, d_in = 3, 8, 5
    w = torch.randn(n_head * head_dim, d_in, dtype=torch.float64)
    x = torch.randn(d_in, dtype=torch.float64)
    wp = permute_for_llama(w, n_head)
    assert not torch.equal(wp, w)
    assert torch.equal(unpermute_from_llama(wp, n_head), w)
    for pos in (0, 1, 7):
        for h in range(n_head):
            rows = slice(h * head_dim, (h + 1) * head_dim)
            ours = rope_rotate_half(w[rows] @ x, pos, 1e4)
            theirs = rope_interleaved(wp[rows] @ x, pos, 1e4)
            # Same vector up to the fixed row reordering, so dot products (attention scores) are equal.
            assert torch.allclose(permute_for_llama(ours[:, None], 1)[:, 0], theirs)


# ----- GGUF round trip -----


def test_gguf_round_trip_every_tensor_and_metadata(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = export_gguf(tiny_checkpoint, tmp_path / "m.gguf")
    fields, tensors, types = read_gguf(out)
    model, tok = load_checkpoint(tiny_checkpoint)
    cfg = model.config
    state = load_file(str(tiny_checkpoint / "model.safetensors"))

    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    assert {hf_name(n) for n in tensors} == set(state)
    for name, array in tensors.items():
        assert types[name] == "F32"
        assert torch.equal(undo_permutation(name, array, cfg), state[hf_name(name)].float()), name
    # The permutation really happened (a no-op export would pass the loop above only if it were skipped).
    q = state["model.layers.0.self_attn.q_proj.weight"]
    assert not np.array_equal(tensors["blk.0.attn_q.weight"], q.numpy())

    assert fields["general.architecture"] == "llama"
    expect = {
        "llama.context_length": cfg.max_seq_len,
        "llama.embedding_length": cfg.n_embd,
        "llama.block_count": cfg.n_layer,
        "llama.feed_forward_length": cfg.ffn_dim,
        "llama.attention.head_count": cfg.n_head,
        "llama.attention.head_count_kv": cfg.n_kv_head,
        "llama.rope.dimension_count": cfg.head_dim,
        "llama.vocab_size": cfg.vocab_size,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen2",
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": False,
    }
    assert {k: fields[k] for k in expect} == expect
    assert fields["llama.rope.freq_base"] == pytest.approx(cfg.rope_theta)
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.norm_eps)
    chat_template = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text())["chat_template"]
    assert fields["tokenizer.chat_template"] == chat_template

    assert fields["tokenizer.ggml.tokens"] == [tok.id_to_token(i) for i in range(tok.vocab_size)]
    token_types = fields["tokenizer.ggml.token_type"]
    assert isinstance(token_types, list)
    assert token_types[:NUM_SPECIAL] == [int(gguf.TokenType.CONTROL)] * NUM_SPECIAL
    assert set(token_types[NUM_SPECIAL:]) == {int(gguf.TokenType.NORMAL)}
    merges = json.loads(tok.to_json_str())["model"]["merges"]
    assert fields["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in merges]


def test_gguf_f16_keeps_norms_f32(tiny_checkpoint: Path, tmp_path: Path) -> None:
    _, tensors, types = read_gguf(export_gguf(tiny_checkpoint, tmp_path / "m16.gguf", dtype="f16"))
    state = load_file(str(tiny_checkpoint / "model.safetensors"))
    assert types["token_embd.weight"] == "F16" and types["output_norm.weight"] == "F32"
    emb = torch.from_numpy(tensors["token_embd.weight"].astype(np.float32))
    assert torch.allclose(emb, state["model.embed_tokens.weight"], atol=1e-3)


def test_qk_norm_exports_as_unpermuted_qwen3(tiny_tokenizer: Tokenizer, tmp_path: Path) -> None:
    cfg = ModelConfig(
        vocab_size=tiny_tokenizer.vocab_size + 7, n_layer=1, n_embd=32, n_head=2, n_kv_head=1, ffn_dim=64,
        max_seq_len=64, qk_norm=True,
    )  # fmt: skip
    torch.manual_seed(1)
    ckpt = save_checkpoint(tmp_path / "qk", MiniGPT(cfg), tiny_tokenizer)
    fields, tensors, _ = read_gguf(export_gguf(ckpt, tmp_path / "qk.gguf"))
    state = load_file(str(ckpt / "model.safetensors"))
    assert fields["general.architecture"] == "qwen3"
    assert fields["qwen3.vocab_size"] == cfg.vocab_size
    assert "blk.0.attn_q_norm.weight" in tensors and "blk.0.attn_k_norm.weight" in tensors
    # NEOX RoPE in llama.cpp for qwen3: q/k stay in HF order.
    assert np.array_equal(tensors["blk.0.attn_q.weight"], state["model.layers.0.self_attn.q_proj.weight"].numpy())
    tokens = fields["tokenizer.ggml.tokens"]
    assert isinstance(tokens, list) and len(tokens) == cfg.vocab_size
    assert tokens[-1] == f"[PAD{cfg.vocab_size - 1}]"
    assert fields["tokenizer.ggml.token_type"][-1] == int(gguf.TokenType.UNUSED)  # type: ignore[index]


# ----- HF directory and CLI -----


def test_hf_export_copies_a_loadable_checkpoint_without_trainer_state(tiny_checkpoint: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for f in tiny_checkpoint.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    (src / "trainer_state").mkdir()
    (src / "trainer_state" / "optim.pt").write_bytes(b"x")
    out = export_hf(src, tmp_path / "hf")
    assert not (out / "trainer_state").exists()
    assert (out / "tokenizer_config.json").is_file() and (out / "generation_config.json").is_file()
    m1, _ = load_checkpoint(src)
    m2, _ = load_checkpoint(out)
    ids = torch.tensor([[9, 10, 11]])
    assert torch.equal(m1(ids), m2(ids))
    export_hf(src, out)  # re-export over an earlier export is fine


def test_cli_writes_atomically_and_reports_bad_input(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli.gguf"
    assert main(["--model", str(tiny_checkpoint), "--format", "gguf", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert out.is_file() and said.startswith(f"wrote {out}: GGUF for llama.cpp / Ollama (llama, f32), ")
    assert said.strip().endswith(" MB") and said.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["cli.gguf"]  # no temp file left behind
    assert os.stat(out).st_mode & 0o777 == 0o644
    hf = tmp_path / "hf"
    assert main(["--model", str(tiny_checkpoint), "--format", "hf", "--out", str(hf)]) == 0
    assert capsys.readouterr().out.startswith(
        f"wrote {hf}: Hugging Face checkpoint directory (config.json, generation_config.json, model.safetensors, "
        "tokenizer.json, tokenizer_config.json), "
    )
    shutil.rmtree(hf)

    cases = [
        ["--model", str(tmp_path / "missing"), "--format", "gguf", "--out", str(tmp_path / "x.gguf")],
        ["--model", str(tiny_checkpoint), "--format", "gguf", "--out", str(tmp_path)],
        ["--model", str(tiny_checkpoint), "--format", "hf", "--out", str(tiny_checkpoint)],
    ]
    (tmp_path / "notckpt").mkdir()
    (tmp_path / "notckpt" / "keep.txt").write_text("mine")
    cases.append(["--model", str(tiny_checkpoint), "--format", "hf", "--out", str(tmp_path / "notckpt")])
    for argv in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("minigpt-export: error: ") and err.count("\n") == 1, err
    assert (tmp_path / "notckpt" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "x.gguf").exists()


# ----- llama.cpp parity (slow, needs llama_cpp) -----

PARITY_PROMPTS = [
    "hello",
    "What is two plus three?",
    "who are you",
    "Tell me a number between one and ten.",
    "你好",
    "Line one\n\nline two  12345 don't DON'T café 🙂\r\n\tok",
]


def our_greedy(model: MiniGPT, prompt: list[int], n: int, vocab: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids]))[0, -1, :vocab]  # full recompute, only ids the tokenizer knows
            ids.append(int(torch.argmax(logits)))
    return ids[len(prompt) :]


def llama_cpp_greedy(llm: object, prompt: list[int], n: int, vocab: int) -> list[int]:
    llm.reset()  # type: ignore[attr-defined]
    llm.eval(prompt)  # type: ignore[attr-defined]
    out: list[int] = []
    for _ in range(n):
        logits = np.asarray(llm.scores[llm.n_tokens - 1])  # type: ignore[attr-defined]
        out.append(int(np.argmax(logits[:vocab])))
        llm.eval([out[-1]])  # type: ignore[attr-defined]
    return out


@pytest.mark.slow
def test_llama_cpp_greedy_parity(tiny_checkpoint: Path, tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    demo = Path(__file__).resolve().parents[2] / "minigpt_core" / "assets" / "demo"
    src = Path(os.environ.get("MINIGPT_PARITY_MODEL", demo if (demo / "config.json").is_file() else tiny_checkpoint))
    path = export_gguf(src, tmp_path / "parity.gguf")
    model, tok = load_checkpoint(src)
    n_new = int(os.environ.get("MINIGPT_PARITY_TOKENS", "32"))
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=512, n_threads=2, logits_all=True, verbose=False,
        type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
    )  # fmt: skip
    for text in PARITY_PROMPTS:
        rendered = render([{"role": "user", "content": text}], add_generation_prompt=True, tokenizer=tok)
        prompt = rendered.ids
        # The "qwen2" pre-tokenizer + merges tokenise like ours: plain text, and the template text with specials.
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text)
        assert llm.tokenize(rendered.text.encode(), add_bos=False, special=True) == prompt
        ours = our_greedy(model, prompt, n_new, tok.vocab_size)
        theirs = llama_cpp_greedy(llm, prompt, n_new, tok.vocab_size)
        print(f"{text!r}: ours={ours}\n{'':>{len(text) + 3}}llama.cpp={theirs}\n  text={tok.decode(ours)!r}")
        assert theirs == ours, text
