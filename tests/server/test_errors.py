"""Every error path of the server, with its status and OpenAI's envelope; API-key auth; 429 on a full queue."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.server.conftest import MODEL_NAME, LiveServer, live_server

MSGS = [{"role": "user", "content": "hi"}]


def envelope(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    return err


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL_NAME, "messages": MSGS, "temperature": 5}, "temperature"),
        ({"model": MODEL_NAME, "messages": []}, "messages"),
        ({"model": MODEL_NAME}, "messages"),
        ({"model": MODEL_NAME, "messages": MSGS, "n": 0}, "n"),
        ({"model": MODEL_NAME, "messages": MSGS, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"model": MODEL_NAME, "messages": MSGS, "max_tokens": "lots"}, "max_tokens"),
        ({"model": MODEL_NAME, "messages": MSGS, "logit_bias": {"99999": 5}}, "logit_bias"),
        ({"model": MODEL_NAME, "messages": MSGS, "logit_bias": {"abc": 5}}, "logit_bias"),
        ({"model": MODEL_NAME, "messages": [{"role": "wizard", "content": "x"}]}, None),
        ({"model": MODEL_NAME, "messages": MSGS, "stream_options": {"include_usage": True}}, None),
    ],
)
def test_invalid_fields_are_400(live: LiveServer, body: dict[str, Any], param: str | None) -> None:
    with live.client() as c:
        err = envelope(c.post("/v1/chat/completions", json=body), 400)
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] is not None and err["param"].startswith(param)


def test_malformed_json_and_wrong_shapes_are_400(live: LiveServer) -> None:
    with live.client() as c:
        envelope(
            c.post(
                "/v1/chat/completions",
                content=b'{"model": "tiny", "messages": [',
                headers={"content-type": "application/json"},
            ),
            400,
        )
        envelope(c.post("/v1/chat/completions", content=b"[1, 2]", headers={"content-type": "application/json"}), 400)
        envelope(c.post("/v1/completions", json={"model": MODEL_NAME, "prompt": [[1, 2], [999999]]}), 400)
        envelope(c.post("/detokenize", json={"tokens": [-1]}), 400)


def test_json_without_json_content_type_is_415(live: LiveServer) -> None:
    # `curl -d` sends form encoding, a browser on any origin may send text/plain without a preflight: both 415
    raw = b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'
    with live.client() as c:
        r = c.post("/v1/chat/completions", content=raw, headers={"content-type": "application/x-www-form-urlencoded"})
        envelope(r, 415, "unsupported_media_type")
        envelope(c.post("/v1/chat/completions", content=b"model=tiny", headers={"content-type": "text/plain"}), 415)


def test_context_length_exceeded(live: LiveServer) -> None:
    with live.client() as c:
        err = envelope(
            c.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": MSGS, "max_tokens": 10_000}),
            400,
            code="context_length_exceeded",
        )
        assert "512" in err["message"] and "10000" in err["message"]
        long = [{"role": "user", "content": "hello world " * 400}]
        envelope(
            c.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": long}), 400, "context_length_exceeded"
        )


def test_unknown_model_and_route(live: LiveServer) -> None:
    with live.client() as c:
        envelope(
            c.post("/v1/chat/completions", json={"model": "gpt-9", "messages": MSGS}), 404, "model_not_found", "model"
        )
        envelope(c.get("/v1/models/gpt-9"), 404, "model_not_found")
        envelope(c.get("/v1/nothing-here"), 404)


def test_tool_choice_naming_unknown_tool(live: LiveServer) -> None:
    tool = {"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}
    body = {
        "model": MODEL_NAME,
        "messages": MSGS,
        "tools": [tool],
        "tool_choice": {"type": "function", "function": {"name": "nope"}},
    }
    with live.client() as c:
        envelope(c.post("/v1/chat/completions", json=body), 400, param="tool_choice")


def test_body_too_large_is_413(tiny_checkpoint: Path) -> None:
    with live_server(tiny_checkpoint, max_body_bytes=4096) as srv, srv.client() as c:
        big = [{"role": "user", "content": "x" * 5000}]
        envelope(c.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": big}), 413)

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
            yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}]}'

        json_type = {"content-type": "application/json"}
        envelope(c.post("/v1/chat/completions", content=chunks(), headers=json_type), 413)


def test_sdk_raises_typed_errors_without_retry(live: LiveServer) -> None:
    client = openai.OpenAI(base_url=live.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL_NAME, messages=MSGS, temperature=9)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=MSGS)  # type: ignore[arg-type]


def test_api_key(tiny_checkpoint: Path) -> None:
    with live_server(tiny_checkpoint, api_key="s3cret") as srv:
        with httpx.Client(base_url=srv.url) as anon:
            assert anon.get("/health").status_code == 200
            envelope(anon.get("/v1/models"), 401, "invalid_api_key")
            bad = anon.post(
                "/v1/chat/completions",
                json={"model": MODEL_NAME, "messages": MSGS},
                headers={"Authorization": "Bearer nope"},
            )
            envelope(bad, 401)
        with srv.client() as c:
            assert c.get("/v1/models").status_code == 200
        good = openai.OpenAI(base_url=srv.base_url, api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model=MODEL_NAME, messages=MSGS, max_tokens=2).choices  # type: ignore[arg-type]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.base_url, api_key="wrong", max_retries=0).models.list()


def test_queue_full_is_429_with_retry_after(tiny_checkpoint: Path) -> None:
    with live_server(tiny_checkpoint, max_num_seqs=1, max_queued=1) as srv:
        body = {"model": MODEL_NAME, "messages": MSGS, "max_tokens": 40, "ignore_eos": True, "temperature": 0}

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
                return list(await asyncio.gather(*(c.post("/v1/chat/completions", json=body) for _ in range(6))))

        responses = asyncio.run(burst())
        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(200) >= 1 and statuses.count(429) >= 1, statuses
        rejected = next(r for r in responses if r.status_code == 429)
        assert rejected.headers["retry-after"] == "1"
        envelope(rejected, 429)
