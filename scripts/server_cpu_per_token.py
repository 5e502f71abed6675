"""Server CPU per streamed token, by thread: where the host time of a streamed token goes.

A one-layer model on the CPU keeps the engine's step short, so the API side (event loop: HTTP, SSE chunks,
parsing) shows up as it does when a GPU runs the model. Starts `minigpt-serve` with 64 slots, streams 256
completions of 128 tokens at 64 streams (one client process), and prints tok/s and the CPU seconds of each server
thread per token (the main thread is the event loop; the busiest other one is the engine). Extra arguments are
environment settings for the server, e.g. `MINIGPT_DECODE_STEPS=1`. With `--py-spy FILE` it also records the
server with py-spy (raw format) while the load runs.

    .venv/bin/python scripts/server_cpu_per_token.py [--py-spy /tmp/server.txt] [MINIGPT_X=Y ...]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from minigpt_core.checkpoint import BUNDLED_TOKENIZER, save_checkpoint
from minigpt_core.config import ModelConfig
from minigpt_core.model import MiniGPT
from minigpt_core.tokenizer import Tokenizer
from server.bench import free_port, run_level


def thread_cpu_s(pid: int) -> dict[int, float]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def main(argv: list[str]) -> int:
    spy_out = None
    if argv[:1] == ["--py-spy"]:
        spy_out, argv = argv[1], argv[2:]
    env = {**os.environ, **dict(a.split("=", 1) for a in argv)}
    tok = Tokenizer.from_file(BUNDLED_TOKENIZER)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_embd=32, n_head=2, n_kv_head=1, ffn_dim=64)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_checkpoint(Path(tmp) / "m", MiniGPT(cfg), tok)
        port = free_port()
        cmd = [sys.executable, "-m", "server", "--model", str(model_dir), "--port", str(port), "--device", "cpu"]
        cmd += ["--max-num-seqs", "64", "--max-model-len", "300", "--max-queued", "4096", "--log-level", "warning"]
        proc = subprocess.Popen([*cmd, "--served-model-name", "bench"], env=env)
        try:
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
            base = f"http://127.0.0.1:{port}"
            run_level(base, 8, 16, 16, 32, tok.vocab_size)  # warm-up
            before = thread_cpu_s(proc.pid)
            spy = None
            if spy_out and shutil.which("py-spy"):
                spy_cmd = ["py-spy", "record", "-p", str(proc.pid), "-r", "300", "--threads", "--nonblocking"]
                spy = subprocess.Popen([*spy_cmd, "--format", "raw", "-o", spy_out, "-d", "12"])
            row = run_level(base, 64, 256, 16, 128, tok.vocab_size)
            after = thread_cpu_s(proc.pid)
            if spy is not None:
                spy.wait()
        finally:
            proc.terminate()
            proc.wait(30)
    tokens = 256 * 128
    print(f"{row['output_tok_s']:,.0f} tok/s at 64 streams")
    for tid, cpu in sorted(after.items(), key=lambda kv: before.get(kv[0], 0.0) - kv[1]):
        spent = cpu - before.get(tid, 0.0)
        if spent > 0.05:
            role = "main thread (event loop)" if tid == proc.pid else "thread"
            print(f"{role:<26}{tid:>8}{spent:8.2f} s CPU{1e6 * spent / tokens:8.1f} us/token")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
