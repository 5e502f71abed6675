"""The lean streaming path (live uvicorn): several tokens per SSE event, the raw ASGI response and its disconnects.

An event may carry the tokens of several engine steps (they arrive K at a time, and pile up while the loop is
busy): joined, the events give the non-stream answer's text and per-token logprobs. A client that hangs up while
its request still waits for a slot frees that place at once, before any token (the response's disconnect watcher).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from minigpt_core.output_parser import OutputParser
from minigpt_core.sampling import SamplingParams
from minigpt_core.tokenizer import IM_END_ID, THINK_ID, TOOL_CALL_END_ID, Tokenizer
from server.generation import ChoiceJob, merge_choices
from server.streaming import ResponseMeta, chat_response, chat_stream, completion_response, completion_stream
from tests.server.conftest import MODEL_NAME, LiveServer, live_server
from tests.server.test_endpoints import metric


def _events(lines: Iterator[str]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[len("data: ") :]))
    return out


def _backlog_and_plain(
    live: LiveServer, checkpoint: Path, params: SamplingParams, chat: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One greedy generation twice on the live engine: streamed with every token queued before its consumer first
    ran (as when the event loop is busy under load, so run_choice takes them as one batch), and non-streamed."""
    tokenizer = Tokenizer.from_dir(checkpoint)
    prompt = tokenizer.encode("Once upon")

    def job(handle: Any) -> ChoiceJob:
        return ChoiceJob(0, handle, OutputParser(tokenizer, thinking=False, parse_tools=chat, swallow_think=chat))

    def meta() -> ResponseMeta:
        return ResponseMeta(
            id="x",
            created=0,
            model=MODEL_NAME,
            prompt_tokens=len(prompt),
            n_choices=1,
            token_bytes=tokenizer.token_bytes,
            logprobs=True,
            include_usage=True,
        )

    async def run() -> tuple[list[bytes], dict[str, Any]]:
        handle = live.engine.submit(prompt, params, request_id="backlog")
        assert live.engine.wait_idle(30)  # blocks this loop: every event is posted, none consumed yet
        await asyncio.sleep(0)  # the posted events land in the handle's queue
        stream = (chat_stream if chat else completion_stream)(meta(), merge_choices([job(handle)], None))
        events = [event async for event in stream]
        plain = merge_choices([job(live.engine.submit(prompt, params, request_id="plain"))], None)
        return events, await (chat_response if chat else completion_response)(meta(), plain)

    events, full = asyncio.run(run())
    usage_and_done = events[-1].split(b"\n\n")  # the end goes out as one piece: the usage chunk, then [DONE]
    assert usage_and_done[1:] == [b"data: [DONE]", b""] and b'"choices":[],"usage":{' in usage_and_done[0]
    return _events(iter(b"".join(events).decode().splitlines())), full


def test_a_coalesced_completion_event_joins_to_the_non_stream_answer(live: LiveServer, tiny_checkpoint: Path) -> None:
    """Many tokens in one event: the same text and the same per-token logprobs as the non-stream answer."""
    params = SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True, logprobs=True, top_logprobs=2)
    events, full = _backlog_and_plain(live, tiny_checkpoint, params, chat=False)
    chunks = [e["choices"][0] for e in events if e["choices"]]
    assert max(len(ch["logprobs"]["tokens"]) for ch in chunks) > 1  # the backlog went out together
    assert "".join(ch["text"] for ch in chunks) == full["choices"][0]["text"]
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert [x for ch in chunks for x in ch["logprobs"][key]] == full["choices"][0]["logprobs"][key]
    assert events[-1]["usage"] == full["usage"] and full["usage"]["completion_tokens"] == 30
    assert chunks[-1]["finish_reason"] == "length"


def test_a_coalesced_chat_event_joins_to_the_non_stream_answer(live: LiveServer, tiny_checkpoint: Path) -> None:
    params = SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True, logprobs=True, top_logprobs=1)
    events, full = _backlog_and_plain(live, tiny_checkpoint, params, chat=True)
    chunks = [e["choices"][0] for e in events if e["choices"]]
    entries = [ch["logprobs"]["content"] for ch in chunks if ch["logprobs"]]
    assert max(len(e) for e in entries) > 1
    assert [x for e in entries for x in e] == full["choices"][0]["logprobs"]["content"]
    message = full["choices"][0]["message"]
    assert "".join(ch["delta"].get("content", "") for ch in chunks) == (message["content"] or "")
    calls = [c for ch in chunks for c in ch["delta"].get("tool_calls", [])]
    assert len([c for c in calls if "id" in c]) == len(message.get("tool_calls") or [])
    assert events[-1]["usage"] == full["usage"]
    assert chunks[0]["delta"]["role"] == "assistant"
    assert chunks[-1]["finish_reason"] == full["choices"][0]["finish_reason"]


def test_stream_events_carry_several_tokens_over_http(live: LiveServer) -> None:
    """Without logprobs the engine decodes K steps per call: an event carries them, joined to the same answer."""
    body = {"model": MODEL_NAME, "prompt": "Once upon", "max_tokens": 40, "temperature": 0, "ignore_eos": True}
    with live.client() as c:
        full = c.post("/v1/completions", json=body).json()["choices"][0]["text"]
        stream_body = body | {"stream": True, "stream_options": {"include_usage": True}}
        with c.stream("POST", "/v1/completions", json=stream_body) as r:
            assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert r.headers["cache-control"] == "no-cache" and r.headers["x-request-id"]
            lines = list(r.iter_lines())
    assert lines[-2:] == ["data: [DONE]", ""] or lines[-1] == "data: [DONE]"
    events = _events(iter(lines))
    texts = [e["choices"][0]["text"] for e in events if e["choices"]]
    assert "".join(texts) == full and len(texts) < 40  # fewer events than tokens
    assert events[-1]["usage"]["completion_tokens"] == 40


@pytest.fixture(scope="module")
def one_slot(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    with live_server(tiny_checkpoint, max_num_seqs=1) as srv:
        yield srv


def test_a_stream_dropped_before_its_first_token_is_cancelled(one_slot: LiveServer) -> None:
    """One slot, held by a long stream; a second stream waits for it and its client hangs up after the headers. The
    response's disconnect watcher cancels it then: a send to a closed connection raises nothing under uvicorn, so
    without the watcher it would run all its tokens once the slot came free."""
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    before = one_slot.engine.stats().generation_tokens_total
    with one_slot.client() as c, one_slot.client() as c2:
        with c.stream("POST", "/v1/chat/completions", json=body) as running:
            raw = running.iter_raw()
            next(raw)
            with c2.stream("POST", "/v1/chat/completions", json=body) as dropped:
                assert dropped.status_code == 200
            assert one_slot.engine.wait_idle(30)
            assert b"".join(raw).endswith(b"data: [DONE]\n\n")  # the first stream ran to its end
        assert metric(c.get("/metrics").text, "minigpt_num_requests_running") == 0
    made = one_slot.engine.stats().generation_tokens_total - before
    assert 400 <= made < 400 + 100  # the first stream's tokens, and at most a few of the dropped one's


def test_tokens_that_add_no_text_still_count_in_a_streams_usage(live: LiveServer) -> None:
    """Without logprobs a delta carries none; a batch whose tokens add no text (tags, here) must still reach usage."""
    tags = {str(t): 30 for t in (IM_END_ID, THINK_ID, TOOL_CALL_END_ID)}
    body: dict[str, Any] = {
        "model": MODEL_NAME,
        "prompt": "hello",
        "max_tokens": 12,
        "temperature": 0,
        "ignore_eos": True,
        "logit_bias": tags,  # every token a tag: no text at all
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with live.client() as c:
        with c.stream("POST", "/v1/completions", json=body) as r:
            events = _events(r.iter_lines())
        plain = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        full = c.post("/v1/completions", json=plain).json()
    assert events[-1]["usage"]["completion_tokens"] == 12 == full["usage"]["completion_tokens"]
    assert "".join(e["choices"][0]["text"] for e in events if e["choices"]) == full["choices"][0]["text"] == ""


def test_sse_response_messages_and_its_background_task() -> None:
    """Headers, one message per event, [DONE] closes the response in its own message; the background task runs
    after a completed response only; a client gone before the first event gets nothing and cancels at once."""
    from starlette.background import BackgroundTask

    from server.sse import SSEResponse

    async def run(disconnect_first: bool) -> tuple[list[dict[str, Any]], list[str]]:
        calls: list[str] = []
        gone = asyncio.Event()
        if disconnect_first:
            gone.set()

        async def body() -> Any:
            await asyncio.sleep(0.01)
            yield b"data: 1\n\n"
            yield b"data: [DONE]\n\n"
            calls.append("body went on after [DONE]")

        async def receive() -> dict[str, Any]:
            await gone.wait()
            return {"type": "http.disconnect"}

        sent: list[dict[str, Any]] = []

        async def send(message: Any) -> None:
            sent.append(message)
            if not message.get("more_body", True):
                gone.set()  # uvicorn reports a completed response as a disconnect too

        response = SSEResponse(body(), lambda: calls.append("closed"))
        response.background = BackgroundTask(lambda: calls.append("background"))
        await response({"type": "http"}, receive, send)  # type: ignore[arg-type]
        return sent, calls

    sent, calls = asyncio.run(run(disconnect_first=False))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body", "http.response.body"]
    assert (b"content-type", b"text/event-stream; charset=utf-8") in sent[0]["headers"]
    assert [(m["body"], m["more_body"]) for m in sent[1:]] == [(b"data: 1\n\n", True), (b"data: [DONE]\n\n", False)]
    assert calls[-1] == "background" and "body went on after [DONE]" not in calls
    sent, calls = asyncio.run(run(disconnect_first=True))
    assert [m["type"] for m in sent] == ["http.response.start"] and "closed" in calls and "background" not in calls
