"""SIGTERM draining of `minigpt-serve`, as a load balancer or Kubernetes sees it (issue 21 item 4).

A real `python -m server` process: a stream is open when SIGTERM arrives; /ready turns 503 (`draining`) while
/health stays 200, a new request gets 503 in OpenAI's envelope, the open stream runs to its finish_reason, and
the process exits 0. Waits are on the server's own log lines, never on sleeps.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch

from minigpt_core.checkpoint import save_checkpoint
from minigpt_core.model import MiniGPT
from minigpt_core.tokenizer import Tokenizer
from tests.conftest import tiny_config
from tests.server.conftest import _free_port

MAX_TOKENS = 800  # long enough that the stream is still running after SIGTERM and the checks below


@pytest.fixture(scope="module")
def long_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Tokenizer) -> Path:
    torch.manual_seed(0)
    config = tiny_config(tiny_tokenizer.vocab_size).replace(max_seq_len=2048)
    return save_checkpoint(tmp_path_factory.mktemp("long") / "long", MiniGPT(config), tiny_tokenizer)


class Served:
    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc, self.url = proc, f"http://127.0.0.1:{port}"
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put("")  # end of output

    def wait_for(self, needle: str, timeout_s: float = 90) -> None:
        while True:
            try:
                line = self.lines.get(timeout=timeout_s)
            except queue.Empty:
                raise AssertionError(f"{needle!r} not logged within {timeout_s}s: {''.join(self.seen)}") from None
            if not line:
                raise AssertionError(f"the server exited before logging {needle!r}: {''.join(self.seen)}")
            self.seen.append(line)
            if needle in line:
                return


@pytest.fixture
def served(long_checkpoint: Path) -> Iterator[Served]:
    port = _free_port()
    args = [str(long_checkpoint), "--port", str(port), "--threads", "1", "--served-model-name", "long"]
    proc = subprocess.Popen([sys.executable, "-m", "server", *args], stderr=subprocess.PIPE, text=True)
    try:
        yield Served(proc, port)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def test_sigterm_drains_in_flight_streams_and_refuses_new_work(served: Served) -> None:
    served.wait_for("serving long from")  # the model is loaded
    body = {
        "model": "long",
        "messages": [{"role": "user", "content": "count"}],
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,
        "stream": True,
    }
    with (
        httpx.Client(base_url=served.url, timeout=60) as streamer,
        streamer.stream("POST", "/v1/chat/completions", json=body) as stream,
    ):
        assert stream.status_code == 200
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data: {"))
        assert json.loads(first[6:])["choices"][0]["delta"]  # generation has begun

        served.proc.send_signal(signal.SIGTERM)
        served.wait_for("SIGTERM: draining: 1 request(s) in flight")
        with httpx.Client(base_url=served.url, timeout=10) as other:  # a new connection: the socket is still open
            ready, health = other.get("/ready"), other.get("/health")
            refused = other.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 1})
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert health.status_code == 200  # alive: a liveness probe must not restart a draining server
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "server_draining"
        sdk = openai.OpenAI(base_url=served.url + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.InternalServerError) as info:
            sdk.chat.completions.create(model="long", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
        assert info.value.status_code == 503

        events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    finish = [c["finish_reason"] for e in events for c in e["choices"] if c.get("finish_reason")]
    assert finish == ["length"]  # the whole answer arrived, not a cut stream
    assert served.proc.wait(30) == 0
    served.wait_for("drained: no request in flight")
