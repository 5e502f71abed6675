"""The llama.cpp peer of `minigpt-bench serve --device cpu`: how the bench finds llama-server, the command line it
builds, how it counts a stream's tokens, and the one-line skip without a build. No build in CI; the one test that
runs the real binary is marked slow and skips where scripts/build-llama-server.sh has not been run."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from minigpt_core.resources import DEMO_MODEL_DIR
from server import bench, bench_http, bench_llama

ROOT = Path(__file__).resolve().parents[2]


def fake_binary(folder: Path, name: str = "llama-server") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def no_llama_anywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(bench_llama.LLAMA_SERVER_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setattr(bench_llama, "LLAMA_BUILT", tmp_path / "not-built" / "llama-server")


def test_llama_server_command_line_matches_our_server() -> None:
    cmd = bench_llama.llama_server_cmd(Path("/opt/llama-server"), Path("/tmp/m.gguf"), 8123, 8, 176, 2)
    assert cmd[0] == "/opt/llama-server"
    opts = {flag: value for flag, value in itertools.pairwise(cmd) if flag.startswith("--")}
    assert opts["--model"] == "/tmp/m.gguf" and opts["--host"] == "127.0.0.1" and opts["--port"] == "8123"
    assert opts["--threads"] == opts["--threads-batch"] == "2"  # decode and prefill on the same N threads
    assert opts["--parallel"] == "8" and opts["--ctx-size"] == str(8 * 176)  # each slot gets prompt + output
    assert opts["--cache-type-k"] == opts["--cache-type-v"] == "f32"  # our dtype, not llama.cpp's f16 default
    assert {"--kv-unified", "--metrics", "--no-webui"} <= set(cmd)  # one KV pool: llama.cpp's faster layout here


def test_binary_from_flag_then_env_then_path_then_build_folder(
    no_llama_anywhere: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert bench_llama.find_llama_server(None) is None
    built = fake_binary(tmp_path / "build")
    monkeypatch.setattr(bench_llama, "LLAMA_BUILT", built)
    assert bench_llama.find_llama_server(None) == built
    on_path = fake_binary(tmp_path / "empty-bin")  # the folder PATH names
    assert bench_llama.find_llama_server(None) == on_path
    env = fake_binary(tmp_path, "from-env")
    monkeypatch.setenv(bench_llama.LLAMA_SERVER_ENV, str(env))
    assert bench_llama.find_llama_server(None) == env
    flag = fake_binary(tmp_path, "from-flag")
    assert bench_llama.find_llama_server(str(flag)) == flag
    with pytest.raises(SystemExit, match="not an executable llama-server"):  # named but missing: stop at once
        bench_llama.find_llama_server(str(tmp_path / "missing"))


def test_missing_llama_server_prints_one_line_and_skips_the_peer(
    no_llama_anywhere: None, capsys: pytest.CaptureFixture[str]
) -> None:
    args = bench.build_parser().parse_args(["serve", "--device", "cpu", "--threads", "1"])
    assert args.threads == 1 and args.llama_server is None
    assert bench_llama.llama_peer(args) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scripts/build-llama-server.sh" in err and "skipping" in err
    assert bench_llama.llama_peer(argparse.Namespace(no_llama=True, llama_server=None)) is None
    assert capsys.readouterr().err == ""  # --no-llama: silent
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["serve", "--threads", "0"])


def sse(*events: Any) -> httpx.MockTransport:
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    return httpx.MockTransport(
        lambda request: httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
    )


def count(transport: httpx.MockTransport) -> dict[str, float]:
    async def go() -> dict[str, float]:
        async with httpx.AsyncClient(transport=transport, base_url="http://peer") as client:
            return await bench_http.one_request(client, [5, 6, 7], 3)

    return asyncio.run(go())


def text(t: str) -> dict[str, Any]:
    return {"choices": [{"text": t, "index": 0, "finish_reason": None}]}


def test_stream_tokens_from_usage_else_timings_else_text_events() -> None:
    """llama-server sends usage and `timings` on its last chunk (and no chunk for a token that ends inside a UTF-8
    character), so the event count is only the last resort; usage and timings must agree."""
    last = {"choices": [{"text": "", "index": 0, "finish_reason": "length"}]}
    assert count(sse(text("a"), text("b"), {**last, "usage": {"completion_tokens": 3}}))["tokens"] == 3
    assert count(sse(text("a"), text("b"), {**last, "timings": {"predicted_n": 3}}))["tokens"] == 3
    assert count(sse(text("a"), text("b"), last))["tokens"] == 2
    with pytest.raises(RuntimeError, match="timings 2"):
        count(sse(text("a"), {**last, "usage": {"completion_tokens": 3}, "timings": {"predicted_n": 2}}))


def test_a_dropped_keep_alive_connection_is_retried_and_counted() -> None:
    """cpp-httplib now and then closes a kept-alive connection as the next request arrives (no response at all):
    the request goes again, the row counts it; a stream cut after its headers is an error, never retried."""
    calls = []
    ok = sse(text("a"), {"choices": [], "usage": {"completion_tokens": 3}})

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return ok.handle_request(request)

    result = count(httpx.MockTransport(flaky))
    assert len(calls) == 2 and result["retries"] == 1 and result["tokens"] == 3

    def always(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)

    with pytest.raises(httpx.RemoteProtocolError):  # at most two retries
        count(httpx.MockTransport(always))


@pytest.mark.slow
def test_bench_runs_the_real_llama_server_beside_ours(tmp_path: Path) -> None:
    binary = bench_llama.find_llama_server(os.environ.get(bench_llama.LLAMA_SERVER_ENV))
    if binary is None:
        pytest.skip(bench_llama.LLAMA_SKIP)
    out = tmp_path / "serve.json"
    args = ["serve", "--model", str(DEMO_MODEL_DIR), "--configs", "demo", "--device", "cpu", "--no-peer"]
    args += ["--concurrency", "1,2", "--requests", "2", "--prompt-len", "8", "--output-len", "4", "--threads", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "server.bench", *args, "--llama-server", str(binary), "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    peer = [r for r in data["rows"] if r["impl"] == bench_llama.LLAMA]
    assert [r["concurrency"] for r in peer] == [1, 2]
    assert all(r["tokens"] == 2 * 4 and r["output_tok_s"] > 0 and r["ttft_p50_ms"] > 0 for r in peer)
    assert all(r["server_tok_s"] >= r["output_tok_s"] for r in peer)  # its /metrics count agrees (plus warm-ups)
    assert data["threads"][bench_llama.LLAMA] == 1 and data["threads"][bench_http.OURS] == 1
    assert "warning" not in proc.stderr and "llama-server (HTTP)" in proc.stdout
