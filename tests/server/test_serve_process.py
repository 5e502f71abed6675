"""`minigpt-serve` as a process: how it starts, fails and stops (exit status, the last line on stderr, threads).

Each test runs `python -m server` (what the console script calls) on the tiny checkpoint; waits are on the
process's own log lines or its exit, never on sleeps.
"""

from __future__ import annotations

import json
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import _free_port

SERVE = [sys.executable, "-m", "server"]


def _run(args: list[str], timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([*SERVE, *args], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"minigpt-serve {' '.join(args)} still running after {timeout_s}s: {exc.stderr!r}"
        ) from exc


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def test_busy_port_exits_with_the_port_in_the_last_line(tiny_checkpoint: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = _run([str(tiny_checkpoint), "--port", str(port)])
    assert proc.returncode != 0
    last = _last_line(proc.stderr)
    assert last.startswith("minigpt-serve: error: cannot listen on 127.0.0.1:") and f":{port}:" in last, proc.stderr
    assert "address already in use" in last
    assert "engine started" not in proc.stderr  # it failed before loading anything


def test_unloadable_model_exits_non_zero(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """vLLM and llama.cpp exit when the model cannot be loaded; this server used to stay up, /health 503."""
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    cfg = json.loads((bad / "config.json").read_text(encoding="utf-8"))
    (bad / "config.json").write_text(json.dumps({**cfg, "vocab_size": 10**13}), encoding="utf-8")
    proc = _run([str(bad), "--port", str(_free_port())])
    assert proc.returncode == 1, proc.stderr
    last = _last_line(proc.stderr)
    assert last.startswith("minigpt-serve: error: model failed to load: ") and "vocab_size" in last, proc.stderr


def test_bad_threads_is_a_one_line_error() -> None:
    proc = _run(["--threads", "0"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "minigpt-serve: error: --threads: Input should be greater than or equal to 1"
    ]


@pytest.fixture
def serving(tiny_checkpoint: Path) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str], int]]:
    port = _free_port()
    args = [str(tiny_checkpoint), "--port", str(port), "--threads", "2", "--max-num-seqs", "1"]
    proc = subprocess.Popen([*SERVE, *args], stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put("")  # end of output

    threading.Thread(target=pump, daemon=True).start()
    try:
        yield proc, lines, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def _wait_for(lines: queue.Queue[str], needle: str, timeout_s: float = 90) -> str:
    seen = []
    while True:
        try:
            line = lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"{needle!r} not logged within {timeout_s}s: {''.join(seen)}") from None
        if not line:
            raise AssertionError(f"the server exited before logging {needle!r}: {''.join(seen)}")
        seen.append(line)
        if needle in line:
            return line


def test_threads_flag_reaches_torch_and_ctrl_c_exits_cleanly(
    serving: tuple[subprocess.Popen[str], queue.Queue[str], int],
) -> None:
    proc, lines, port = serving
    started = _wait_for(lines, "minigpt-serve on http://")
    assert "2 CPU threads" in started  # torch.get_num_threads() after --threads 2 (this box's default is 1)
    _wait_for(lines, "server.app: serving")  # the model is loaded
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()["status"] == "ok"
    proc.send_signal(signal.SIGINT)  # Ctrl-C: uvicorn shuts down gracefully, then re-raises the signal
    assert proc.wait(30) == 130
    rest = []
    while (line := lines.get(timeout=30)) != "":
        rest.append(line)
    assert "Traceback" not in "".join(rest), rest


def test_accepted_connections_have_nagle_off() -> None:
    """The socket minigpt-serve binds itself must give asyncio's accepted connections TCP_NODELAY.

    With Nagle's algorithm on, each small SSE event waited for the client's delayed ACK: time to first token
    went from 3 ms to 45 ms on the demo model when the server began binding its own socket.
    """
    import asyncio

    from server.__main__ import listen

    async def main() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                conn = transport.get_extra_info("socket")
                accepted.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        sock = listen("127.0.0.1", 0)
        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        async with server:
            port = sock.getsockname()[1]
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                return await asyncio.wait_for(accepted, 10)
            finally:
                writer.close()

    assert asyncio.run(main()) != 0
