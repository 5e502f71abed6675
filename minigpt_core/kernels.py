"""A fused decode-attention kernel (Triton) for one new token per row, used by the engine on CUDA.

One program per (row, query head) applies RoPE to its query and to the row's new key, attends over the cached
positions of its KV head (GQA: the group's programs share it) with an online softmax, and the group's first
program writes the new key and value into the KV cache at the row's position. It replaces five kernels per layer
(RoPE/cache-write pointwise kernels, the mask, cuDNN's SDPA) with one.

Where it stands (H200, bf16, 2026-12-02, `python3 scripts/profile_engine.py --config small,medium --streams 1,64
--decode-kernel both`): each program holds the whole head in one tile (a 64-wide tile for head_dim 40) and the launch
shape follows the number of programs (`launch_config`). Per decode step at one stream, small 167 -> 122 kernels and
369 -> 304 us of kernel time (engine 2,158 -> 2,255 tok/s); medium 263 -> 186 kernels, 690 -> 676 us (1,069 -> 1,081
tok/s; the first design took 53 us a layer there and halved the rate). At 64 streams kernel time drops too (small
472 -> 408 us, medium 1,094 -> 964 us) but the engine is host-bound there and its rate does not move. The kernel's
time grows with the cache length (each query head's program walks the cache; a GQA group reads it once per head)
while cuDNN's stays nearly flat, so `serves` keeps it to the cache lengths where it measured no slower. It is still
opt-in (`Engine(decode_kernel=True)`): a few percent at one stream on small, even elsewhere.

The result equals `MiniGPT`'s reference path (rotate-half RoPE, keys at positions <= the row's position among the
first `kv_len`) within bf16 rounding: the RoPE and softmax arithmetic runs in float32 here. Triton is optional:
without it (the CPU wheels of torch) `available()` is False and the model keeps the reference path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    def _rope(X, base, d, dm, partner, sign, c, s):  # type: ignore[no-untyped-def]
        # x * cos + rotate_half(x) * sin, rotate_half(x)[d] = -x[d + D/2] for d < D/2, else x[d - D/2]
        x = tl.load(X + base + d, mask=dm, other=0.0).to(tl.float32)
        xp = tl.load(X + base + partner, mask=dm, other=0.0).to(tl.float32)
        return x * c + sign * xp * s

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
        BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        b = tl.program_id(0)
        qh = tl.program_id(1)  # the query head; its KV head is qh // G
        h = qh // G
        pos = tl.load(Pos + b * stride_pos)
        d = tl.arange(0, BLOCK_D)  # the whole head in one tile: rows of the cache are read contiguously
        dm = d < D
        half: tl.constexpr = D // 2
        partner = tl.where(d < half, d + half, d - half)
        sign = tl.where(d < half, -1.0, 1.0)
        c = tl.load(Cos + b * stride_cos + d, mask=dm, other=0.0).to(tl.float32)
        s = tl.load(Sin + b * stride_cos + d, mask=dm, other=0.0).to(tl.float32)
        q = _rope(Q, b * stride_q + qh * D, d, dm, partner, sign, c, s) * scale
        k = _rope(KN, b * stride_k + h * D, d, dm, partner, sign, c, s)
        # The current token's key and value as every later step reads them: rounded to the cache dtype.
        kc = k.to(CK.dtype.element_ty)
        vc = tl.load(VN + b * stride_v + h * D + d, mask=dm, other=0.0).to(CV.dtype.element_ty)
        cache = b * stride_cs + h * stride_ch
        first = dm & (qh % G == 0)  # the group's first program writes the new key and value
        tl.store(CK + cache + pos * stride_cl + d, kc, mask=first)
        tl.store(CV + cache + pos * stride_cl + d, vc, mask=first)

        # Online softmax over the cached positions < pos (the others of the group read them, never `pos`).
        m = tl.max(tl.full([BLOCK_N], float("-inf"), tl.float32), axis=0)
        den = tl.sum(tl.zeros([BLOCK_N], tl.float32), axis=0)
        acc = tl.zeros([BLOCK_D], tl.float32)
        n_cached = tl.minimum(pos, kv_len)
        for start in range(0, n_cached, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            nm = n < n_cached
            offs = cache + n[:, None] * stride_cl + d[None, :]
            kvmask = nm[:, None] & dm[None, :]
            ck = tl.load(CK + offs, mask=kvmask, other=0.0).to(tl.float32)
            sc = tl.sum(ck * q[None, :], axis=1)
            sc = tl.where(nm, sc, float("-inf"))
            m_new = tl.maximum(m, tl.max(sc, axis=0))
            alpha = tl.exp(m - m_new)
            p = tl.exp(sc - m_new)
            den = den * alpha + tl.sum(p, axis=0)
            cv = tl.load(CV + offs, mask=kvmask, other=0.0).to(tl.float32)
            acc = acc * alpha + tl.sum(p[:, None] * cv, axis=0)
            m = m_new
        if pos < kv_len:  # a real row's own token (a padding row parked past kv_len reads only the cache)
            s_cur = tl.sum(q * kc.to(tl.float32), axis=0)
            m_new = tl.maximum(m, s_cur)
            alpha = tl.exp(m - m_new)
            p_cur = tl.exp(s_cur - m_new)
            den = den * alpha + p_cur
            acc = acc * alpha + p_cur * vc.to(tl.float32)
            m = m_new
        den = tl.where(den > 0, den, 1.0)
        tl.store(Out + b * stride_o + qh * D + d, (acc / den).to(Out.dtype.element_ty), mask=dm)


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
    block_n, num_warps = launch_config(k_cache.shape[3], q.shape[0] * q.shape[1] // k_cache.shape[3], kv_len)
    return _launch(q, k, v, cos, sin, k_cache, v_cache, positions, kv_len, block_n, num_warps)


@dataclass(frozen=True)
class Tuning:
    """How the kernel runs for one head size: up to which readable cache length it beats the unfused path, and
    (BLOCK_N, num_warps) for a launch of few programs (batch x heads <= FEW_PROGRAMS) and of many."""

    max_kv_len: int
    few: tuple[int, int]
    many: tuple[int, int]


FEW_PROGRAMS = 128  # about one program per SM of an H100/H200
# Launch shapes from `scripts/tune_decode_kernel.py` on an H200 (bf16; batch 1 and 64; 256-1024 readable
# positions); cache-length limits from the engine profile (the model's own attention took ~9 us a layer at 256
# positions; this kernel 4.5-10 us at 256 and 7-18 us (small) / 18-48 us (medium) at 512).
TUNED: dict[int, Tuning] = {
    32: Tuning(max_kv_len=512, few=(128, 8), many=(128, 1)),
    40: Tuning(max_kv_len=256, few=(128, 8), many=(32, 1)),
}
UNTUNED = Tuning(max_kv_len=256, few=(64, 4), many=(32, 1))  # other head sizes: short caches, modest tiles


def serves(head_dim: int, kv_len: int) -> bool:
    """Whether the kernel should serve a decode step that reads `kv_len` cache positions (else the unfused path):
    a fixed answer per captured KV-length bucket, so each CUDA graph takes one path."""
    return available() and kv_len <= TUNED.get(head_dim, UNTUNED).max_kv_len


def launch_config(head_dim: int, programs: int, kv_len: int) -> tuple[int, int]:
    """(BLOCK_N, num_warps) for `programs` (rows x query heads) programs reading `kv_len` positions each."""
    tuning = TUNED.get(head_dim, UNTUNED)
    block_n, num_warps = tuning.few if programs <= FEW_PROGRAMS else tuning.many
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
        BLOCK_D=_next_pow2(D),
        BLOCK_N=block_n,
        num_warps=num_warps,
    )
    return out


@decode_attention.register_fake
def _(q, k, v, cos, sin, k_cache, v_cache, positions, kv_len):  # type: ignore[no-untyped-def]
    return q.new_empty((q.shape[0], q.shape[1]))
