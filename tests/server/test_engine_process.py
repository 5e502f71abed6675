"""`minigpt-serve --engine-process`: the engine in a process of its own, over real HTTP on the tiny checkpoint.

One engine-process server for the module (spawning a child that imports torch costs seconds) beside an in-process
server built from the same settings (the reference: greedy output must be identical). Both serve a random LoRA
adapter. The last test kills the child, so it runs last.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from minigpt_core.checkpoint import load_checkpoint
from minigpt_core.engine import Engine
from minigpt_core.engine_client import EngineClient
from minigpt_core.lora import save_adapter
from server.app import create_app
from server.settings import Settings
from server.state import ServerState
from tests.server.conftest import MODEL_NAME, serve_app
from tests.server.test_lora_serve import random_adapter

pytestmark = pytest.mark.usefixtures("one_thread")

MSGS: Any = [{"role": "user", "content": "hello model, what is two plus three?"}]
CALC: Any = {
    "type": "function",
    "function": {
        "name": "calculator",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
    },
}


@dataclass
class Served:
    url: str
    state: ServerState

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@contextlib.contextmanager
def served(settings: Settings) -> Iterator[Served]:
    app = create_app(settings)
    with serve_app(app, log_level="warning") as url:
        state: ServerState = app.state.server
        assert state.load_done.wait(120) and state.ready, state.load_error
        yield Served(url, state)


@pytest.fixture(scope="module")
def adapter_dir(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, _ = load_checkpoint(tiny_checkpoint)
    return save_adapter(tmp_path_factory.mktemp("adapter") / "ad", random_adapter(model, 1, ("q_proj", "v_proj")))


def settings(checkpoint: Path, adapter: Path, engine_process: bool) -> Settings:
    return Settings(
        model=checkpoint,
        served_model_name=MODEL_NAME,
        device="cpu",
        threads=1,
        max_num_seqs=2,
        max_queued=2,
        max_model_len=512,
        lora_modules=(("ad", adapter),),
        engine_process=engine_process,
    )


@pytest.fixture(scope="module")
def proc(tiny_checkpoint: Path, adapter_dir: Path) -> Iterator[Served]:
    with served(settings(tiny_checkpoint, adapter_dir, True)) as srv:
        assert isinstance(srv.state.engine, EngineClient)
        yield srv


@pytest.fixture(scope="module")
def local(tiny_checkpoint: Path, adapter_dir: Path) -> Iterator[Served]:
    with served(settings(tiny_checkpoint, adapter_dir, False)) as srv:
        assert isinstance(srv.state.engine, Engine)
        yield srv


def client_of(srv: Served) -> EngineClient:
    engine = srv.state.engine
    assert isinstance(engine, EngineClient)
    return engine


def rounded(logprobs: dict[str, Any]) -> list[tuple[str, float]]:
    """(token, logprob) to 3 decimals: the batch a row shares changes float rounding (~1e-7), never a token."""
    return [(item["token"], round(item["logprob"], 3)) for item in logprobs["content"]]


def test_the_cpu_default_is_the_engine_process_with_the_compiled_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """What `make serve` (no flags, no MINIGPT_* settings) gets on the CPU: the engine in its own process, the
    compiled forward left to the CPU defaults (built from a warm cache, else warmed in the background); flags and
    settings still win."""
    from server.app import uses_engine_process

    monkeypatch.delenv("MINIGPT_ENGINE_PROCESS", raising=False)  # tests/conftest.py sets them for every other test
    monkeypatch.delenv("MINIGPT_COMPILE_DECODE_CPU", raising=False)
    plain = Settings(device="cpu")
    assert plain.compile_decode_cpu is None and uses_engine_process(plain)
    assert not uses_engine_process(Settings(device="cpu", engine_process=False))
    monkeypatch.setenv("MINIGPT_ENGINE_PROCESS", "false")
    assert not uses_engine_process(Settings(device="cpu"))


def test_greedy_output_equals_the_in_process_engine(proc: Served, local: Served) -> None:
    """Chat (stream and not, n=2, logprobs) and completions, base model and adapter: token for token the same."""
    chat = {"messages": MSGS, "max_tokens": 24, "temperature": 0, "ignore_eos": True, "logprobs": True}
    chat |= {"top_logprobs": 2, "n": 2}
    completion = {"prompt": ["the model", "hello world"], "max_tokens": 12, "temperature": 0, "logprobs": 2}
    answers: dict[str, list[Any]] = {}
    for name, srv in (("proc", proc), ("local", local)):
        with srv.client() as c:
            out: list[list[Any]] = []
            for model in (MODEL_NAME, "ad"):
                body = c.post("/v1/chat/completions", json={**chat, "model": model}).json()
                out.append([(ch["message"], rounded(ch["logprobs"]), ch["finish_reason"]) for ch in body["choices"]])
                body = c.post("/v1/completions", json={**completion, "model": model}).json()
                out.append([(ch["text"], ch["logprobs"]["tokens"]) for ch in body["choices"]])
        answers[name] = out
    assert answers["proc"] == answers["local"]
    base_chat, _, adapter_chat, _ = answers["proc"]
    assert len(base_chat) == 2 and base_chat[0] == base_chat[1]  # n=2, greedy
    assert len(base_chat[0][1]) == 24 and base_chat[0][2] == "length"
    assert base_chat != adapter_chat  # the adapter ran in the child

    stream = proc.sdk().chat.completions.create(
        model=MODEL_NAME, messages=MSGS, max_tokens=24, temperature=0, stream=True, extra_body={"ignore_eos": True}
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == base_chat[0][0]["content"]


def test_a_tool_grammar_is_rebuilt_in_the_engine_process(proc: Served, local: Served) -> None:
    """tool_choice "required": the random model can only write a call the schema allows (the child's grammar), and
    writes the same one as in-process."""
    calls = []
    for srv in (proc, local):
        reply = srv.sdk().chat.completions.create(
            model=MODEL_NAME,
            messages=MSGS,
            tools=[CALC],
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=100,
            temperature=0,
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        assert choice.message.tool_calls
        call: Any = choice.message.tool_calls[0]
        assert call.function.name == "calculator"
        assert isinstance(json.loads(call.function.arguments)["expression"], str)
        calls.append(call.function.arguments)
    assert calls[0] == calls[1]
    with proc.client() as c:  # validation still happens before anything is queued: a 400, not a stream error
        bad = c.post(
            "/v1/chat/completions",
            json={"model": MODEL_NAME, "messages": MSGS, "tools": [CALC], "tool_choice": {"type": "function",
                  "function": {"name": "nope"}}},
        )  # fmt: skip
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "tool_choice"
        too_long = c.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": MSGS, "max_tokens": 600})
        assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"


def test_a_disconnect_frees_the_slot_in_the_child(proc: Served) -> None:
    engine = client_of(proc)
    before = engine.stats().generation_tokens_total
    body = {"model": MODEL_NAME, "messages": MSGS, "max_tokens": 480, "ignore_eos": True, "stream": True}
    with proc.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as resp:
        lines = resp.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
    assert engine.wait_idle(10)  # the child's own stats: nothing running or waiting
    assert engine.stats().generation_tokens_total - before < 400
    with proc.client() as c, contextlib.suppress(httpx.TimeoutException):  # a non-streamed request given up on
        c.post("/v1/chat/completions", json={**body, "stream": False}, timeout=0.3)
    assert engine.wait_idle(10)
    assert engine.stats().running == 0 and engine.stats().generation_tokens_total - before < 800


def test_a_full_queue_is_a_429(proc: Served) -> None:
    body = {"model": MODEL_NAME, "messages": MSGS, "max_tokens": 60, "ignore_eos": True, "temperature": 0}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=proc.url, timeout=60) as c:
            return list(await asyncio.gather(*(c.post("/v1/chat/completions", json=body) for _ in range(8))))

    statuses = sorted(r.status_code for r in asyncio.run(burst()))
    # 2 slots + 2 waiting are taken; the rest is turned away before the first byte
    assert statuses.count(200) >= 2 and statuses.count(429) >= 1 and set(statuses) == {200, 429}, statuses
    assert client_of(proc).wait_idle(10)


def test_a_killed_engine_process_ends_requests_with_errors_not_hangs(proc: Served) -> None:
    """Runs last: the module's engine process is killed."""
    engine = client_of(proc)
    body = {"model": MODEL_NAME, "messages": MSGS, "max_tokens": 480, "ignore_eos": True}

    async def doomed() -> tuple[list[str], httpx.Response]:
        async with (
            httpx.AsyncClient(base_url=proc.url, timeout=30) as c,
            c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as resp,
        ):
            non_stream = asyncio.ensure_future(c.post("/v1/chat/completions", json=body))
            lines: list[str] = []
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    lines.append(line)
                    if len(lines) == 2:
                        assert engine.pid is not None
                        os.kill(engine.pid, signal.SIGKILL)
            return lines, await non_stream

    lines, whole = asyncio.run(asyncio.wait_for(doomed(), 30))
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][len("data: ") :])["error"]["type"] == "server_error"  # the stream's last event
    assert whole.status_code >= 500 and whole.json()["error"]["type"] == "server_error"
    with proc.client() as c:
        health = c.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "error"
        assert "exit code -9" in health.json()["detail"]
        late = c.post("/v1/chat/completions", json=body)
        assert late.status_code == 503 and late.json()["error"]["type"] == "server_error"
