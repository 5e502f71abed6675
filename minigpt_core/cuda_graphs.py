"""CUDA-graph capture of the engine's fixed-shape steps: batched prefill, decode logits, K-step decode loops.

What it is: on CUDA a step of a small model is a few hundred tiny kernels, so launch overhead, not arithmetic,
sets its time. `GraphCache` captures a zero-argument step function once per key (the scheduler's keys name a
kind of step and its shape buckets: `("decode", b, kv, k, mode)`, `("prefill", b, t)`, ...) and replays it.
The step reads and writes the scheduler's static buffers; its return value (a tensor) is the static output
the caller reads after `run`. Graphs share one memory pool and are replayed one at a time, on one thread.

A graph is captured at startup (`capture`, for the shapes every server needs) or on first use (`run`). A
first-use capture runs the step once eagerly first (warm-up, as the PyTorch docs advise, and the point where
`torch.compile` compiles), so the step must be safe to run twice: the scheduler snapshots the input buffers a
multi-step loop advances and restores them before the capture (see `restore`).

What it is not: no sampling rules and no scheduling here (scheduler.py); nothing of this runs on CPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence

import torch

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


Step = Callable[[], torch.Tensor]


class GraphCache:
    """Captured steps by key. `run(key, step)` replays the graph for `key`, capturing `step` first if needed."""

    def __init__(self, restore: Callable[[], Callable[[], None]] | None = None) -> None:
        # restore(): snapshot the inputs a step mutates, returning a function that puts them back.
        self._restore = restore
        self.graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.capture_s = 0.0

    def __contains__(self, key: Hashable) -> bool:
        return key in self.graphs

    @torch.no_grad()
    def capture(self, key: Hashable, step: Step) -> None:
        t0 = time.perf_counter()
        put_back = self._restore() if self._restore is not None else None
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            step()  # warm-up: cuBLAS handles, autotuning, compilation
        torch.cuda.current_stream().wait_stream(stream)
        if put_back is not None:
            put_back()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = step()
        self.graphs[key] = (graph, out)
        self.capture_s += time.perf_counter() - t0

    def capture_all(self, steps: Sequence[tuple[Hashable, Step]]) -> None:
        """Capture many steps, largest first (the caller's order), so smaller graphs reuse the pool's memory."""
        t0 = time.perf_counter()
        for key, step in steps:
            if key not in self.graphs:
                self.capture(key, step)
        torch.cuda.synchronize()
        logger.info("captured %d CUDA graphs in %.1f s", len(steps), time.perf_counter() - t0)

    def run(self, key: Hashable, step: Step) -> torch.Tensor:
        if key not in self.graphs:
            self.capture(key, step)
        graph, out = self.graphs[key]
        graph.replay()
        return out


def allow_recompiles(n: int) -> None:
    """Let torch.compile keep `n` specialisations of a function (one process may serve several models)."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), n))
            return
