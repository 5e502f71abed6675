"""Where an engine step's time goes on CUDA, with no HTTP in the way: host work vs waiting for the GPU, and the
GPU kernels of one captured decode replay.

For each stream count it runs the engine alone (random weights of a preset, bf16, decode compiled and captured as
`minigpt-serve` does, 128-token prompts, 128 tokens each, `--requests` requests kept `streams` deep), timing every
`Scheduler.step` and, inside it, the wait for the GPU (`_to_host`'s synchronize). Then torch.profiler records a
few steady-state steps and sums the CUDA kernels by name: kernels per step, kernel time per step, and the rest of
the step (launch gaps inside the graph, host time between replays).

    python3 scripts/profile_engine.py --config small --streams 1,64 --json /tmp/profile.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from minigpt_core.checkpoint import load_checkpoint
from minigpt_core.engine import Engine
from minigpt_core.sampling import SamplingParams
from minigpt_core.tokenizer import NUM_SPECIAL
from server.bench import random_checkpoint


class StepTimer:
    """Wraps one scheduler's `step` and `_to_host` (instance attributes; the class is untouched)."""

    def __init__(self, sched: Any) -> None:
        self.step_s = self.wait_s = 0.0
        self.steps = 0
        step, to_host = sched.step, sched._to_host

        def timed_step() -> None:
            t0 = time.perf_counter()
            step()
            self.step_s += time.perf_counter() - t0
            self.steps += 1

        def timed_to_host(t: torch.Tensor) -> list:  # type: ignore[type-arg]
            t0 = time.perf_counter()
            if t.is_cuda:
                torch.cuda.synchronize(t.device)
            self.wait_s += time.perf_counter() - t0
            return to_host(t)

        sched.step, sched._to_host = timed_step, timed_to_host

    def reset(self) -> None:
        self.step_s = self.wait_s = 0.0
        self.steps = 0


def category(name: str) -> str:
    low = name.lower()
    if any(k in low for k in ("gemm", "gemv", "sm90", "cutlass", "matmul", "cublas", "splitk")):
        return "matmul"
    if any(k in low for k in ("flash", "attention", "fmha", "sdpa", "softmax")):
        return "attention"
    if "triton" in low:
        return "fused pointwise/reduction (triton)"
    if any(k in low for k in ("memcpy", "memset", "copy", "index", "scatter", "gather", "cat")):
        return "copy/index"
    return "other"


def kernel_table(prof: torch.profiler.profile) -> dict[str, Any]:
    """CUDA kernels per decode token: greedy sampling runs one argmax per row-step, so the argmax count is the
    number of model steps the window holds (a replay of K steps counts K)."""
    by_name: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for evt in prof.key_averages():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            by_name[evt.key][0] += evt.count
            by_name[evt.key][1] += evt.device_time_total  # microseconds
    steps = max(1.0, sum(c for name, (c, _) in by_name.items() if "ArgMax" in name))
    by_cat: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for name, (count, us) in by_name.items():
        by_cat[category(name)][0] += count
        by_cat[category(name)][1] += us
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:15]
    return {
        "profiled_model_steps": steps,
        "kernels_per_model_step": sum(c for c, _ in by_name.values()) / steps,
        "kernel_us_per_model_step": sum(us for _, us in by_name.values()) / steps,
        "by_category_per_model_step": {k: {"kernels": c / steps, "us": us / steps} for k, (c, us) in by_cat.items()},
        "top_kernels_per_model_step": [
            {"name": n[:110], "count": c / steps, "us": us / steps, "us_each": us / max(c, 1)} for n, (c, us) in top
        ],
    }


def run_level(model: Any, vocab: int, streams: int, kernel: bool, args: argparse.Namespace) -> dict[str, Any]:
    params = SamplingParams(temperature=0.0, max_new_tokens=args.output_len, ignore_eos=True)
    prompts = [
        [NUM_SPECIAL + (i * 7 + j) % 1000 for j in range(args.prompt_len)] for i in range(args.requests or 4 * streams)
    ]
    with Engine(
        model,
        max_num_seqs=streams,
        max_model_len=args.prompt_len + args.output_len + 16,
        max_queued=len(prompts) + 8,
        output_vocab=vocab,
        compile_decode=not args.no_compile,
        fuse_projections=True,
        prefix_caching=False,
        decode_kernel=kernel,
    ) as engine:
        sched = engine._scheduler
        list(engine.generate(prompts[0], params))  # warm-up: compile, first use of every graph
        list(engine.generate(prompts[1], params))
        timer = StepTimer(sched)
        t0 = time.perf_counter()
        handles = [engine.generate(p, params) for p in prompts]
        tokens = sum(sum(1 for ev in h if ev.token_id is not None) for h in handles)
        wall = time.perf_counter() - t0
        row: dict[str, Any] = {
            "streams": streams,
            "decode_kernel": sched.decode_kernel,
            "requests": len(prompts),
            "engine_tok_s": tokens / wall,
            "steps": timer.steps,
            "tokens_per_step": tokens / max(timer.steps, 1),
            "step_ms": 1000 * timer.step_s / max(timer.steps, 1),
            "gpu_wait_ms_per_step": 1000 * timer.wait_s / max(timer.steps, 1),
            "host_ms_per_step": 1000 * (timer.step_s - timer.wait_s) / max(timer.steps, 1),
            "outside_step_ms_per_step": 1000 * (wall - timer.step_s) / max(timer.steps, 1),
        }
        # Kernel profile of steady-state decode: `streams` requests in flight, prompts already prefilled.
        handles = [engine.generate(p, params) for p in prompts[:streams]]
        while sched.counters.steps < 2 or any(not s.prefilled for s in sched.running) or not sched.running:
            time.sleep(0.0005)
        timer.reset()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            time.sleep(0.05)
            steps_in = timer.steps
            t_in = time.perf_counter()
            time.sleep(0.15)
            steps_out = timer.steps
            t_out = time.perf_counter()
        for h in handles:
            for _ in h:
                pass
        row["profiled_steps"] = steps_out - steps_in
        row["profiled_wall_ms_per_step"] = 1000 * (t_out - t_in) / max(steps_out - steps_in, 1)
        row.update(kernel_table(prof))
        row["decode_steps_per_replay"] = sched.decode_steps
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="small", help="a preset, or a comma list of presets")
    ap.add_argument("--streams", default="1,64")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--requests", type=int, help="requests per level (default 4 x streams)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--decode-kernel", choices=("on", "off", "both"), default="off", help="the fused decode attention")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_engine: needs a CUDA device", file=sys.stderr)
        return 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.config.split(","):
            model, tok = load_checkpoint(random_checkpoint(config, Path(tmp)), "cuda", torch.bfloat16)
            kernels = {"on": [True], "off": [False], "both": [False, True]}[args.decode_kernel]
            for streams in [int(s) for s in args.streams.split(",")]:
                for kernel in kernels:
                    row = {"config": config, **run_level(model, tok.vocab_size, streams, kernel, args)}
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "top_kernels_per_model_step"}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
