"""CUDA-graph capture of the engine's decode step, one graph per (batch bucket, KV-length bucket).

What it is: on CUDA a decode step of a small model is a few hundred tiny kernels, so launch overhead, not
arithmetic, sets its time. Each graph replays one whole `model(ids, cache=..., positions=..., kv_len=kv)` over
"dense" rows (row b is KV slot b) from static input buffers; the caller fills the buffers, replays, and reads
the static logits. Padding rows (slots not decoding this step) write their K/V at the last cache position,
which a real sequence overwrites before it ever attends to it.

What it is not: no sampling and no scheduling here (scheduler.py); nothing of this runs on CPU.
"""

from __future__ import annotations

import logging
import time

import torch

from minigpt_core.kv_cache import KVCache
from minigpt_core.model import MiniGPT

logger = logging.getLogger(__name__)


def buckets_up_to(limit: int, start: int = 1) -> list[int]:
    """Powers of two from `start`, with `limit` itself as the last bucket."""
    out, b = [], start
    while b < limit:
        out.append(b)
        b *= 2
    out.append(limit)
    return out


def pick(buckets: list[int], n: int) -> int:
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")


class GraphedDecoder:
    """Captured decode steps. `run(b, kv_len)` replays the graph for that bucket and returns logits (b, V)."""

    def __init__(
        self,
        model: MiniGPT,
        cache: KVCache,
        ids: torch.Tensor,
        positions: torch.Tensor,
        batch_buckets: list[int],
        kv_buckets: list[int],
        compile: bool = False,
    ) -> None:
        self.model, self.cache = model, cache
        # Optional: inductor fuses the step's many small ops (norms, RoPE, SiLU·mul, residuals) before capture.
        # dynamic=True: one compilation serves every (batch, kv) bucket.
        self._fn = torch.compile(model, dynamic=True) if compile else model
        self.ids, self.positions = ids, positions  # static (max_b, 1) buffers owned by the scheduler
        self.batch_buckets, self.kv_buckets = batch_buckets, kv_buckets
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def _forward(self, b: int, kv_len: int) -> torch.Tensor:
        logits = self._fn(self.ids[:b], cache=self.cache, positions=self.positions[:b], kv_len=kv_len)
        return logits[:, -1]  # (b, V)

    @torch.no_grad()
    def capture_all(self) -> None:
        t0 = time.perf_counter()
        # Warm up on a side stream (cuBLAS handles, autotuning) before capturing, as the PyTorch docs advise.
        self.ids.zero_()
        self.positions.fill_(self.cache.max_seq_len - 1)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            try:
                for b in self.batch_buckets:
                    for kv in self.kv_buckets:
                        self._forward(b, kv)
            except Exception as exc:  # a compiler failure must not take the server down: capture eager ops
                if self._fn is self.model:
                    raise
                logger.warning("torch.compile of the decode step failed (%s); capturing the eager step", exc)
                self._fn = self.model
                for b in self.batch_buckets:
                    self._forward(b, self.kv_buckets[-1])
        torch.cuda.current_stream().wait_stream(stream)
        # Largest first, so smaller graphs reuse the pool's memory.
        for kv in reversed(self.kv_buckets):
            for b in reversed(self.batch_buckets):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool):
                    out = self._forward(b, kv)
                self.graphs[(b, kv)] = (graph, out)
        torch.cuda.synchronize()
        logger.info(
            "captured %d decode graphs (batch %s x kv %s) in %.1f s",
            len(self.graphs),
            self.batch_buckets,
            self.kv_buckets,
            time.perf_counter() - t0,
        )

    def run(self, b: int, kv_len: int) -> torch.Tensor:
        graph, out = self.graphs[(b, kv_len)]
        graph.replay()
        return out
