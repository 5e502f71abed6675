"""Live-server fixtures: a real uvicorn in a thread on a free port, started on the tiny random checkpoint.

`serve_app` is the one launcher of the in-process server tests: it waits on an event
that uvicorn's startup sets, never on a sleep. `live_server` puts the tiny model behind it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI

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

    def sdk(self) -> openai.OpenAI:
        """The OpenAI SDK on this server: no retries (a test sees the first answer), 60 s per call."""
        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key or "unused", max_retries=0, timeout=60)


def _free_port() -> int:
    """A port that was free a moment ago, for servers started as processes (`python -m server --port N`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThreadedServer(uvicorn.Server):
    """uvicorn's server whose `ready` event is set once it listens, or once it gave up trying."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.ready.set()

    def run_in_thread(self) -> None:
        try:
            self.run()
        finally:
            self.ready.set()  # a failed start (uvicorn exits its thread) must not leave the waiter hanging


@contextlib.contextmanager
def serve_app(app: FastAPI, **options: Any) -> Iterator[str]:
    """`app` behind a real uvicorn in a thread on a free port (chosen by the OS): its URL once it listens.

    `options` go to `uvicorn.Config` (e.g. `log_level="warning"`, or `log_config=None` so that the server's
    loggers propagate to the root). The app's model may still be loading: wait on `app.state.server.load_done`.
    """
    server = ThreadedServer(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", **options))
    thread = threading.Thread(target=server.run_in_thread, daemon=True)
    thread.start()
    try:
        if not server.ready.wait(60) or not server.started:
            raise RuntimeError("uvicorn did not start")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


@contextlib.contextmanager
def live_server(checkpoint: Path, **settings: Any) -> Iterator[LiveServer]:
    """Start engine + app + uvicorn on the tiny checkpoint (a caller-owned engine); tear everything down."""
    engine_kw = {k: settings.pop(k) for k in ("max_num_seqs", "max_queued") if k in settings}
    model, _ = load_checkpoint(checkpoint, "cpu")
    engine = Engine(
        model,
        max_num_seqs=engine_kw.get("max_num_seqs", 4),
        max_queued=engine_kw.get("max_queued", 64),
        max_model_len=512,
    )
    engine.start()
    try:
        cfg = Settings(model=checkpoint, served_model_name=MODEL_NAME, **settings)
        with serve_app(create_app(cfg, engine=engine), log_level="warning") as url:
            yield LiveServer(url, engine, cfg.api_key)
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def live(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    with live_server(tiny_checkpoint) as srv:
        yield srv
