"""A fused decode-attention kernel (Triton) for one new token per row, used by the engine on CUDA.

One program per (row, query head) applies RoPE to its query and to the row's new key, attends over the cached
positions of its KV head (GQA: the group's programs share it) with an online softmax, and the group's first
program writes the new key and value into the KV cache at the row's position. It replaces five kernels per layer
(RoPE/cache-write pointwise kernels, the mask, cuDNN's SDPA) with one.

Where it stands (H200, bf16, batch 1, `python3 scripts/profile_engine.py --config small,medium --streams 1
--decode-kernel both`, 2026-12-02): on the small preset (head_dim 32) the decode step drops from 167 to 121
kernels and from 369 to 307 us of kernel time per token (this kernel 5.8 us a layer against cuDNN's 6.7 us plus
~3 us of pointwise work); on the medium preset (head_dim 40) it takes 53 us a layer and halves the token rate,
most likely register spills of the (128 x 32) float32 tiles at num_warps=2. So `Engine(decode_kernel=True)` is
opt-in, off by default, until its launch shape is tuned per head size and it wins on both presets.

The result equals `MiniGPT`'s reference path (rotate-half RoPE, keys at positions <= the row's position among the
first `kv_len`) within bf16 rounding: the RoPE and softmax arithmetic runs in float32 here. Triton is optional:
without it (the CPU wheels of torch) `available()` is False and the model keeps the reference path.
"""

from __future__ import annotations

import math

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only torch: no Triton, the reference path serves
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _rope(x1, x2, c1, c2, s1, s2):  # type: ignore[no-untyped-def]
        # rotate_half(x) = cat(-x2, x1): out = x * cos + rotate_half(x) * sin, in two halves
        return x1 * c1 - x2 * s1, x2 * c2 + x1 * s2

    @triton.jit
    def _decode_attention_kernel(  # type: ignore[no-untyped-def]
        Q,
        KN,
        VN,
        Cos,
        Sin,
        CK,
        CV,
        Pos,
        Out,
        stride_q,
        stride_k,
        stride_v,
        stride_cos,
        stride_pos,
        stride_cs,
        stride_ch,
        stride_cl,
        stride_o,
        kv_len,
        scale,
        G: tl.constexpr,
        D: tl.constexpr,
        HALF: tl.constexpr,
        BLOCK_H: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        b = tl.program_id(0)
        qh = tl.program_id(1)  # the query head; its KV head is qh // G
        h = qh // G
        pos = tl.load(Pos + b * stride_pos)
        d = tl.arange(0, BLOCK_H)
        dm = d < HALF

        c1 = tl.load(Cos + b * stride_cos + d, mask=dm, other=0.0).to(tl.float32)
        c2 = tl.load(Cos + b * stride_cos + HALF + d, mask=dm, other=0.0).to(tl.float32)
        s1 = tl.load(Sin + b * stride_cos + d, mask=dm, other=0.0).to(tl.float32)
        s2 = tl.load(Sin + b * stride_cos + HALF + d, mask=dm, other=0.0).to(tl.float32)
        q1 = tl.load(Q + b * stride_q + qh * D + d, mask=dm, other=0.0).to(tl.float32)
        q2 = tl.load(Q + b * stride_q + qh * D + HALF + d, mask=dm, other=0.0).to(tl.float32)
        q1, q2 = _rope(q1, q2, c1, c2, s1, s2)
        q1 = q1 * scale
        q2 = q2 * scale
        k1 = tl.load(KN + b * stride_k + h * D + d, mask=dm, other=0.0).to(tl.float32)
        k2 = tl.load(KN + b * stride_k + h * D + HALF + d, mask=dm, other=0.0).to(tl.float32)
        k1, k2 = _rope(k1, k2, c1, c2, s1, s2)
        # The current token's key and value as every later step reads them: rounded to the cache dtype.
        k1c = k1.to(CK.dtype.element_ty)
        k2c = k2.to(CK.dtype.element_ty)
        v1c = tl.load(VN + b * stride_v + h * D + d, mask=dm, other=0.0).to(CV.dtype.element_ty)
        v2c = tl.load(VN + b * stride_v + h * D + HALF + d, mask=dm, other=0.0).to(CV.dtype.element_ty)
        cache = b * stride_cs + h * stride_ch
        first = d < HALF * (qh % G == 0).to(tl.int32)  # the group's first program writes the new key and value
        tl.store(CK + cache + pos * stride_cl + d, k1c, mask=first)
        tl.store(CK + cache + pos * stride_cl + HALF + d, k2c, mask=first)
        tl.store(CV + cache + pos * stride_cl + d, v1c, mask=first)
        tl.store(CV + cache + pos * stride_cl + HALF + d, v2c, mask=first)

        # Online softmax over the cached positions < pos (the others of the group read them, never `pos`).
        m = tl.max(tl.full([BLOCK_N], float("-inf"), tl.float32), axis=0)
        den = tl.sum(tl.zeros([BLOCK_N], tl.float32), axis=0)
        acc1 = tl.zeros([BLOCK_H], tl.float32)
        acc2 = tl.zeros([BLOCK_H], tl.float32)
        n_cached = tl.minimum(pos, kv_len)
        for start in range(0, n_cached, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            nm = n < n_cached
            offs = cache + n[:, None] * stride_cl + d[None, :]
            kvmask = nm[:, None] & dm[None, :]
            ck1 = tl.load(CK + offs, mask=kvmask, other=0.0).to(tl.float32)
            ck2 = tl.load(CK + offs + HALF, mask=kvmask, other=0.0).to(tl.float32)
            s = tl.sum(ck1 * q1[None, :], axis=1) + tl.sum(ck2 * q2[None, :], axis=1)
            s = tl.where(nm, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=0))
            alpha = tl.exp(m - m_new)
            p = tl.exp(s - m_new)
            den = den * alpha + tl.sum(p, axis=0)
            cv1 = tl.load(CV + offs, mask=kvmask, other=0.0).to(tl.float32)
            cv2 = tl.load(CV + offs + HALF, mask=kvmask, other=0.0).to(tl.float32)
            acc1 = acc1 * alpha + tl.sum(p[:, None] * cv1, axis=0)
            acc2 = acc2 * alpha + tl.sum(p[:, None] * cv2, axis=0)
            m = m_new
        if pos < kv_len:  # a real row's own token (a padding row parked past kv_len reads only the cache)
            s_cur = tl.sum(q1 * k1c.to(tl.float32), axis=0) + tl.sum(q2 * k2c.to(tl.float32), axis=0)
            m_new = tl.maximum(m, s_cur)
            alpha = tl.exp(m - m_new)
            p_cur = tl.exp(s_cur - m_new)
            den = den * alpha + p_cur
            acc1 = acc1 * alpha + p_cur * v1c.to(tl.float32)
            acc2 = acc2 * alpha + p_cur * v2c.to(tl.float32)
        den = tl.where(den > 0, den, 1.0)
        o = Out + b * stride_o + qh * D
        tl.store(o + d, (acc1 / den).to(Out.dtype.element_ty), mask=dm)
        tl.store(o + HALF + d, (acc2 / den).to(Out.dtype.element_ty), mask=dm)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@torch.library.custom_op("minigpt::decode_attention", mutates_args=("k_cache", "v_cache"))
def decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    positions: torch.Tensor,
    kv_len: int,
) -> torch.Tensor:
    """Attention of one new token per row; returns (B, H * D) in q's dtype and writes k, v into the caches.

    q (B, H*D), k and v (B, KV*D): the projections before RoPE (rows may be strided views, the last dimension
    contiguous); cos, sin (B, D) for each row's position; k_cache, v_cache (slots, KV, L, D) with row b in slot b;
    positions (B,) or (B, 1); kv_len: how many cache positions a row may read (its keys at positions <= its own).
    """
    block_n, num_warps = launch_config(k_cache.shape[3], min(kv_len, k_cache.shape[2]))
    return _launch(q, k, v, cos, sin, k_cache, v_cache, positions, kv_len, block_n, num_warps)


# (BLOCK_N, num_warps) per head size, from `scripts/tune_decode_kernel.py` on an H200. Other head sizes keep each
# of the four (BLOCK_N x BLOCK_H) float32 tiles at <= 2048 elements (small's shape, which did not spill).
TUNED: dict[int, tuple[int, int]] = {}


def launch_config(head_dim: int, kv_len: int) -> tuple[int, int]:
    """The (BLOCK_N, num_warps) the kernel runs with for this head size and number of readable positions."""
    block_n, num_warps = TUNED.get(head_dim, (128, 2))
    if head_dim not in TUNED:
        while block_n > 16 and block_n * _next_pow2(head_dim // 2) > 2048:  # the (BLOCK_N x half) tiles
            block_n //= 2
    return max(16, min(block_n, _next_pow2(kv_len))), num_warps


def _launch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    positions: torch.Tensor,
    kv_len: int,
    block_n: int,
    num_warps: int,
) -> torch.Tensor:
    B = q.shape[0]
    n_kv, L, D = k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]
    G = q.shape[1] // (n_kv * D)
    out = torch.empty((B, q.shape[1]), device=q.device, dtype=q.dtype)
    half = D // 2
    _decode_attention_kernel[(B, n_kv * G)](
        q,
        k,
        v,
        cos,
        sin,
        k_cache,
        v_cache,
        positions,
        out,
        q.stride(0),
        k.stride(0),
        v.stride(0),
        cos.stride(0),
        positions.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        out.stride(0),
        min(kv_len, L),
        1.0 / math.sqrt(D),
        G=G,
        D=D,
        HALF=half,
        BLOCK_H=_next_pow2(half),
        BLOCK_N=block_n,
        num_warps=num_warps,
    )
    return out


@decode_attention.register_fake
def _(q, k, v, cos, sin, k_cache, v_cache, positions, kv_len):  # type: ignore[no-untyped-def]
    return q.new_empty((q.shape[0], q.shape[1]))
