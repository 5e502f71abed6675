"""Linear + cross-entropy over chunks of rows, so the (N, V) float32 logits of a whole batch never exist at once.

What it is: `linear_cross_entropy(hidden, weight, targets)`, the summed next-token loss of `hidden @ weight.T`
(the tied output projection) against `targets` with `ignore_index` rows left out, equal to
`F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")`. The forward walks `chunk_rows`
rows at a time: their logits (chunk_rows, V) in float32, the loss, and at once the gradients of that chunk (the
softmax minus the one-hot target, through the two matmuls), which are kept (grad_hidden is the size of `hidden`,
grad_weight the size of `weight`) and scaled by the incoming gradient in backward. Peak memory is one chunk of
logits instead of B x T x V; no recomputation. Under autocast the matmuls run in the autocast dtype and the
softmax in float32, as on the unfused path.
What it is not: a Triton kernel (Liger-Kernel and cut-cross-entropy fuse further on CUDA; this is plain PyTorch so
that it runs and is tested on the CPU) or a reduction other than "sum" (the LM step normalises by its own count).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

DEFAULT_CHUNK_ROWS = 8192  # small: 8192 x 6400 float32 logits = 210 MB per chunk, against 840 MB for 32 x 1024 rows


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    compile: bool = False,
) -> torch.Tensor:
    """Summed cross-entropy of `hidden (..., C) @ weight (V, C).T` against `targets (...)`, a float32 scalar.

    `compile`: the per-chunk softmax and gradient run as one torch.compile'd function (a few fused kernels per
    chunk instead of a dozen eager ones; worth it on CUDA, where the eager version cost about 10% of small's step).
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    h = hidden.reshape(-1, hidden.shape[-1])  # (N, C)
    y = targets.reshape(-1)  # (N,)
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = torch.promote_types(h.dtype, weight.dtype)
    fn = _compiled_chunk() if compile else _chunk
    out: torch.Tensor = _LinearCrossEntropy.apply(h, weight, y, ignore_index, chunk_rows, compute_dtype, fn)
    return out


def _chunk(
    hc: torch.Tensor, w: torch.Tensor, yc: torch.Tensor, ignore_index: int, grads: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The summed loss of one chunk of rows and (with `grads`) d loss / d logits, (n, V) in the matmul dtype."""
    valid = yc != ignore_index  # (n,)
    safe = torch.where(valid, yc, 0)[:, None]  # (n, 1): an in-range index for ignored rows
    logits = (hc @ w.T).float()  # (n, V)
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # (n, 1)
    loss = ((lse - logits.gather(1, safe)).squeeze(1) * valid).sum()
    if not grads:
        return loss, None
    probs = logits.sub_(lse).exp_()  # softmax, in the logits' memory
    probs.scatter_add_(1, safe, torch.full_like(lse, -1.0))  # minus the one-hot target
    return loss, probs.mul_(valid[:, None]).to(hc.dtype)


@functools.cache
def _compiled_chunk() -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]]:
    return torch.compile(_chunk, dynamic=False)  # type: ignore[no-any-return]


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        h: torch.Tensor,
        weight: torch.Tensor,
        y: torch.Tensor,
        ignore_index: int,
        chunk_rows: int,
        compute_dtype: torch.dtype,
        chunk_fn: Callable[..., tuple[torch.Tensor, torch.Tensor | None]],
    ) -> torch.Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(compute_dtype)  # (V, C)
            for start in range(0, h.shape[0], chunk_rows):
                hc = h[start : start + chunk_rows].to(compute_dtype)  # (n, C)
                chunk_loss, g = chunk_fn(hc, w, y[start : start + chunk_rows], ignore_index, need_h or need_w)
                loss += chunk_loss
                if g is None:
                    continue
                if grad_h is not None:
                    grad_h[start : start + chunk_rows] = (g @ w).to(h.dtype)
                if grad_w is not None:
                    grad_w += (g.T @ hc).float()
        ctx.save_for_backward(*(t for t in (grad_h, grad_w) if t is not None))
        ctx.has = (grad_h is not None, grad_w is not None)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        saved = list(ctx.saved_tensors)
        has_h, has_w = ctx.has
        grad_h = grad_w = None
        if has_h:
            grad_h = saved.pop(0)
            grad_h = grad_h * grad_out.to(grad_h.dtype)
        if has_w:
            grad_w = (saved.pop(0) * grad_out).to(ctx.weight_dtype)
        return grad_h, grad_w, None, None, None, None, None
