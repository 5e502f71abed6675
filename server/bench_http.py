"""The load generator of `minigpt-bench serve`: start a server process, drive it with streaming `/v1/completions`
requests from one or several client processes, and measure TTFT, inter-token latency and tokens/s (the server's
own token counter beside the clients'). Any OpenAI-compatible server: ours and llama.cpp's share this code."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from minigpt_core.tokenizer import NUM_SPECIAL

OURS = "minigpt-serve (HTTP)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    model: Path,
    port: int,
    device: str,
    max_num_seqs: int,
    max_model_len: int,
    compile_decode: bool = False,
    threads: int | None = None,
    compile_cpu: bool = False,
    engine_process: bool | None = None,
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "server",
        "--model",
        str(model),
        "--port",
        str(port),
        "--device",
        device,
        "--max-num-seqs",
        str(max_num_seqs),
        "--max-model-len",
        str(max_model_len),
        "--max-queued",
        "4096",
        "--log-level",
        "warning",
        "--served-model-name",
        "bench",
    ]
    if device == "cuda":
        cmd += ["--dtype", "bfloat16"]
    cmd += ["--compile-decode", "true" if compile_decode else "false"]
    cmd += ["--compile-decode-cpu", "true" if compile_cpu else "false"]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    if engine_process is not None:  # None: the server's default (on for CUDA)
        cmd += ["--engine-process", "true" if engine_process else "false"]
    return wait_healthy(subprocess.Popen(cmd), port, "minigpt-serve")


def wait_healthy(
    proc: subprocess.Popen[bytes], port: int, name: str, timeout_s: float = 600
) -> subprocess.Popen[bytes]:
    """Poll /health (both servers answer 503 while loading) until 200; kill the process if it never comes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{name} did not become healthy in {timeout_s:.0f} s")


async def one_request(client: httpx.AsyncClient, prompt: list[int], output_len: int) -> dict[str, float]:
    body = {
        "model": "bench",
        "prompt": prompt,
        "max_tokens": output_len,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    retries = 0
    while True:
        answered = False
        try:
            async with client.stream("POST", "/v1/completions", json=body) as resp:
                answered = True
                if resp.status_code != 200:
                    raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:300]!r}")
                first, usage, timed, events = await _read_stream(resp)
            break
        except httpx.RemoteProtocolError:
            # llama-server (cpp-httplib) now and then closes a kept-alive connection just as the next request
            # arrives (~1 in 100 requests here): nothing was answered, so send it again on a fresh connection, at
            # most twice; t0 stays, so the lost time counts against that server, and the row reports the retries
            if answered or retries == 2:
                raise
            retries += 1
    end = time.perf_counter()
    tokens = usage if usage is not None else (timed if timed is not None else events)
    if usage is not None and timed is not None and usage != timed:
        raise RuntimeError(f"usage says {usage} completion tokens, timings {timed}")
    first = first or end
    itl_s = (end - first) / max(tokens - 1, 1)
    return {"ttft_s": first - t0, "total_s": end - t0, "tokens": tokens, "itl_s": itl_s, "retries": retries}


async def _read_stream(resp: httpx.Response) -> tuple[float | None, int | None, int | None, int]:
    """Time of the first chunk, the usage's completion tokens, llama-server's own count (`timings.predicted_n`)
    and the number of text events (the count when neither comes: ours may carry several tokens per event)."""
    first: float | None = None
    usage: int | None = None
    timed: int | None = None
    events = 0
    async for line in resp.aiter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if not isinstance(chunk, dict):
            continue
        if "error" in chunk:
            raise RuntimeError(f"stream error: {chunk['error']}")
        if chunk.get("choices"):
            first = first or time.perf_counter()
            events += bool(chunk["choices"][0].get("text"))
        if chunk.get("usage"):
            usage = chunk["usage"]["completion_tokens"]
        if isinstance(chunk.get("timings"), dict) and "predicted_n" in chunk["timings"]:
            timed = int(chunk["timings"]["predicted_n"])
    return first, usage, timed, events


async def _drive(
    base_url: str, concurrency: int, prompts: list[list[int]], output_len: int, start: Any = None
) -> tuple[list[dict[str, float]], float, float]:
    """`concurrency` workers send `prompts` one after another; returns the results and the start and end times."""
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:
        await one_request(client, prompts[0], 4)  # warm-up (connection, first-use paths)
        if start is not None:
            start.wait()  # every client process begins together
        queue = list(prompts)
        results: list[dict[str, float]] = []

        async def worker() -> None:
            while queue:
                results.append(await one_request(client, queue.pop(), output_len))

        t0 = time.perf_counter()  # CLOCK_MONOTONIC on Linux: comparable across processes
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results, t0, time.perf_counter()


def _client_process(
    base_url: str, concurrency: int, prompts: list[list[int]], output_len: int, start: Any, out: Any
) -> None:
    out.put(asyncio.run(_drive(base_url, concurrency, prompts, output_len, start)))


def server_tokens(base_url: str, metric: str = "minigpt_generation_tokens_total") -> int:
    """The server's own count of generated tokens (its /metrics), to check what the clients measured."""
    for line in httpx.get(f"{base_url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{metric} "):
            return int(float(line.split()[1]))
    return 0


def run_level(
    base_url: str,
    concurrency: int,
    n_requests: int,
    prompt_len: int,
    output_len: int,
    vocab: int,
    clients: int = 1,
    impl: str = OURS,
    metric: str = "minigpt_generation_tokens_total",
) -> dict[str, Any]:
    """One concurrency level, driven from `clients` processes (the load generator must not be the bottleneck)."""
    rng = random.Random(concurrency)
    prompts = [[rng.randrange(NUM_SPECIAL, vocab) for _ in range(prompt_len)] for _ in range(n_requests)]
    clients = max(1, min(clients, concurrency))
    before = server_tokens(base_url, metric)
    if clients == 1:
        results, t0, t1 = asyncio.run(_drive(base_url, concurrency, prompts, output_len))
        starts, ends = [t0], [t1]
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        start, out = ctx.Barrier(clients), ctx.Queue()
        procs = [
            ctx.Process(
                target=_client_process,
                args=(base_url, len(range(c, concurrency, clients)), prompts[c::clients], output_len, start, out),
            )
            for c in range(clients)
        ]
        for proc in procs:
            proc.start()
        parts = [out.get(timeout=1200) for _ in procs]
        for proc in procs:
            proc.join()
        results = [r for part, _, _ in parts for r in part]
        starts, ends = [p[1] for p in parts], [p[2] for p in parts]
    wall = max(ends) - min(starts)
    served = server_tokens(base_url, metric) - before
    ttfts = sorted(r["ttft_s"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    if tokens != output_len * len(results):  # ignore_eos: every request must make exactly output_len tokens
        print(f"warning: {impl} made {tokens} tokens in {len(results)} requests of {output_len}", file=sys.stderr)
    return {
        "impl": impl,
        "concurrency": concurrency,
        "requests": len(results),
        "clients": clients,
        "tokens": tokens,
        "retries": sum(r["retries"] for r in results),  # requests sent again after a dropped keep-alive connection
        "output_tok_s": tokens / wall,
        "server_tok_s": served / wall,  # includes the clients' warm-up requests (4 tokens each)
        "ttft_p50_ms": 1000 * statistics.median(ttfts),
        "ttft_p90_ms": 1000 * ttfts[int(0.9 * (len(ttfts) - 1))],
        "itl_mean_ms": 1000 * statistics.mean(r["itl_s"] for r in results),
        "per_stream_tok_s": statistics.mean(1 / r["itl_s"] for r in results),
    }
