"""Live-server fixtures: a real uvicorn in a thread on a free port, started on the tiny random checkpoint."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from minigpt_core.checkpoint import load_checkpoint
from minigpt_core.engine import Engine
from server.app import create_app
from server.settings import Settings

MODEL_NAME = "tiny"


@dataclass
class LiveServer:
    url: str
    engine: Engine
    api_key: str | None

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def client(self, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def live_server(checkpoint: Path, **settings: Any) -> Iterator[LiveServer]:
    """Start engine + app + uvicorn; wait on `server.started` (never sleep); tear everything down."""
    engine_kw = {k: settings.pop(k) for k in ("max_num_seqs", "max_queued") if k in settings}
    model, _ = load_checkpoint(checkpoint, "cpu")
    engine = Engine(
        model,
        max_num_seqs=engine_kw.get("max_num_seqs", 4),
        max_queued=engine_kw.get("max_queued", 64),
        max_model_len=512,
    )
    engine.start()
    cfg = Settings(model=checkpoint, served_model_name=MODEL_NAME, **settings)
    app = create_app(cfg, engine=engine)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    started = threading.Event()

    def wait_started() -> None:
        while not server.started and thread.is_alive():
            started.wait(0.01)

    wait_started()
    if not server.started:
        raise RuntimeError("uvicorn did not start")
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", engine, cfg.api_key)
    finally:
        server.should_exit = True
        thread.join(10)
        engine.shutdown()


@pytest.fixture(scope="module")
def live(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    with live_server(tiny_checkpoint) as srv:
        yield srv
