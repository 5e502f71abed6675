"""`minigpt-bench`: serving speed through HTTP against HF `generate` on the same weights and card.

`minigpt-bench serve` starts `minigpt-serve` in a subprocess (so the load generator does not share its GIL),
sends streaming `/v1/completions` requests of random token prompts of a fixed length with a fixed output length
(`ignore_eos`, greedy) at each concurrency level, and reports TTFT, inter-token latency and output tokens/s.
The peer is HF transformers `generate` on the same checkpoint, same dtype and device, at batch 1 and the same
batch sizes. On the CPU a second peer is llama.cpp's own HTTP server (`llama-server --parallel N`, built by
scripts/build-llama-server.sh; a benchmark-only extra) on our fp32 GGUF export of the same checkpoint, with the
same thread count, prompts, output length and client code; without the binary that peer is skipped with one line.
`minigpt-bench train` runs the training benchmark (training/bench.py) in its own process.
It prints a table and writes JSON; on CPU it runs small sizes so CI can smoke-test it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from minigpt_core.checkpoint import save_checkpoint
from minigpt_core.config import preset
from minigpt_core.model import MiniGPT
from minigpt_core.resources import BUNDLED_TOKENIZER, DEMO_MODEL_DIR
from minigpt_core.threads import default_threads
from minigpt_core.tokenizer import NUM_SPECIAL, Tokenizer
from server.__main__ import parse_bool
from server.bench_http import OURS, free_port, run_level, start_server
from server.bench_llama import (
    LLAMA,
    LLAMA_SERVER_ENV,
    cpu_model,
    export_gguf,
    level_plan,
    llama_levels,
    llama_peer,
    llama_version,
)


def random_checkpoint(config: str, out: Path) -> Path:
    """Random weights of a preset with the bundled tokenizer: speed does not depend on what was learned."""
    torch.manual_seed(0)
    tokenizer = Tokenizer.from_file(BUNDLED_TOKENIZER)
    cfg = preset(config)
    return save_checkpoint(
        out / config, MiniGPT(cfg.replace(vocab_size=max(cfg.vocab_size, tokenizer.vocab_size))), tokenizer
    )


def hf_generate(model_dir: Path, device: str, batch: int, prompt_len: int, output_len: int) -> dict[str, Any]:
    """The peer: HF transformers `generate` (greedy, KV cache) on the same weights, dtype and device."""
    from transformers import AutoModelForCausalLM  # peer only; not a runtime dependency

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    model = model.to(device).eval()
    vocab = Tokenizer.from_dir(model_dir).vocab_size
    ids = torch.randint(NUM_SPECIAL, vocab, (batch, prompt_len), device=device)
    kw = {"do_sample": False, "pad_token_id": 0, "eos_token_id": None}

    def timed(n_new: int) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, **kw)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    timed(4)  # warm-up
    ttft = timed(1)
    total = timed(output_len)
    return {
        "impl": "HF generate",
        "concurrency": batch,
        "requests": batch,
        "output_tok_s": batch * output_len / total,
        "ttft_p50_ms": 1000 * ttft,
        "ttft_p90_ms": None,
        "itl_mean_ms": 1000 * (total - ttft) / max(output_len - 1, 1),
        "per_stream_tok_s": (output_len - 1) / max(total - ttft, 1e-9),
    }


def format_rows(rows: list[dict[str, Any]]) -> str:
    out = [f"{'model':<10}{'impl':<22}{'conc':>5}{'out tok/s':>12}{'per-stream':>12}{'TTFT p50':>10}{'ITL ms':>8}"]
    for r in rows:
        out.append(
            f"{r['model']:<10}{r['impl']:<22}{r['concurrency']:>5}{r['output_tok_s']:>12,.0f}"
            f"{r['per_stream_tok_s']:>12,.0f}{r['ttft_p50_ms']:>10.1f}{r['itl_mean_ms']:>8.2f}"
        )
    return "\n".join(out)


def bench_serve(args: argparse.Namespace) -> int:
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device == "cuda"
    configs = (args.configs or ("small,medium" if cuda else "tiny")).split(",")
    levels = [int(c) for c in (args.concurrency or ("1,8,64" if cuda else "1,8")).split(",")]
    prompt_len, output_len = args.prompt_len or (128 if cuda else 32), args.output_len or (128 if cuda else 16)
    # minigpt-serve without --threads picks default_threads() itself; llama-server gets the same count
    threads = args.threads or default_threads()
    llama = None if cuda else llama_peer(args)
    plan: dict[str, Any] = {
        "prompt_len": prompt_len,
        "output_len": output_len,
        "requests": args.requests,
        "clients": args.clients,
    }
    rows: list[dict[str, Any]] = []
    hf_threads = None
    with tempfile.TemporaryDirectory() as tmp:
        for name in configs:
            model_dir = (
                Path(args.model)
                if args.model
                else (DEMO_MODEL_DIR if name == "demo" else random_checkpoint(name, Path(tmp)))
            )
            plan["vocab"] = Tokenizer.from_dir(model_dir).vocab_size
            port = free_port()
            proc = start_server(
                model_dir,
                port,
                device,
                max(levels),
                prompt_len + output_len + 16,
                not args.no_compile,
                args.threads,
                args.compile_cpu,
                args.engine_process,
            )
            try:
                for c in levels:
                    n, clients = level_plan(plan, c)
                    row = run_level(f"http://127.0.0.1:{port}", c, n, prompt_len, output_len, plan["vocab"], clients)
                    rows.append({"model": name, **row})
            finally:
                proc.terminate()
                proc.wait(30)
            if llama is not None:
                gguf = export_gguf(model_dir, Path(tmp) / f"{name}-f32.gguf")
                rows += [{"model": name, **r} for r in llama_levels(llama, gguf, levels, plan, threads, Path(tmp))]
            if not args.no_peer:
                if args.threads:
                    torch.set_num_threads(args.threads)
                hf_threads = torch.get_num_threads()
                for c in levels:
                    rows.append({"model": name, **hf_generate(model_dir, device, c, prompt_len, output_len)})
                if cuda:
                    torch.cuda.empty_cache()
    used: dict[str, Any] = {OURS: args.threads or f"default ({threads})", "HF generate": hf_threads}
    info: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "time_utc": time.strftime("%H:%M", time.gmtime()),
        "argv": sys.argv,
        "prompt_len": prompt_len,
        "output_len": output_len,
        "threads": used,
        "rows": rows,
    }
    if llama is not None:
        used[LLAMA] = threads
        info["llama_server"] = {"binary": str(llama), "version": llama_version(llama), "dtype": "f32, KV cache f32"}
    print(f"device: {info['device']} ({info['cpu']})  torch {info['torch']}  threads {info['threads']}")
    print(f"prompt {prompt_len} tokens, output {output_len} tokens")
    print(format_rows(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2), encoding="utf-8")
    return 0


def bench_engine(args: argparse.Namespace) -> int:
    """Where the time goes: the engine alone (no HTTP) and the captured decode graph alone, per step."""
    from minigpt_core.checkpoint import load_checkpoint
    from minigpt_core.engine import Engine
    from minigpt_core.sampling import SamplingParams

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in (args.configs or ("small,medium" if device == "cuda" else "tiny")).split(","):
            model, tok = load_checkpoint(
                random_checkpoint(name, Path(tmp)), device, torch.bfloat16 if device == "cuda" else torch.float32
            )
            for conc in [int(c) for c in (args.concurrency or "1,64").split(",")]:
                params = SamplingParams(temperature=0.0, max_new_tokens=args.output_len, ignore_eos=True)
                with Engine(
                    model,
                    max_num_seqs=conc,
                    max_model_len=args.prompt_len + args.output_len + 16,
                    output_vocab=tok.vocab_size,
                    compile_decode=args.compile,
                    fuse_projections=True,
                ) as engine:
                    prompts = [[NUM_SPECIAL + (i * 7 + j) % 1000 for j in range(args.prompt_len)] for i in range(conc)]
                    list(engine.generate(prompts[0], params))  # warm-up
                    steps0 = engine.stats().steps_total
                    t0 = time.perf_counter()
                    streams = [engine.generate(p, params) for p in prompts]
                    n = sum(sum(1 for ev in s if ev.token_id is not None) for s in streams)
                    wall = time.perf_counter() - t0
                    steps = engine.stats().steps_total - steps0
                    graph_ms = None
                    sched = engine._scheduler
                    if sched.graphs is not None:
                        b = min(x for x in sched.batch_buckets if x >= conc)
                        kv = min(x for x in sched.kv_buckets if x >= args.prompt_len + args.output_len)
                        key = ("decode", b, kv, 1, "greedy")
                        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        start.record()
                        for _ in range(50):
                            sched.graphs.run(key, lambda: torch.empty(0))  # captured at startup
                        end.record()
                        torch.cuda.synchronize()
                        graph_ms = start.elapsed_time(end) / 50
                rows.append(
                    {
                        "model": name,
                        "concurrency": conc,
                        "capture_s": sched.graphs.capture_s if sched.graphs is not None else None,
                        "engine_tok_s": n / wall,
                        "step_ms": 1000 * wall / max(steps, 1),
                        "graph_replay_ms": graph_ms,
                    }
                )
                print(rows[-1], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


def bench_prefix(args: argparse.Namespace) -> int:
    """TTFT with a long shared prefix: the short turn alone, the prefix + turn cold, then warm (prefix cached)."""
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else random_checkpoint(args.config, Path(tmp))
        vocab = Tokenizer.from_dir(model_dir).vocab_size
        port = free_port()
        max_len = args.prefix_len + args.turn_len + 16
        proc = start_server(model_dir, port, device, 4, max_len, device == "cuda")
        rng = random.Random(0)
        prefix = [rng.randrange(NUM_SPECIAL, vocab) for _ in range(args.prefix_len)]

        def turn() -> list[int]:
            return [rng.randrange(NUM_SPECIAL, vocab) for _ in range(args.turn_len)]

        def ttft_ms(prompt: list[int]) -> tuple[float, int]:
            body = {"model": "bench", "prompt": prompt, "max_tokens": 1, "temperature": 0}
            t0 = time.perf_counter()
            reply = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=600).json()
            cached = reply["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0)
            return 1000 * (time.perf_counter() - t0), cached

        try:
            for _ in range(3):  # warm-up: first-use paths and shapes
                ttft_ms(turn())
                ttft_ms(prefix[: args.prefix_len // 2] + turn())
            cases = {
                "short turn alone": lambda: turn(),
                "prefix + turn, not cached": lambda: [rng.randrange(NUM_SPECIAL, vocab) for _ in prefix] + turn(),
                "prefix + turn, prefix cached": lambda: prefix + turn(),
            }
            ttft_ms(prefix + turn())  # puts the prefix in the cache
            for name, make in cases.items():
                samples = [ttft_ms(make()) for _ in range(args.repeats)]
                rows.append(
                    {
                        "case": name,
                        "ttft_p50_ms": statistics.median(ms for ms, _ in samples),
                        "cached_tokens": statistics.median(c for _, c in samples),
                    }
                )
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"device: {device}  prefix {args.prefix_len} tokens, turn {args.turn_len} tokens, 1 output token")
    for r in rows:
        print(f"{r['case']:<32}{r['ttft_p50_ms']:>10.1f} ms{r['cached_tokens']:>10.0f} cached")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "date": time.strftime("%Y-%m-%d"), "rows": rows}))
    return 0


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minigpt-bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("serve", help="serving speed over HTTP vs HF generate")
    s.add_argument(
        "--configs",
        help="comma list of presets with random weights, or 'demo' (default small,medium on CUDA, tiny on CPU)",
    )
    s.add_argument("--model", help="benchmark this checkpoint directory instead")
    s.add_argument("--device", default="auto")
    s.add_argument("--concurrency", help="comma list (default 1,8,64 on CUDA; 1,8 on CPU)")
    s.add_argument("--prompt-len", type=int)
    s.add_argument("--output-len", type=int)
    s.add_argument("--requests", type=int, help="requests per level (default 2 x concurrency, at least 4)")
    s.add_argument("--clients", type=int, help="client processes per level (default: 1 per 16 streams, at most 4)")
    s.add_argument("--no-peer", action="store_true", help="skip HF generate")
    s.add_argument("--no-compile", action="store_true", help="serve with --compile-decode false")
    s.add_argument("--compile-cpu", action="store_true", help="on the CPU, serve with --compile-decode-cpu true")
    s.add_argument(
        "--engine-process",
        type=parse_bool,
        metavar="true|false",
        help="serve with --engine-process true|false (default: minigpt-serve's own)",
    )
    s.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads for minigpt-serve, llama-server and HF generate (default: minigpt-serve's own default, "
        "the same count for llama-server, torch's default for HF)",
    )
    s.add_argument("--llama-server", help=f"llama-server binary for the CPU peer (default: ${LLAMA_SERVER_ENV}, PATH)")
    s.add_argument("--no-llama", action="store_true", help="skip the llama-server peer")
    s.add_argument("--json", help="write results here")
    sub.add_parser("train", help="training tokens/s and MFU vs HF (python -m training.bench --help)", add_help=False)
    x = sub.add_parser("prefix", help="TTFT with a long shared prefix, cached and not (prefix caching)")
    x.add_argument("--config", default="tiny", help="preset with random weights (default tiny)")
    x.add_argument("--model", help="benchmark this checkpoint directory instead")
    x.add_argument("--device", default="auto")
    x.add_argument("--prefix-len", type=int, default=2000)
    x.add_argument("--turn-len", type=int, default=16)
    x.add_argument("--repeats", type=int, default=5)
    x.add_argument("--json")
    e = sub.add_parser("engine", help="the engine alone (no HTTP) and the decode graph alone: where time goes")
    e.add_argument("--configs")
    e.add_argument("--concurrency")
    e.add_argument("--prompt-len", type=int, default=128)
    e.add_argument("--output-len", type=int, default=128)
    e.add_argument("--json")
    e.add_argument("--compile", action="store_true", help="torch.compile the decode step before capturing it")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # its own process: server may not import training
        return subprocess.call([sys.executable, "-m", "training.bench", *argv[1:]], env=os.environ.copy())
    args = build_parser().parse_args(argv)
    if args.what == "prefix":
        return bench_prefix(args)
    return bench_engine(args) if args.what == "engine" else bench_serve(args)


if __name__ == "__main__":
    sys.exit(main())
