"""Server CPU per streamed token, by thread: where the host time of a streamed token goes.

A one-layer model on the CPU keeps the engine's step short, so the API side (event loop: HTTP, SSE chunks,
parsing) shows up as it does when a GPU runs the model. Starts `minigpt-serve` with 64 slots, streams 256
completions of 128 tokens at 64 streams (one client process), and prints tok/s and the CPU seconds of each server
thread per token (the main thread is the event loop; the busiest other one is the engine). Extra arguments are
environment settings for the server, e.g. `MINIGPT_DECODE_STEPS=1`. With `--py-spy FILE` it also records the
server with py-spy (raw format) while the load runs. With `--config small --device cuda` it serves that preset's
random weights on the GPU (bf16, decode compiled) instead, 128-token prompts, to split a GPU server's host time the
same way. `--engine-process true|false` serves with the engine in its own process or not; the threads of the
engine process are listed too (marked "[engine proc]").

    .venv/bin/python scripts/server_cpu_per_token.py [--py-spy FILE] [--engine-process true] [MINIGPT_X=Y ...]
    python3 scripts/server_cpu_per_token.py --config small --device cuda --requests 1280 --clients 4 \
        --engine-process true
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from minigpt_core.checkpoint import save_checkpoint
from minigpt_core.config import ModelConfig
from minigpt_core.model import MiniGPT
from minigpt_core.resources import BUNDLED_TOKENIZER
from minigpt_core.tokenizer import Tokenizer
from server.bench import random_checkpoint
from server.bench_http import free_port, run_level, wait_healthy


def child_pids(pid: int) -> list[int]:
    """The server's child processes (the engine process under --engine-process)."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return out


def thread_cpu_s(pid: int) -> dict[tuple[int, int], float]:
    """CPU seconds of every thread of the server and of its child processes, by (pid, tid)."""
    out = {}
    for proc_id in (pid, *child_pids(pid)):
        for tid in os.listdir(f"/proc/{proc_id}/task"):
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{proc_id}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
                out[(proc_id, int(tid))] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--py-spy", dest="spy_out", help="record the server with py-spy (raw format) into this file")
    ap.add_argument("--config", help="serve this preset's random weights instead of the one-layer model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--switch-interval", type=float, help="the server's sys.setswitchinterval (seconds)")
    ap.add_argument(
        "--engine-process",
        type=lambda text: text.lower() in ("1", "true", "yes", "on"),
        help="serve with --engine-process true|false (default: the server's own default)",
    )
    ap.add_argument("env", nargs="*", help="KEY=VALUE environment settings for the server")
    args = ap.parse_args(argv)
    spy_out = args.spy_out
    env = {**os.environ, **dict(a.split("=", 1) for a in args.env)}
    tok = Tokenizer.from_file(BUNDLED_TOKENIZER)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_embd=32, n_head=2, n_kv_head=1, ffn_dim=64)
    prompt_len = 128 if args.config else 16
    with tempfile.TemporaryDirectory() as tmp:
        if args.config:
            model_dir = random_checkpoint(args.config, Path(tmp))
        else:
            model_dir = save_checkpoint(Path(tmp) / "m", MiniGPT(cfg), tok)
        port = free_port()
        launcher = ["-m", "server"]
        if args.switch_interval is not None:  # how long a thread waiting for the GIL waits for the running one
            code = f"import runpy, sys; sys.setswitchinterval({args.switch_interval}); "
            code += "runpy.run_module('server', run_name='__main__')"
            launcher = ["-c", code]
        cmd = [sys.executable, *launcher, "--model", str(model_dir), "--port", str(port), "--device", args.device]
        cmd += ["--max-num-seqs", "64", "--max-model-len", "300", "--max-queued", "4096", "--log-level", "warning"]
        if args.device == "cuda":
            cmd += ["--dtype", "bfloat16", "--compile-decode", "true"]
        if args.engine_process is not None:
            cmd += ["--engine-process", "true" if args.engine_process else "false"]
        proc = wait_healthy(subprocess.Popen([*cmd, "--served-model-name", "bench"], env=env), port, "minigpt-serve")
        try:
            base = f"http://127.0.0.1:{port}"
            run_level(base, 8, 16, 16, 32, tok.vocab_size)  # warm-up
            before = thread_cpu_s(proc.pid)
            spy = None
            if spy_out and shutil.which("py-spy"):
                spy_cmd = ["py-spy", "record", "-p", str(proc.pid), "-r", "300", "--threads", "--subprocesses"]
                spy_cmd.append("--nonblocking")
                spy = subprocess.Popen([*spy_cmd, "--format", "raw", "-o", spy_out, "-d", "12"])
            row = run_level(base, 64, args.requests, prompt_len, 128, tok.vocab_size, clients=args.clients)
            after = thread_cpu_s(proc.pid)
            if spy is not None:
                spy.wait()
        finally:
            proc.terminate()
            proc.wait(30)
    tokens = args.requests * 128
    print(f"{row['output_tok_s']:,.0f} tok/s at 64 streams (server counted {row['server_tok_s']:,.0f})")
    mode = {None: "the server's default", True: "on", False: "off"}[args.engine_process]
    print(f"TTFT p50 {row['ttft_p50_ms']:.1f} ms; --engine-process: {mode}")
    for (pid, tid), cpu in sorted(after.items(), key=lambda kv: before.get(kv[0], 0.0) - kv[1]):
        spent = cpu - before.get((pid, tid), 0.0)
        if spent > 0.05:
            where = "" if pid == proc.pid else " [engine proc]"
            role = ("main thread (event loop)" if pid == proc.pid else "main thread") if tid == pid else "thread"
            print(f"{role + where:<30}{tid:>8}{spent:8.2f} s CPU{1e6 * spent / tokens:8.1f} us/token")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
