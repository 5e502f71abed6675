"""Model configuration: a frozen, self-validating dataclass and the named presets.

This is the model's shape only. Training hyper-parameters live in `training`, serving limits in `server`.
The field names follow nanoGPT (`n_layer`, `n_embd`, ...); `to_hf_dict` / `from_hf_dict` map them to the
HF Llama `config.json` keys of the checkpoint directory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from minigpt_core.errors import ConfigError

# Upper bounds on each dimension, far above any model this project trains (the largest open models stay below
# them too), so that a corrupt or hostile config.json is rejected with a message instead of asking torch for
# terabytes (a vocab_size of 10**13 used to leave the server "loading" forever).
MAX_DIMS: dict[str, int] = {
    "vocab_size": 1 << 21,
    "n_layer": 1024,
    "n_embd": 1 << 16,
    "n_head": 1024,
    "n_kv_head": 1024,
    "ffn_dim": 1 << 18,
    "max_seq_len": 1 << 21,
}


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    vocab_size: int = 6400
    n_layer: int = 8
    n_embd: int = 128
    n_head: int = 4
    n_kv_head: int = 1
    ffn_dim: int = 384
    max_seq_len: int = 2048
    rope_theta: float = 1e6
    norm_eps: float = 1e-6
    qk_norm: bool = False
    tie_embeddings: bool = True
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_embd", "n_head", "n_kv_head", "ffn_dim", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
            if value > MAX_DIMS[name]:
                raise ConfigError(f"{name} is {value}, above the supported maximum of {MAX_DIMS[name]}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            raise ConfigError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim ({self.head_dim}) must be even for RoPE")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ConfigError("rope_theta and norm_eps must be positive")
        if not self.tie_embeddings:
            raise ConfigError("only tied input/output embeddings are supported")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def num_parameters(self) -> int:
        """Exact parameter count (tied embeddings counted once)."""
        d, hd = self.n_embd, self.head_dim
        attn = d * self.n_head * hd + 2 * d * self.n_kv_head * hd + self.n_head * hd * d
        if self.qk_norm:
            attn += 2 * hd
        mlp = 3 * d * self.ffn_dim
        per_layer = attn + mlp + 2 * d
        return self.vocab_size * d + self.n_layer * per_layer + d

    def kv_cache_bytes_per_token(self, bytes_per_element: int = 2) -> int:
        """K and V for every layer, only the KV heads (GQA)."""
        return 2 * self.n_layer * self.n_kv_head * self.head_dim * bytes_per_element

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token: 6N + 12·L·H·d_head·T (PaLM appendix B convention)."""
        return 6 * self.num_parameters() + 12 * self.n_layer * self.n_head * self.head_dim * seq_len

    # --- HF Llama config.json ----------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        arch, model_type = ("Qwen3ForCausalLM", "qwen3") if self.qk_norm else ("LlamaForCausalLM", "llama")
        return {
            "architectures": [arch],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.n_embd,
            "intermediate_size": self.ffn_dim,
            "num_hidden_layers": self.n_layer,
            "num_attention_heads": self.n_head,
            "num_key_value_heads": self.n_kv_head,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_seq_len,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "rope_scaling": None,
            "rms_norm_eps": self.norm_eps,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tie_embeddings,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "initializer_range": self.init_std,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "use_cache": True,
            "torch_dtype": "float32",
        }

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        try:
            rope = d.get("rope_parameters") or {}
            theta = rope.get("rope_theta", d.get("rope_theta", 1e6))
            cfg = cls(
                vocab_size=int(d["vocab_size"]),
                n_layer=int(d["num_hidden_layers"]),
                n_embd=int(d["hidden_size"]),
                n_head=int(d["num_attention_heads"]),
                n_kv_head=int(d.get("num_key_value_heads", d["num_attention_heads"])),
                ffn_dim=int(d["intermediate_size"]),
                max_seq_len=int(d.get("max_position_embeddings", 2048)),
                rope_theta=float(theta),
                norm_eps=float(d.get("rms_norm_eps", 1e-6)),
                qk_norm=d.get("model_type") == "qwen3",
                tie_embeddings=bool(d.get("tie_word_embeddings", True)),
                init_std=float(d.get("initializer_range", 0.02)),
            )
        except KeyError as exc:
            raise ConfigError(f"config.json is missing the key {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"config.json has an invalid value: {exc}") from exc
        hd = d.get("head_dim")
        if hd is not None and int(hd) != cfg.head_dim:
            raise ConfigError(f"head_dim {hd} != hidden_size / num_attention_heads ({cfg.head_dim})")
        return cfg


def tiny() -> ModelConfig:
    """~2.0M parameters: 128 x 8 layers, 4 q / 1 kv heads, vocab 4096. The CPU demo model."""
    return ModelConfig(vocab_size=4096, n_layer=8, n_embd=128, n_head=4, n_kv_head=1, ffn_dim=384)


def small() -> ModelConfig:
    """~25M parameters: 384 x 12 layers, 12 q / 3 kv heads."""
    return ModelConfig(vocab_size=6400, n_layer=12, n_embd=384, n_head=12, n_kv_head=3, ffn_dim=1280)


def medium() -> ModelConfig:
    """~112M parameters: 640 x 20 layers, 16 q / 4 kv heads, FFN 2048, vocab 20000."""
    return ModelConfig(vocab_size=20000, n_layer=20, n_embd=640, n_head=16, n_kv_head=4, ffn_dim=2048)


PRESETS = {"tiny": tiny, "small": small, "medium": medium}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown config preset {name!r}; choose one of {', '.join(PRESETS)}") from None
