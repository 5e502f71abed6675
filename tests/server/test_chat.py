"""/v1/chat/completions against a live uvicorn: shapes, SSE framing, stream == non-stream, n, stop, seed, logprobs."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import openai
import pytest

from tests.server.conftest import MODEL_NAME, LiveServer

MSGS = [{"role": "user", "content": "hello world, what is two plus three?"}]


def chat(live: LiveServer, **body: Any) -> dict[str, Any]:
    with live.client() as c:
        r = c.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": MSGS, **body})
    assert r.status_code == 200, r.text
    return r.json()


def stream_events(live: LiveServer, **body: Any) -> tuple[bytes, list[Any]]:
    """Raw SSE body and the decoded `data:` payloads ("[DONE]" kept as a string)."""
    with live.client() as c:
        r = c.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": MSGS, "stream": True, **body})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    raw = r.content
    events: list[Any] = []
    for block in raw.split(b"\n\n")[:-1]:
        assert block.startswith(b"data: "), block
        payload = block[len(b"data: ") :]
        events.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return raw, events


def streamed_text(events: list[Any], index: int = 0) -> str:
    return "".join(
        c["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict)
        for c in e["choices"]
        if c["index"] == index
    )


def test_non_stream_shape_and_usage(live: LiveServer) -> None:
    body = chat(live, max_tokens=12, temperature=0)
    assert body["object"] == "chat.completion" and body["model"] == MODEL_NAME
    assert body["id"].startswith("chatcmpl-") and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length") and choice["logprobs"] is None
    assert "reasoning_content" not in choice["message"] and "reasoning" not in choice["message"]
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5 and 1 <= usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_stream_framing_byte_by_byte(live: LiveServer) -> None:
    raw, events = stream_events(live, max_tokens=10, temperature=0.8, seed=3, n=2)
    assert raw.endswith(b"data: [DONE]\n\n") and b"event:" not in raw and b"\r" not in raw
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks = events[:-1]
    assert {(e["id"], e["created"], e["model"], e["object"]) for e in chunks} == {
        (chunks[0]["id"], chunks[0]["created"], MODEL_NAME, "chat.completion.chunk")
    }
    assert all("usage" not in e for e in chunks)
    for index in (0, 1):
        mine = [c for e in chunks for c in e["choices"] if c["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert all("role" not in c["delta"] for c in mine[1:])
        finishes = [c["finish_reason"] for c in mine if c["finish_reason"] is not None]
        assert len(finishes) == 1 and mine[-1]["finish_reason"] == finishes[0]
    assert all(len(e["choices"]) == 1 for e in chunks)


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "seed": 11}])
def test_stream_equals_non_stream(live: LiveServer, sampling: dict[str, Any]) -> None:
    body = chat(live, max_tokens=24, **sampling)
    _, events = stream_events(live, max_tokens=24, stream_options={"include_usage": True}, **sampling)
    assert streamed_text(events) == body["choices"][0]["message"]["content"]
    finish = [c["finish_reason"] for e in events[:-1] for c in e["choices"] if c["finish_reason"]]
    assert finish == [body["choices"][0]["finish_reason"]]
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == body["usage"]
    assert all(e["usage"] is None for e in events[:-2])


def test_n_choices_streamed_and_not(live: LiveServer) -> None:
    common = {"max_tokens": 8, "n": 3, "temperature": 1.0, "seed": 5, "logprobs": True}
    body = chat(live, **common)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    per_choice = [len(c["logprobs"]["content"]) for c in body["choices"]]
    assert body["usage"]["completion_tokens"] == sum(per_choice)
    # choice i is sampled with seed + i, so the choices differ
    assert len({tuple(t["token"] for t in c["logprobs"]["content"]) for c in body["choices"]}) == 3
    _, events = stream_events(live, **common)
    for i in range(3):
        assert streamed_text(events, i) == body["choices"][i]["message"]["content"]


def test_seed_reproducible(live: LiveServer) -> None:
    common = {"max_tokens": 16, "temperature": 1.0, "logprobs": True, "ignore_eos": True}
    a, b, c = (chat(live, seed=s, **common)["choices"][0] for s in (1234, 1234, 4321))
    assert a == b
    tokens = [[t["token"] for t in x["logprobs"]["content"]] for x in (a, c)]
    assert tokens[0] != tokens[1]


def test_logprobs(live: LiveServer) -> None:
    body = chat(live, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3, ignore_eos=True)
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"] == 6
    for entry in content:
        assert entry["logprob"] <= 0 and bytes(entry["bytes"]).decode("utf-8", "replace") == entry["token"]
        assert len(entry["top_logprobs"]) == 3
        assert entry["top_logprobs"][0]["logprob"] == pytest.approx(entry["logprob"])  # greedy = top-1
    _, events = stream_events(live, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3, ignore_eos=True)
    streamed = [x for e in events[:-1] for c in e["choices"] if c["logprobs"] for x in c["logprobs"]["content"]]
    assert streamed == content


def _sampled(live: LiveServer) -> tuple[str, list[str]]:
    body = chat(live, max_tokens=40, temperature=1.0, seed=77, logprobs=True, ignore_eos=True)
    return body["choices"][0]["message"]["content"], [t["token"] for t in body["choices"][0]["logprobs"]["content"]]


def _check_stop(live: LiveServer, stop: str | list[str], expected: str) -> None:
    common = {"max_tokens": 40, "temperature": 1.0, "seed": 77, "ignore_eos": True, "stop": stop}
    body = chat(live, **common)
    assert body["choices"][0]["message"]["content"] == expected
    assert body["choices"][0]["finish_reason"] == "stop"
    _, events = stream_events(live, **common)
    assert streamed_text(events) == expected
    for e in events[:-1]:
        for c in e["choices"]:
            for s in [stop] if isinstance(stop, str) else stop:
                assert s not in (c["delta"].get("content") or "")


def test_stop_strings_including_split_across_tokens(live: LiveServer) -> None:
    text, tokens = _sampled(live)

    def plain(tok: str) -> bool:
        return len(tok.strip()) >= 2 and "\ufffd" not in tok and "<" not in tok and tok.isprintable()

    # a stop string made of the end of one token and the start of the next
    split_stop = next(
        (a[-2:] + b[:2] for a, b in itertools.pairwise(tokens) if plain(a) and plain(b) and a[-2:] + b[:2] in text),
        None,
    )
    assert split_stop is not None, (tokens, text)
    _check_stop(live, split_stop, text[: text.index(split_stop)])
    word = next(w for w in text.split()[2:] if plain(w))
    _check_stop(live, ["zzzz-never", word], text[: text.index(word)])


def test_openai_sdk_sync_and_async(live: LiveServer) -> None:
    client = openai.OpenAI(base_url=live.base_url, api_key="unused", max_retries=0)
    res = client.chat.completions.create(model=MODEL_NAME, messages=MSGS, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert res.choices[0].message.role == "assistant" and res.usage is not None
    stream = client.chat.completions.create(
        model=MODEL_NAME,
        messages=MSGS,
        max_tokens=8,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == res.choices[0].message.content

    async def run() -> str:
        aclient = openai.AsyncOpenAI(base_url=live.base_url, api_key="unused", max_retries=0)
        out = ""
        astream = await aclient.chat.completions.create(
            model=MODEL_NAME,
            messages=MSGS,
            max_tokens=8,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
        )
        async for chunk in astream:
            if chunk.choices:
                out += chunk.choices[0].delta.content or ""
        await aclient.close()
        return out

    assert asyncio.run(run()) == text


def test_thinking_fields_and_budget(live: LiveServer) -> None:
    body = chat(live, max_tokens=20, temperature=0, ultra_think=True, max_thinking_tokens=5)
    msg = body["choices"][0]["message"]
    assert msg["reasoning_content"] == msg["reasoning"]
    assert "<think>" not in (msg["content"] or "") and "</think>" not in (msg["content"] or "")
    # budget 5 inside the block, plus the forced </think>
    assert 1 <= body["usage"]["completion_tokens_details"]["reasoning_tokens"] <= 6
    _, events = stream_events(live, max_tokens=20, temperature=0, ultra_think=True, max_thinking_tokens=5)
    reasoning = "".join(c["delta"].get("reasoning_content") or "" for e in events[:-1] for c in e["choices"])
    assert reasoning == msg["reasoning_content"]
    assert streamed_text(events) == msg["content"]
    off = chat(live, max_tokens=5, temperature=0, reasoning_effort="none")
    assert "reasoning_content" not in off["choices"][0]["message"]


def test_max_completion_tokens_and_content_parts(live: LiveServer) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "world"}]}]
    with live.client() as c:
        r = c.post(
            "/v1/chat/completions",
            json={"model": MODEL_NAME, "messages": parts, "max_completion_tokens": 3, "ignore_eos": True, "x_extra": 1},
        )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    "tool_choice", ["auto", "none", "required", {"type": "function", "function": {"name": "calc"}}]
)
def test_tools_are_accepted(live: LiveServer, tool_choice: Any) -> None:
    tool = {"type": "function", "function": {"name": "calc", "description": "math", "parameters": {"type": "object"}}}
    body = chat(
        live,
        max_tokens=6,
        temperature=0,
        tools=[tool],
        tool_choice=tool_choice,
        parallel_tool_calls=False,
        response_format={"type": "text"},
    )
    msg = body["choices"][0]["message"]
    assert "<tool_call>" not in (msg["content"] or "")
    # the tools are rendered into the prompt (except for "none")
    plain = chat(live, max_tokens=1, temperature=0)
    grew = body["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]
    assert grew == (tool_choice != "none")


def test_typed_messages_render_as_the_wire_dicts_do() -> None:
    """The built-in template takes the wire messages as validated `Message`s (no dict round trip); a custom
    template gets dicts. Both forms render the same prompt, and both refuse a call whose arguments are not JSON."""
    from pathlib import Path

    from minigpt_core.chat_template import render
    from minigpt_core.errors import InvalidRequest
    from minigpt_core.tokenizer import Tokenizer
    from server.chat import chat_request
    from server.protocol import ChatCompletionRequest

    tok = Tokenizer.from_file(Path(__file__).parents[2] / "minigpt_core" / "assets" / "tokenizer.json")
    call = {"id": "call_1", "type": "function", "function": {"name": "calc", "arguments": '{"x": 1}'}}
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": None, "reasoning_content": "\nhm\n", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "name": "calc", "content": "2"},
    ]
    req = ChatCompletionRequest.model_validate({"model": MODEL_NAME, "messages": messages})
    typed, wire = chat_request(req).messages, chat_request(req, typed_messages=False).messages
    assert not isinstance(typed[0], dict) and isinstance(wire[0], dict)
    for thinking in (False, True):
        expected = render(wire, add_generation_prompt=True, enable_thinking=thinking, tokenizer=tok)
        assert render(typed, add_generation_prompt=True, enable_thinking=thinking, tokenizer=tok) == expected
    call["function"]["arguments"] = "[1]"
    bad = ChatCompletionRequest.model_validate({"model": MODEL_NAME, "messages": messages})
    with pytest.raises(InvalidRequest, match="must be a JSON object") as typed_err:
        chat_request(bad)
    with pytest.raises(InvalidRequest, match="must be a JSON object") as wire_err:
        render(chat_request(bad, typed_messages=False).messages, tokenizer=tok)
    assert typed_err.value.param == wire_err.value.param == "messages[2].tool_calls[0].function.arguments"
