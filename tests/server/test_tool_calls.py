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
    # streamed: first delta of each call has index, id, type, name and "" arguments; fragments add up
    call_deltas = [tc for e in events for c in e["choices"] for tc in c["delta"].get("tool_calls", [])]
    firsts = [tc for tc in call_deltas if "id" in tc]
    assert [tc["index"] for tc in firsts] == [0, 1] and all(tc["function"]["arguments"] == "" for tc in firsts)
    for k in (0, 1):
        args = "".join(tc["function"]["arguments"] for tc in call_deltas if tc["index"] == k)
        assert args == msg["tool_calls"][k]["function"]["arguments"]
    assert "<tool_call>" not in json.dumps(events)


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
