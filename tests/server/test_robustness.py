"""Requests that once broke the engine for everyone (issue 15), against a real uvicorn server.

Each one must end in a 2xx, or a 4xx in OpenAI's envelope, and never take other requests down with it:
a `top_k` beyond the vocabulary beside running streams, a temperature that overflows a division, a storm of
streams abandoned while queued, and a completions request with more prompts than the queue holds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.conftest import MODEL_NAME, LiveServer, live_server

pytestmark = pytest.mark.usefixtures("one_thread")

CHAT = "/v1/chat/completions"


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": content}], **extra}


def assert_envelope(r: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


@pytest.fixture(scope="module")
def wide(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    """Eight slots: six streams and a poisoned request share one decode batch."""
    with live_server(tiny_checkpoint, max_num_seqs=8) as srv:
        yield srv


async def _data_events(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    async for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[len("data: ") :])


async def _rest(events: AsyncIterator[dict[str, Any]]) -> tuple[str | None, list[str]]:
    """Read a chat stream to its end: (its finish_reason, the error events it carried)."""
    finish: str | None = None
    errors: list[str] = []
    async for event in events:
        if "error" in event:
            errors.append(str(event["error"]))
        for choice in event.get("choices", []):
            finish = choice.get("finish_reason") or finish
    return finish, errors


def test_top_k_beyond_the_vocabulary_fails_nobody(wide: LiveServer) -> None:
    """Six greedy streams run; a request with top_k > vocabulary joins their decode batch; all seven finish."""
    vocab = wide.engine.vocab_size
    running = chat("go", max_tokens=480, ignore_eos=True, temperature=0, stream=True)
    poisoned = chat("hi", max_tokens=8, top_k=vocab + 1, temperature=1.0)

    async def main() -> tuple[list[tuple[str | None, list[str]]], httpx.Response, int]:
        async with httpx.AsyncClient(base_url=wide.url, timeout=60) as c:
            # Response headers come after the engine took the request: the six are queued or running, each
            # with 480 tokens to go, when the poisoned one arrives (it is prefilled after them, then decodes
            # in their batch).
            streams = [await c.send(c.build_request("POST", CHAT, json=running), stream=True) for _ in range(6)]
            try:
                assert [s.status_code for s in streams] == [200] * 6
                answer = await c.post(CHAT, json=poisoned)
                still_running = wide.engine.stats().running
                return [await _rest(_data_events(s.aiter_lines())) for s in streams], answer, still_running
            finally:
                for s in streams:
                    await s.aclose()

    ends, answer, still_running = asyncio.run(main())
    assert ends == [("length", [])] * 6
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert still_running == 6  # the six ran before and after the poisoned request: they shared its steps


@pytest.mark.parametrize(("temperature", "stream"), [(1e-38, False), (1e-45, False), (1e-45, True)])
def test_vanishing_temperature_answers_greedily(wide: LiveServer, temperature: float, stream: bool) -> None:
    """Logits divided by a temperature near float32's smallest value overflow to inf (softmax: NaN): greedy."""
    body = chat("hello there", max_tokens=12, ignore_eos=True)
    with wide.client() as c:
        greedy = c.post(CHAT, json={**body, "temperature": 0})
        assert greedy.status_code == 200, greedy.text
        expected = greedy.json()["choices"][0]["message"]["content"]
        r = c.post(CHAT, json={**body, "temperature": temperature, "stream": stream})
        assert r.status_code == 200, r.text
        if stream:
            assert "error" not in r.text
            chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
            text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"])
        else:
            text = r.json()["choices"][0]["message"]["content"]
    assert text == expected


@pytest.mark.parametrize("extra", [{"top_p": 1e-300}, {"top_p": 1e-300, "seed": 7}, {"min_p": 1e-300}])
def test_vanishing_top_p_keeps_the_best_token(wide: LiveServer, extra: dict[str, Any]) -> None:
    """A top_p of 1e-300 is 0.0 in float32: it once dropped every token (500); now it keeps the best one."""
    body = chat("hello there", max_tokens=8, ignore_eos=True)
    with wide.client() as c:
        greedy = c.post(CHAT, json={**body, "temperature": 0})
        r = c.post(CHAT, json={**body, "temperature": 1.0, **extra})
    assert r.status_code == 200, r.text
    if "top_p" in extra:
        assert r.json()["choices"][0]["message"] == greedy.json()["choices"][0]["message"]


@pytest.mark.parametrize("penalty", [1e-45, 5e-324, 1e9])
def test_repetition_penalty_that_overflows_is_400(wide: LiveServer, penalty: float) -> None:
    with wide.client() as c:
        r = c.post(CHAT, json=chat("hello hello hello", max_tokens=4, repetition_penalty=penalty))
    assert_envelope(r, 400, "repetition_penalty")


def test_more_prompts_than_the_queue_holds_is_400(wide: LiveServer) -> None:
    """A request the queue can never take whole is the client's error (400 that says why), not a 429 to retry."""
    capacity = wide.engine.max_queued
    body = {"model": MODEL_NAME, "max_tokens": 1}
    with wide.client() as c:
        err = assert_envelope(c.post("/v1/completions", json={**body, "prompt": ["one two"] * (capacity + 1)}), 400)
        assert err["type"] == "invalid_request_error" and err["param"] == "prompt"
        assert str(capacity) in err["message"] and str(capacity + 1) in err["message"]
        err = assert_envelope(c.post("/v1/completions", json={**body, "prompt": [[5, 6]] * capacity, "n": 2}), 400)
        assert err["param"] == "prompt"
        ok = c.post("/v1/completions", json={**body, "prompt": ["one two"] * capacity})  # exactly fits
        assert ok.status_code == 200, ok.text
        assert len(ok.json()["choices"]) == capacity


def test_n_beyond_a_small_queue_is_400(tiny_checkpoint: Path) -> None:
    with live_server(tiny_checkpoint, max_num_seqs=1, max_queued=2) as srv, srv.client() as c:
        err = assert_envelope(c.post(CHAT, json=chat("hi", n=3, max_tokens=1)), 400)
        assert err["param"] == "n"
        err = assert_envelope(c.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "hi", "n": 3}), 400)
        assert err["param"] == "n"
        assert c.post(CHAT, json=chat("hi", n=2, max_tokens=1)).status_code == 200


def test_next_request_after_an_abandoned_storm_gets_200(tiny_checkpoint: Path) -> None:
    """200 streams opened at once and dropped after 0.5 s; the very next request is served, not refused.

    A queue of 8 (the default 64 is not always reached in 0.5 s on a loaded 2-core machine): the storm fills
    it (a 429 comes back) and then hangs up; the next request goes out, on a connection opened before, as soon
    as the storm's connections are closed. The server notices the hang-ups a few event-loop turns after they
    land, and the engine thread may be mid-step: the dead requests must leave the queue before the next
    request is turned away. (Timing-dependent on the old code: it failed 4 runs in 6 there.)
    """
    body = chat("go", max_tokens=200, ignore_eos=True, stream=True)
    with live_server(tiny_checkpoint, max_queued=8) as srv:

        async def storm() -> httpx.Response:
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
            refused = asyncio.Event()
            async with (
                httpx.AsyncClient(base_url=srv.url, timeout=60) as fresh,
                httpx.AsyncClient(base_url=srv.url, timeout=60, limits=limits) as c,
            ):
                assert (await fresh.get("/health")).status_code == 200  # connected: the next request goes at once

                async def one() -> None:
                    async with c.stream("POST", CHAT, json=body) as r:
                        if r.status_code == 429:
                            refused.set()
                        async for _ in r.aiter_raw():
                            pass

                tasks = [asyncio.create_task(one()) for _ in range(200)]
                await asyncio.gather(asyncio.sleep(0.5), refused.wait())  # >= 0.5 s, and the queue is full
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)  # their connections are closed now
                return await fresh.post(CHAT, json={**body, "stream": False, "max_tokens": 5})

        r = asyncio.run(storm())
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["finish_reason"] == "length"
