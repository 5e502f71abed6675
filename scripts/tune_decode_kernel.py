"""Sweep the fused decode-attention kernel's launch shape (BLOCK_N, num_warps) per preset head size, on CUDA.

For each preset's attention shape (q heads, KV heads, head_dim), batch size and readable cache length, it times the
kernel (minigpt_core/kernels.py) for every (BLOCK_N, num_warps), each as a CUDA graph of 100 calls so launch
overhead does not hide the kernel time, and checks each result against a reference built from plain operations
(RoPE, an indexed cache write, SDPA with GQA). That reference is for correctness: it is slower than the model's own
unfused path (which the engine profile, scripts/profile_engine.py, measures), so compare speed there. The fastest
launch shape per head size belongs in `kernels.TUNED`.

    python3 scripts/tune_decode_kernel.py --json /tmp/tune.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from minigpt_core import kernels
from minigpt_core.config import preset

CALLS = 100


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def graph_us(fn: Callable[[], object]) -> float:
    """Microseconds per call of `fn` replayed from one CUDA graph of CALLS calls (median of 5 replays)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS):
            fn()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1000 / CALLS)
    return sorted(times)[2]


def tune_case(name: str, H: int, KV: int, D: int, B: int, kv_len: int) -> dict[str, Any]:
    """Every launch shape of one attention shape against the reference; the cache holds exactly kv_len positions."""
    dev, dt = torch.device("cuda"), torch.bfloat16
    q = torch.randn(B, H * D, device=dev, dtype=dt)
    k = torch.randn(B, KV * D, device=dev, dtype=dt)
    v = torch.randn(B, KV * D, device=dev, dtype=dt)
    ang = torch.rand(B, D, device=dev) * 6.28
    cos, sin = ang.cos().to(dt), ang.sin().to(dt)
    kc0 = torch.randn(B, KV, kv_len, D, device=dev, dtype=dt)
    vc0 = torch.randn(B, KV, kv_len, D, device=dev, dtype=dt)
    pos = torch.full((B,), kv_len - 1, device=dev, dtype=torch.long)
    kc, vc = kc0.clone(), vc0.clone()
    rows_idx = torch.arange(B, device=dev)

    def reference() -> torch.Tensor:
        qh, kh = q.view(B, H, 1, D), k.view(B, KV, 1, D)
        c, s = cos.view(B, 1, 1, D), sin.view(B, 1, 1, D)
        qr = qh * c + rotate_half(qh) * s
        kr = kh * c + rotate_half(kh) * s
        kc[rows_idx, :, pos] = kr[:, :, 0]
        vc[rows_idx, :, pos] = v.view(B, KV, D)
        out = F.scaled_dot_product_attention(qr, kc, vc, enable_gqa=True)
        return out.reshape(B, H * D)

    want = reference()
    ref_us = graph_us(reference)
    print(f"{name} (H={H} KV={KV} D={D}) B={B} kv_len={kv_len}: reference {ref_us:.2f} us", flush=True)
    trials = []
    for block_n in (16, 32, 64, 128):
        for warps in (1, 2, 4, 8):
            kc.copy_(kc0)
            vc.copy_(vc0)

            def fused(bn: int = block_n, w: int = warps) -> torch.Tensor:
                return kernels._launch(q, k, v, cos, sin, kc, vc, pos, kv_len, bn, w)

            err = (fused().float() - want.float()).abs().max().item()
            trials.append({"block_n": block_n, "num_warps": warps, "us": graph_us(fused), "max_err": err})
    trials.sort(key=lambda t: t["us"])
    for t in trials[:4]:
        print(f"  BLOCK_N={t['block_n']:3d} warps={t['num_warps']}: {t['us']:.2f} us (max err {t['max_err']:.3f})")
    default = kernels.launch_config(D, B * H, kv_len)
    default_us = next(t["us"] for t in trials if (t["block_n"], t["num_warps"]) == default)
    print(f"  default {default}: {default_us:.2f} us", flush=True)
    return {
        "config": name,
        "H": H,
        "KV": KV,
        "D": D,
        "B": B,
        "kv_len": kv_len,
        "reference_us": ref_us,
        "default": list(default),
        "default_us": default_us,
        "best": trials[0],
        "trials": trials,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="small,medium")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--kv-lens", default="256,1024")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() or not kernels.available():
        print("needs CUDA and Triton", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    rows = []
    for name in args.configs.split(","):
        cfg = preset(name)
        for B in (int(b) for b in args.batches.split(",")):
            for kv_len in (int(n) for n in args.kv_lens.split(",")):
                rows.append(tune_case(name, cfg.n_head, cfg.n_kv_head, cfg.head_dim, B, kv_len))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
