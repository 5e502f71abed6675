"""CPU smoke test of `minigpt-bench`: the serving and training benchmarks run end to end at tiny sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s
    )


def test_bench_serve_on_cpu_writes_a_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    proc = run(
        [
            "serve",
            "--configs",
            "tiny",
            "--device",
            "cpu",
            "--concurrency",
            "1,2",
            "--requests",
            "2",
            "--prompt-len",
            "8",
            "--output-len",
            "4",
            "--no-llama",  # the llama.cpp peer has its own tests (test_bench_llama.py)
            "--json",
            str(out),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    ours = [r for r in data["rows"] if r["impl"].startswith("minigpt-serve")]
    peer = [r for r in data["rows"] if r["impl"] == "HF generate"]
    assert [r["concurrency"] for r in ours] == [1, 2] and len(peer) == 2
    assert all(r["output_tok_s"] > 0 and r["ttft_p50_ms"] > 0 for r in ours + peer)
    assert "minigpt-serve (HTTP)" in proc.stdout


def test_bench_serve_from_two_client_processes_and_prefix_bench(tmp_path: Path) -> None:
    """--clients 2 splits a level over two load-generator processes (the server's own token count agrees);
    `prefix` measures a cached shared prefix (the server reports it as cached_tokens)."""
    out = tmp_path / "serve.json"
    common = [
        "--device",
        "cpu",
        "--prompt-len",
        "8",
        "--output-len",
        "4",
        "--no-peer",
        "--no-llama",
        "--json",
        str(out),
    ]
    proc = run(["serve", "--configs", "tiny", "--concurrency", "2", "--requests", "4", "--clients", "2", *common])
    assert proc.returncode == 0, proc.stderr[-2000:]
    [row] = json.loads(out.read_text())["rows"]
    assert row["clients"] == 2 and row["requests"] == 4
    assert row["server_tok_s"] >= row["output_tok_s"] > 0  # the server also counts the clients' warm-ups
    prefix = tmp_path / "prefix.json"
    args = ["prefix", "--device", "cpu", "--prefix-len", "48", "--turn-len", "4", "--repeats", "1"]
    proc = run([*args, "--json", str(prefix)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["case"]: r for r in json.loads(prefix.read_text())["rows"]}
    assert rows["prefix + turn, prefix cached"]["cached_tokens"] == 48
    assert rows["prefix + turn, not cached"]["cached_tokens"] == 0


@pytest.mark.parametrize("impls", ["minigpt,hf"])
def test_bench_train_on_cpu(tmp_path: Path, impls: str) -> None:
    out = tmp_path / "train.json"
    proc = run(
        [
            "train",
            "--configs",
            "tiny",
            "--device",
            "cpu",
            "--batch-size",
            "1",
            "--seq-len",
            "32",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--impls",
            impls,
            "--json",
            str(out),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    assert [r["impl"] for r in rows] == impls.split(",") and all(r["tokens_per_s"] > 0 for r in rows)


def test_bench_train_launches_torchrun_with_two_processes_on_cpu(tmp_path: Path) -> None:
    """`minigpt-bench train --nproc 2`: the end-to-end run under torchrun (gloo on CPU), global tokens/s."""
    out = tmp_path / "ddp.json"
    args = ["train", "--configs", "tiny", "--device", "cpu", "--impls", "", "--nproc", "2", "--steps", "12"]
    proc = run([*args, "--json", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    [row] = json.loads(out.read_text())["results"]
    assert row["impl"] == "torchrun x2 (e2e)" and row["tokens_per_s"] > 0
