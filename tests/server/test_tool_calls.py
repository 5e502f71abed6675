"""Tool calls through the real OutputParser and the wire formatting: ids, finish_reason, stream == non-stream.

A random-weight model does not write tool calls, so the token ids of a call are fed to the parser directly;
everything after the engine (parser -> deltas -> SSE / JSON) is the production path.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from minigpt_core.output_parser import OutputParser
from minigpt_core.tokenizer import TOOL_CALL_END_ID, TOOL_CALL_ID, Tokenizer
from server.generation import ChoiceDelta, ChoiceJob, _ChoiceState
from server.streaming import ResponseMeta, chat_response, chat_stream

CALL = '{"name": "calculator", "arguments": {"expression": "2 + 3"}}'


def one_delta_for(tokenizer: Tokenizer, ids: list[int]) -> list[ChoiceDelta]:
    """Every token in one delta, as when the engine got ahead of the event loop and the runner drained it."""
    parser = OutputParser(tokenizer, thinking=False, parse_tools=True)
    state = _ChoiceState(ChoiceJob(0, None, parser), None, 0.0)
    delta = ChoiceDelta(0, completion_tokens=len(ids))
    state.apply(delta, [seg for t in ids for seg in parser.push(t)] + parser.finish())
    delta.finish_reason = state.finish_reason("stop")
    return [delta]


def check_call_chunks(events: list[dict[str, Any]], message: dict[str, Any]) -> list[int]:
    """OpenAI's stream shape for tool calls; returns, per call, how many chunks carried argument text."""
    entries = []
    for event in events:
        for choice in event["choices"]:
            calls = choice["delta"].get("tool_calls", [])
            assert len({tc["index"] for tc in calls}) == len(calls), "two entries for one index in one chunk"
            entries += calls
    fragment_chunks = []
    for k, call in enumerate(message["tool_calls"]):
        mine = [tc for tc in entries if tc["index"] == k]
        first, rest = mine[0], mine[1:]
        assert first == {
            "index": k,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }
        assert all(set(tc) == {"index", "function"} and set(tc["function"]) == {"arguments"} for tc in rest)
        assert "".join(tc["function"]["arguments"] for tc in rest) == call["function"]["arguments"]
        fragment_chunks.append(sum(1 for tc in rest if tc["function"]["arguments"]))
    assert len(entries) == sum(1 + n for n in fragment_chunks)  # no empty fragments, no entries for other calls
    return fragment_chunks


def deltas_for(tokenizer: Tokenizer, ids: list[int], single: bool = False) -> list[ChoiceDelta]:
    parser = OutputParser(tokenizer, thinking=False, parse_tools=True)
    state = _ChoiceState(ChoiceJob(0, None, parser, single_tool_call=single), None, 0.0)
    out = []
    for i, token_id in enumerate(ids):
        delta = ChoiceDelta(0, completion_tokens=1)
        last = i == len(ids) - 1
        stop = state.apply(delta, parser.push(token_id) + (parser.finish() if last else []))
        if stop or last:
            delta.finish_reason = state.finish_reason("stop")
            out.append(delta)
            break
        out.append(delta)
    return out


async def _aiter(items: list[ChoiceDelta]) -> AsyncIterator[ChoiceDelta]:
    for item in items:
        yield item


def meta(tokenizer: Tokenizer) -> ResponseMeta:
    return ResponseMeta(
        id="chatcmpl-x", created=1, model="m", prompt_tokens=3, n_choices=1, token_bytes=tokenizer.token_bytes
    )


def collect(tokenizer: Tokenizer, deltas: list[ChoiceDelta]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    async def run() -> tuple[dict[str, Any], list[bytes]]:
        body = await chat_response(meta(tokenizer), _aiter(deltas))
        chunks = [c async for c in chat_stream(meta(tokenizer), _aiter(deltas))]
        return body, chunks

    body, chunks = asyncio.run(run())
    assert chunks[-1] == b"data: [DONE]\n\n"
    return body, [json.loads(c[6:]) for c in chunks[:-1]]


def test_tool_call_shapes(tiny_tokenizer: Tokenizer) -> None:
    ids = [*tiny_tokenizer.encode("Let me compute."), TOOL_CALL_ID, *tiny_tokenizer.encode(CALL), TOOL_CALL_END_ID]
    body, events = collect(
        tiny_tokenizer, deltas_for(tiny_tokenizer, [*ids, TOOL_CALL_ID, *tiny_tokenizer.encode(CALL), TOOL_CALL_END_ID])
    )
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    msg = choice["message"]
    assert msg["content"] == "Let me compute."
    assert len(msg["tool_calls"]) == 2
    for call in msg["tool_calls"]:
        assert re.fullmatch(r"call_[A-Za-z0-9]{24}", call["id"]) and call["type"] == "function"
        assert call["function"]["name"] == "calculator"
        assert json.loads(call["function"]["arguments"]) == {"expression": "2 + 3"}
    assert msg["tool_calls"][0]["id"] != msg["tool_calls"][1]["id"]
    # streamed: the first entry of each call has index, id, type, name and "" arguments; then the arguments
    # arrive token by token (one chunk per token here), adding up to the non-streamed arguments
    n_tokens = len(tiny_tokenizer.encode('{"expression": "2 + 3"}'))
    assert check_call_chunks(events, msg) == [n_tokens, n_tokens]
    assert "<tool_call>" not in json.dumps(events)


def test_a_whole_call_in_one_delta_still_streams_one_entry_per_index(tiny_tokenizer: Tokenizer) -> None:
    one = [TOOL_CALL_ID, *tiny_tokenizer.encode(CALL), TOOL_CALL_END_ID]
    body, events = collect(tiny_tokenizer, one_delta_for(tiny_tokenizer, [*tiny_tokenizer.encode("Hi."), *one, *one]))
    msg = body["choices"][0]["message"]
    assert msg["content"] == "Hi." and len(msg["tool_calls"]) == 2
    assert check_call_chunks(events, msg) == [1, 1]  # name first, then the arguments in the next chunk
    finals = [c for e in events for c in e["choices"] if c["finish_reason"] is not None]
    assert [c["finish_reason"] for c in finals] == ["tool_calls"]


def test_parallel_tool_calls_false_stops_after_one(tiny_tokenizer: Tokenizer) -> None:
    one = [TOOL_CALL_ID, *tiny_tokenizer.encode(CALL), TOOL_CALL_END_ID]
    body, _ = collect(
        tiny_tokenizer, deltas_for(tiny_tokenizer, one + one + tiny_tokenizer.encode("more"), single=True)
    )
    msg = body["choices"][0]["message"]
    assert len(msg["tool_calls"]) == 1 and msg["content"] is None
    assert body["choices"][0]["finish_reason"] == "tool_calls"


def test_bad_call_json_stays_content(tiny_tokenizer: Tokenizer) -> None:
    ids = [TOOL_CALL_ID, *tiny_tokenizer.encode('{"name": calculator'), TOOL_CALL_END_ID]
    body, _ = collect(tiny_tokenizer, deltas_for(tiny_tokenizer, ids))
    msg = body["choices"][0]["message"]
    assert "tool_calls" not in msg and msg["content"] == '{"name": calculator'
    assert body["choices"][0]["finish_reason"] == "stop"
