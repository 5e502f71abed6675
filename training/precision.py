"""bf16 parameters with float32 master weights (`--param-dtype bfloat16`).

What it is: `MasterWeights`, which keeps the trained module (float32: what AdamW updates, what checkpoints and
evaluation read, so the optimizer state and the saved files are those of a float32 run and a resume is exact) and
a copy of it whose parameters are bfloat16 (what the step's forward and backward run on: half the weight traffic,
bf16 GEMMs without casts). After backward `grads_to_master` copies the bf16 gradients into float32 `.grad`s of
the master; after the optimizer step `params_from_master` rounds the updated master weights into the copy. Buffers
(RoPE's inverse frequencies) stay float32. The loss curve differs from a float32-parameter run by that rounding:
the residual stream and the weights the forward sees are bf16.
What it is not: mixed precision of activations (that is autocast, `--dtype`) or a different optimizer.
"""

from __future__ import annotations

import copy
from typing import Generic, TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


class MasterWeights(Generic[M]):
    def __init__(self, master: M, dtype: torch.dtype = torch.bfloat16) -> None:
        self.master = master
        self.module: M = copy.deepcopy(master)
        for p in self.module.parameters():
            p.data = p.data.to(dtype)
        self._pairs = [
            (m, p) for m, p in zip(master.parameters(), self.module.parameters(), strict=True) if m.requires_grad
        ]
        # float32 gradient buffers, allocated once and handed to the master as its .grad each step
        self._grads = [torch.zeros_like(m, dtype=torch.float32) for m, _ in self._pairs]

    def grads_to_master(self) -> None:
        """The copy's gradients (bf16) into the master's float32 .grad; the copy's are cleared."""
        have = [(m, p, g) for (m, p), g in zip(self._pairs, self._grads, strict=True) if p.grad is not None]
        torch._foreach_copy_([g for _, _, g in have], [p.grad for _, p, _ in have])  # type: ignore[misc]
        for m, _, g in have:
            m.grad = g
        self.module.zero_grad(set_to_none=True)

    @torch.no_grad()
    def params_from_master(self) -> None:
        """The updated master weights, rounded, into the copy the next step runs on."""
        torch._foreach_copy_([p for _, p in self._pairs], [m for m, _ in self._pairs])
