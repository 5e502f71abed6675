"""The GQA-aware KV cache: preallocated once, only the KV heads are stored.

Per layer `k` and `v` are `[num_slots + 1, n_kv_head, max_seq_len, head_dim]`. A slot holds one sequence; the
engine owns which slot is free and how long each sequence is. The extra slot (`scratch_slot`, the last) belongs
to no sequence: padding rows of a fixed-shape batch write there. This is storage only: no scheduling here.
"""

from __future__ import annotations

import torch

from minigpt_core.config import ModelConfig


class KVCache:
    def __init__(
        self,
        config: ModelConfig,
        num_slots: int,
        max_seq_len: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if num_slots <= 0 or max_seq_len <= 0:
            raise ValueError("num_slots and max_seq_len must be positive")
        self.num_slots, self.max_seq_len = num_slots, max_seq_len
        self.scratch_slot = num_slots
        shape = (num_slots + 1, config.n_kv_head, max_seq_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """[layers, slots, n_kv_head, max_seq, head_dim], as the design names it (the scratch slot not counted)."""
        s = self.k[0].shape
        return (len(self.k), self.num_slots, s[1], s[2], s[3])

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Copy the first `n` positions of slot `src` into slot `dst`, in every layer (prefix reuse, compaction)."""
        for ck, cv in zip(self.k, self.v, strict=True):
            ck[dst, :, :n].copy_(ck[src, :, :n])
            cv[dst, :, :n].copy_(cv[src, :, :n])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)
