"""Model behaviour: cached decoding equals full recompute, GQA degenerates to MHA, RoPE is relative."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from minigpt_core.config import ModelConfig, preset
from minigpt_core.errors import ConfigError
from minigpt_core.kv_cache import KVCache
from minigpt_core.model import MiniGPT, apply_rope


def small_cfg(**kw: object) -> ModelConfig:
    base = dict(vocab_size=97, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, ffn_dim=128, max_seq_len=64)
    base.update(kw)
    return ModelConfig(**base)  # type: ignore[arg-type]


def test_presets_shapes_and_counts() -> None:
    tiny, small, medium = preset("tiny"), preset("small"), preset("medium")
    assert (tiny.n_embd, tiny.n_layer, tiny.n_head, tiny.n_kv_head) == (128, 8, 4, 1)
    assert (small.n_embd, small.n_layer, small.n_head, small.n_kv_head) == (384, 12, 12, 3)
    assert (
        medium.n_embd,
        medium.n_layer,
        medium.n_head,
        medium.n_kv_head,
        medium.ffn_dim,
        medium.vocab_size,
    ) == (640, 20, 16, 4, 2048, 20000)
    assert abs(small.num_parameters() - 25e6) / 25e6 < 0.15
    assert abs(medium.num_parameters() - 112e6) / 112e6 < 0.15
    for cfg in (tiny, small_cfg(), small_cfg(qk_norm=True)):
        assert MiniGPT(cfg).num_parameters() == cfg.num_parameters()


def test_config_validates_itself() -> None:
    with pytest.raises(ConfigError):
        small_cfg(n_head=5)
    with pytest.raises(ConfigError):
        small_cfg(n_kv_head=3)
    with pytest.raises(ConfigError):
        small_cfg(vocab_size=0)
    with pytest.raises(ConfigError):
        preset("huge")


@pytest.mark.parametrize("qk_norm", [False, True])
def test_cached_decoding_equals_full_recompute(qk_norm: bool) -> None:
    torch.manual_seed(0)
    cfg = small_cfg(qk_norm=qk_norm)
    model = MiniGPT(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 20))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(cfg, num_slots=4, max_seq_len=cfg.max_seq_len)
        slots = torch.tensor([3, 1])
        # prefill 12 tokens in two chunks, then decode one token at a time
        out = [model(ids[:, :7], cache=cache, slots=slots, positions=torch.arange(7).expand(2, 7))]
        out.append(model(ids[:, 7:12], cache=cache, slots=slots, positions=torch.arange(7, 12).expand(2, 5)))
        for t in range(12, 20):
            pos = torch.full((2, 1), t)
            out.append(model(ids[:, t : t + 1], cache=cache, slots=slots, positions=pos, kv_len=cfg.max_seq_len))
    cached = torch.cat(out, dim=1)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


def test_rows_at_different_lengths_share_a_decode_step() -> None:
    torch.manual_seed(1)
    cfg = small_cfg()
    model = MiniGPT(cfg).eval()
    a, b = torch.randint(0, 97, (1, 9)), torch.randint(0, 97, (1, 4))
    with torch.no_grad():
        cache = KVCache(cfg, num_slots=2, max_seq_len=32)
        model(a[:, :8], cache=cache, slots=torch.tensor([0]), positions=torch.arange(8)[None])
        model(b[:, :3], cache=cache, slots=torch.tensor([1]), positions=torch.arange(3)[None])
        step = model(
            torch.cat([a[:, 8:], b[:, 3:]]),
            cache=cache,
            slots=torch.tensor([0, 1]),
            positions=torch.tensor([[8], [3]]),
        )
        torch.testing.assert_close(step[0, -1], model(a)[0, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step[1, -1], model(b)[0, -1], atol=1e-5, rtol=1e-5)


def reference_mha(model: MiniGPT, ids: torch.Tensor) -> torch.Tensor:
    """Plain multi-head attention written out by hand (no SDPA, no GQA), same weights."""
    cfg = model.config
    x = model.model.embed_tokens(ids)
    T = ids.shape[1]
    pos = torch.arange(T)[None]
    cos, sin = model.rotary(pos, x.dtype)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for layer in model.model.layers:
        att = layer.self_attn
        h = layer.input_layernorm(x)
        q = att.q_proj(h).view(1, T, cfg.n_head, cfg.head_dim).transpose(1, 2)
        k = att.k_proj(h).view(1, T, cfg.n_head, cfg.head_dim).transpose(1, 2)
        v = att.v_proj(h).view(1, T, cfg.n_head, cfg.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(cfg.head_dim)
        scores = scores.masked_fill(~causal, float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(1, T, -1)
        x = x + att.o_proj(y)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return F.linear(model.model.norm(x), model.model.embed_tokens.weight)


def test_gqa_with_all_kv_heads_equals_plain_mha() -> None:
    torch.manual_seed(2)
    model = MiniGPT(small_cfg(n_kv_head=4)).eval()
    ids = torch.randint(0, 97, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference_mha(model, ids), atol=1e-5, rtol=1e-5)


def test_gqa_shares_kv_heads_across_query_groups() -> None:
    """A GQA model equals an MHA model whose K/V weights repeat each KV head for its query group."""
    torch.manual_seed(3)
    gqa = MiniGPT(small_cfg(n_kv_head=2)).eval()
    mha = MiniGPT(small_cfg(n_kv_head=4)).eval()
    state = gqa.state_dict()
    hd = gqa.config.head_dim
    for name, t in list(state.items()):
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            state[name] = t.view(2, hd, -1).repeat_interleave(2, dim=0).reshape(4 * hd, -1)
    mha.load_state_dict(state)
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(gqa(ids), mha(ids), atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_only_on_relative_position() -> None:
    torch.manual_seed(4)
    model = MiniGPT(small_cfg())
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    rope = model.rotary.__class__(16, 1e6)

    def score(pq: int, pk: int) -> float:
        cq, sq = rope(torch.tensor([[pq]]), torch.float32)
        ck, sk = rope(torch.tensor([[pk]]), torch.float32)
        return float((apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum())

    assert score(5, 2) == pytest.approx(score(105, 102), abs=1e-4)
    assert score(7, 7) == pytest.approx(score(0, 0), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)


def test_kv_cache_stores_only_kv_heads() -> None:
    cfg = preset("small")
    cache = KVCache(cfg.replace(n_layer=2), num_slots=3, max_seq_len=8)
    assert cache.shape == (2, 3, cfg.n_kv_head, 8, cfg.head_dim)


def test_fused_projections_give_the_same_logits_and_keep_the_state_dict() -> None:
    """fuse_projections: one GEMM for q/k/v and one for gate/up; same logits, same state_dict names and values,
    the old parameters are views of the fused weight (no second copy)."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, ffn_dim=64, max_seq_len=32)
    model = MiniGPT(cfg).eval()
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        before = model(ids)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        assert model.fuse_projections()
        after = model(ids)
    attn = model.model.layers[0].self_attn
    assert attn.qkv_weight is not None and attn.qkv_weight.shape[0] == attn.q_proj.weight.shape[0] + 2 * 16
    assert attn.q_proj.weight.data_ptr() == attn.qkv_weight.data_ptr()  # a view, not a copy
    assert torch.allclose(before, after, atol=1e-5)
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
