"""The MiniGPT decoder-only Transformer, in one file that reads top to bottom.

RoPE (HF Llama rotate-half convention, so weights are interchangeable), grouped-query attention through
`scaled_dot_product_attention`, SwiGLU MLP, pre-RMSNorm, tied input/output embeddings, optional QK-norm.
Parameter names mirror HF Llama (`model.layers.0.self_attn.q_proj.weight`), so a state dict maps 1:1 to
`LlamaForCausalLM`. This module holds no KV cache state: the cache is passed in (see kv_cache.py).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from minigpt_core import kernels
from minigpt_core.config import ModelConfig

if TYPE_CHECKING:
    from minigpt_core.kv_cache import KVCache


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 like HF Llama, then cast back before the weight multiply.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.type_as(x)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for RoPE; `inv_freq` is a non-persistent buffer so checkpoints stay HF-shaped."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.inv_freq: torch.Tensor
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: (B, T) -> cos, sin: (B, 1, T, head_dim)
        freqs = positions[..., None].float() * self.inv_freq  # (B, T, head_dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos()[:, None].to(dtype), emb.sin()[:, None].to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        d = config.n_embd
        self.q_proj = nn.Linear(d, self.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv_head * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv_head * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, d, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None

        self.qkv_weight: torch.Tensor | None
        self.register_buffer("qkv_weight", None, persistent=False)  # set by MiniGPT.fuse_projections (serving)
        self.decode_kernel = False  # set by MiniGPT.use_decode_kernel (serving on CUDA)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None,
        slots: torch.Tensor | None,
        positions: torch.Tensor | None,
        attn_mask: torch.Tensor | None,
        kv_len: int,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        if self.qkv_weight is not None:  # one GEMM for q, k and v
            hq, hkv = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
            q_, k_, v_ = F.linear(x, self.qkv_weight).split([hq, hkv, hkv], dim=-1)
            q = q_.view(B, T, self.n_head, self.head_dim)
            k, v = k_.view(B, T, self.n_kv_head, self.head_dim), v_.view(B, T, self.n_kv_head, self.head_dim)
        else:
            q = self.q_proj(x).view(B, T, self.n_head, self.head_dim)  # (B, T, H, D)
            k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim)  # (B, T, KV, D)
            v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        fused = self.decode_kernel and T == 1 and slots is None
        if fused and cache is not None and kernels.serves(self.head_dim, kv_len):
            # One token per row, row b in slot b: RoPE, the cache write and attention in one kernel.
            assert positions is not None
            y = kernels.decode_attention(
                q.flatten(2)[:, 0],
                k.flatten(2)[:, 0],
                v.flatten(2)[:, 0],
                cos[:, 0, 0],
                sin[:, 0, 0],
                cache.k[self.layer_idx],
                cache.v[self.layer_idx],
                positions[:, 0],
                kv_len,
            )
            return self.o_proj(y.view(B, T, self.n_head * self.head_dim))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        if cache is None:  # a training mask (document boundaries) replaces the plain causal one
            if attn_mask is not None and q.is_cuda and k.shape[1] != q.shape[1]:
                # SDPA's GQA with a mask would take the math kernel ((B, H, T, T) scores kept for backward); the
                # repeated heads keep the memory-efficient one
                rep = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            y = _sdpa(q, k, v, attn_mask, is_causal=attn_mask is None)
        else:
            assert positions is not None
            ck, cv = cache.k[self.layer_idx], cache.v[self.layer_idx]  # (S, KV, L, D)
            if slots is not None and B == 1 and not slots.is_cuda and not torch.compiler.is_compiling():
                # One row on the CPU (a single stream): its slot and positions as views, no index copies.
                s, p = int(slots[0]), int(positions[0, 0])
                ck[s, :, p : p + T] = k[0].to(ck.dtype)
                cv[s, :, p : p + T] = v[0].to(cv.dtype)
                keys, values = ck[s : s + 1, :, :kv_len], cv[s : s + 1, :, :kv_len]
            else:
                rows = slots if slots is not None else torch.arange(B, device=x.device)
                # Advanced indices around a slice put (B, T) first: the target view is (B, T, KV, D).
                ck[rows[:, None], :, positions] = k.transpose(1, 2).to(ck.dtype)
                cv[rows[:, None], :, positions] = v.transpose(1, 2).to(cv.dtype)
                if slots is None:  # dense rows: row b is slot b, so the cache is read as a view (no gather copy)
                    keys, values = ck[:B, :, :kv_len], cv[:B, :, :kv_len]  # (B, KV, kv_len, D)
                else:
                    keys, values = ck[slots, :, :kv_len], cv[slots, :, :kv_len]
            y = _sdpa(q, keys.to(q.dtype), values.to(q.dtype), attn_mask, is_causal=False)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.o_proj(y)


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool
) -> torch.Tensor:
    """SDPA with grouped KV heads: flash / mem-efficient kernels on GPU when no explicit mask is given."""
    if k.shape[1] != q.shape[1]:
        if _HAS_ENABLE_GQA and (mask is None or q.device.type != "cpu"):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=True)
        if mask is not None and not is_causal:
            # CPU with a mask: a group's query heads attend as extra query rows of their KV head, so the keys and
            # values are read where they are instead of copied once per query head (repeat_interleave).
            B, H, T, D = q.shape
            G = H // k.shape[1]
            rows = mask if T == 1 else mask.repeat(1, 1, G, 1)  # (B, 1, G*T, L): row g*T + t is query t of head g
            y = F.scaled_dot_product_attention(q.reshape(B, k.shape[1], G * T, D), k, v, attn_mask=rows)
            return y.reshape(B, H, T, D)
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)


_HAS_ENABLE_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


def _fuse(*linears: nn.Linear) -> torch.Tensor:
    """Concatenate the weights along the output dim; each Linear's weight becomes a view into the result."""
    fused = torch.cat([m.weight.detach() for m in linears], dim=0)
    start = 0
    for m in linears:
        n = m.weight.shape[0]
        m.weight = nn.Parameter(fused[start : start + n], requires_grad=False)
        start += n
    return fused


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.n_embd, config.ffn_dim, bias=False)
        self.up_proj = nn.Linear(config.n_embd, config.ffn_dim, bias=False)
        self.down_proj = nn.Linear(config.ffn_dim, config.n_embd, bias=False)
        self.gate_up_weight: torch.Tensor | None
        self.register_buffer("gate_up_weight", None, persistent=False)  # set by MiniGPT.fuse_projections (serving)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_weight is not None:  # one GEMM for gate and up
            gate, up = F.linear(x, self.gate_up_weight).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None,
        slots: torch.Tensor | None,
        positions: torch.Tensor | None,
        attn_mask: torch.Tensor | None,
        kv_len: int,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, slots, positions, attn_mask, kv_len)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """Named `model` inside MiniGPT so parameter names match HF Llama's `model.*`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.norm_eps)


class MiniGPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)
        # Training only: recompute each block's activations in backward (torch.utils.checkpoint) instead of
        # keeping them; uncached forwards with gradients only, so inference never sees it.
        self.activation_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                # Residual projections scaled down with depth (GPT-2 / nanoGPT).
                nn.init.normal_(p, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer))
            else:
                nn.init.normal_(p, mean=0.0, std=std)

    @torch.no_grad()
    def fuse_projections(self) -> bool:
        """For inference: q/k/v and gate/up each become one GEMM over one concatenated weight (fewer kernels per
        step). The original parameters become views into the fused tensors (non-persistent buffers), so names,
        state_dict and memory are unchanged; call it after moving the model (`.to` would copy the views apart,
        which stays correct but doubles those weights). Training code never calls this. Returns False (and
        changes nothing) when a projection is not a plain nn.Linear (e.g. wrapped by LoRA, which needs them apart).
        """
        pairs = [(layer.self_attn, layer.mlp) for layer in self.model.layers if isinstance(layer, Block)]
        projections = [
            m for attn, mlp in pairs for m in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj)
        ]
        if any(type(m) is not nn.Linear for m in projections):
            return False
        for attn, mlp in pairs:
            if attn.qkv_weight is None:
                attn.qkv_weight = _fuse(attn.q_proj, attn.k_proj, attn.v_proj)
            if mlp.gate_up_weight is None:
                mlp.gate_up_weight = _fuse(mlp.gate_proj, mlp.up_proj)
        return True

    def use_decode_kernel(self, on: bool = True) -> bool:
        """For inference on CUDA: cached one-token forwards with row b in slot b (the engine's decode step) run
        RoPE, the KV write and attention in one Triton kernel (minigpt_core.kernels). Returns whether it is on:
        False without Triton or off CUDA, where the reference path stays."""
        on = on and kernels.available() and next(self.parameters()).is_cuda
        for layer in self.model.layers:
            if isinstance(layer, Block):
                layer.self_attn.decode_kernel = on
        return on

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight  # tied

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        cache: KVCache | None = None,
        slots: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        kv_len: int | None = None,
        last_index: torch.Tensor | None = None,
        return_hidden: bool = False,
        doc_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, V) in float32, or the final hidden states (B, T, C) with `return_hidden`.

        Without a cache: a causal forward from position 0. With a cache: row b writes its T new keys/values into
        slot `slots[b]` (slot b when `slots` is None) at `positions[b]` and attends to that slot's keys at
        positions <= each query's position.
        `kv_len` (default: max position + 1, which costs a host sync) is how many cache positions are read; a
        fixed value keeps the shapes, and so the arithmetic, of one row independent of its batch neighbours.
        `last_index` (B,): only position `last_index[b]` of row b goes through the final norm and the output
        projection, and the result is (B, 1, V): a prefill needs the next-token logits of its last real token only.
        `doc_ids` (B, T), training without a cache: packed rows whose documents must not see each other; a token
        attends only to earlier tokens of its own document and its RoPE position restarts at 0 with each document,
        so a packed row gives every document the logits it would get alone.
        """
        B, T = input_ids.shape
        x = self.model.embed_tokens(input_ids)  # (B, T, C)
        attn_mask = None
        if cache is None:
            pos = torch.arange(T, device=input_ids.device)[None].expand(B, T)
            n_kv = T
            if doc_ids is not None:
                pos, attn_mask = document_positions(doc_ids), document_mask(doc_ids)
        else:
            if positions is None:
                raise ValueError("a cached forward needs positions (and slots, unless row b is slot b)")
            pos = positions
            n_kv = kv_len if kv_len is not None else int(positions.max().item()) + 1
            key_pos = torch.arange(n_kv, device=input_ids.device)
            attn_mask = key_pos[None, None, None, :] <= positions[:, None, :, None]  # (B, 1, T, kv)
        cos, sin = self.rotary(pos, x.dtype)
        checkpointed = self.activation_checkpointing and cache is None and torch.is_grad_enabled()
        for layer in self.model.layers:
            if checkpointed:
                x = checkpoint(layer, x, cos, sin, None, None, None, attn_mask, n_kv, use_reentrant=False)
            else:
                x = layer(x, cos, sin, cache, slots, positions, attn_mask, n_kv)
        if last_index is not None:
            x = x.gather(1, last_index.view(B, 1, 1).expand(B, 1, x.shape[-1]))  # (B, 1, C)
        x = self.model.norm(x)
        if return_hidden:
            return x
        return self.logits(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) in float32 from final hidden states (..., C): the tied output projection."""
        return F.linear(hidden, self.lm_head_weight).float()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def document_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) positions that restart at 0 where `doc_ids` (B, T, non-decreasing along T) changes."""
    T = doc_ids.shape[1]
    idx = torch.arange(T, device=doc_ids.device).expand_as(doc_ids)
    starts = torch.zeros_like(idx)
    starts[:, 1:] = torch.where(doc_ids[:, 1:] != doc_ids[:, :-1], idx[:, 1:], 0)
    return idx - starts.cummax(dim=1).values


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) boolean: query t may attend key s when s <= t and both lie in the same document."""
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    return (doc_ids[:, None, :, None] == doc_ids[:, None, None, :]) & causal
