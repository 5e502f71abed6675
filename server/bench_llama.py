"""The llama.cpp peer of `minigpt-bench serve --device cpu`: find a `llama-server` binary (built by
scripts/build-llama-server.sh; a benchmark-only extra), serve our fp32 GGUF export of the same checkpoint with one
`--parallel N` server per level, and measure it with the same client code as ours (server/bench_http.py)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from server.bench_http import free_port, run_level, wait_healthy

LLAMA = "llama-server (HTTP)"
LLAMA_SERVER_ENV = "MINIGPT_LLAMA_SERVER"
LLAMA_BUILT = Path(__file__).resolve().parents[1] / ".llama" / "build" / "bin" / "llama-server"
LLAMA_SKIP = (
    "llama-server not found (--llama-server PATH, $MINIGPT_LLAMA_SERVER, PATH, .llama/build/bin): "
    "build it with scripts/build-llama-server.sh; skipping the llama.cpp peer"
)


def find_llama_server(explicit: str | None = None) -> Path | None:
    """llama-server from `--llama-server`, else $MINIGPT_LLAMA_SERVER, else PATH, else the build script's output.

    A path that was named but is not an executable stops the run at once (not after our own levels)."""
    named = explicit or os.environ.get(LLAMA_SERVER_ENV)
    if named:
        path = Path(named).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise SystemExit(f"minigpt-bench: {named}: not an executable llama-server")
        return path
    found = shutil.which("llama-server")
    if found:
        return Path(found)
    return LLAMA_BUILT if LLAMA_BUILT.is_file() and os.access(LLAMA_BUILT, os.X_OK) else None


def llama_peer(args: argparse.Namespace) -> Path | None:
    """The CPU run's llama-server, or None (one line on stderr says how to build it when it is missing)."""
    if args.no_llama:
        return None
    binary = find_llama_server(args.llama_server)
    if binary is None:
        print(LLAMA_SKIP, file=sys.stderr)
    return binary


def llama_server_cmd(binary: Path, gguf: Path, port: int, parallel: int, slot_ctx: int, threads: int) -> list[str]:
    """llama-server set up as minigpt-serve is: `parallel` slots with room for `slot_ctx` tokens each, in one unified
    KV pool (llama.cpp's default when it picks the slot count itself; measured here 10-15% faster at 8 streams on one
    thread than per-slot caches, equal on two), an fp32 KV cache (llama.cpp's default is f16; ours is the model's
    dtype), `threads` for decode and for prefill, /metrics for its own token count."""
    return [
        str(binary),
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threads",
        str(threads),
        "--threads-batch",
        str(threads),
        "--parallel",
        str(parallel),
        "--ctx-size",
        str(parallel * slot_ctx),
        "--kv-unified",
        "--cache-type-k",
        "f32",
        "--cache-type-v",
        "f32",
        "--alias",
        "bench",
        "--metrics",
        "--no-webui",
    ]


def export_gguf(model_dir: Path, out: Path) -> Path:
    """Our fp32 GGUF export of the checkpoint (`minigpt-export` in its own process: server may not import training)."""
    cmd = [sys.executable, "-m", "training.export", "--model", str(model_dir), "--format", "gguf", "--dtype", "f32"]
    subprocess.run([*cmd, "--out", str(out)], check=True)
    return out


def llama_levels(
    binary: Path, gguf: Path, levels: list[int], plan: dict[str, Any], threads: int, log_dir: Path
) -> list[dict[str, Any]]:
    """The llama.cpp peer: one llama-server per level with `--parallel` = the level, driven as minigpt-serve is."""
    rows = []
    for c in levels:
        port = free_port()
        slot_ctx = plan["prompt_len"] + plan["output_len"] + 16  # what minigpt-serve gets as --max-model-len
        log = log_dir / f"llama-server-{c}.log"
        with log.open("wb") as out:
            cmd = llama_server_cmd(binary, gguf, port, c, slot_ctx, threads)
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_healthy(proc, port, "llama-server")
            n, clients = level_plan(plan, c)
            shape = (plan["prompt_len"], plan["output_len"], plan["vocab"], clients)
            rows.append(run_level(f"http://127.0.0.1:{port}", c, n, *shape, LLAMA, "llamacpp:tokens_predicted_total"))
        except Exception:
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            proc.terminate()
            proc.wait(30)
    return rows


def level_plan(plan: dict[str, Any], concurrency: int) -> tuple[int, int]:
    """Requests and client processes for one level (the same for every server)."""
    n = plan["requests"] or max(2 * concurrency, 4)
    return n, plan["clients"] or max(1, min(4, concurrency // 16))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def llama_version(binary: Path) -> str:
    proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("version")]
    return lines[0] if lines else "unknown"
