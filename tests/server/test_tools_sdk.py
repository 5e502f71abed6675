"""Tools and structured outputs through the official `openai` SDK against a live uvicorn (issue 9).

The checkpoint has RANDOM weights: every call and JSON answer below is well-formed only because of the grammar
constraint. `logit_bias` nudges the random model where a test needs a decision it would not otherwise make
(open a call in "auto", end after a call); the constraint still decides what is allowed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

from minigpt_core.checkpoint import save_checkpoint
from minigpt_core.model import MiniGPT
from minigpt_core.tokenizer import IM_END_ID, TOOL_CALL_ID, Tokenizer
from tests.conftest import tiny_config
from tests.server.conftest import MODEL_NAME, LiveServer, live_server
from training.datagen.schema_check import schema_errors

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 10},
        "unit": {"enum": ["C", "F"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit"],
}
CONVERT = {
    "type": "object",
    "properties": {"value": {"type": "integer", "minimum": -99, "maximum": 99}, "to": {"enum": ["m", "km"]}},
    "required": ["value", "to"],
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "convert", "description": "Units", "parameters": CONVERT}},
]
BUNDLED_TOKENIZER = Path(__file__).parents[2] / "minigpt_core" / "assets" / "tokenizer.json"
SCHEMAS = {"get_weather": WEATHER, "convert": CONVERT}
MSGS: list[Any] = [{"role": "user", "content": "what is the weather in paris and 3 km in m?"}]
END_BIAS = {str(IM_END_ID): 30}  # after a call, end the turn (inside a call the grammar masks it anyway)
CALL_BIAS = {str(TOOL_CALL_ID): 100}  # in "auto" / "none": try to open a call at once


def valid(schema: dict[str, Any], value: Any) -> bool:
    """`schema_errors` (training's jsonschema check, string maxLength included) finds nothing."""
    assert schema_errors(schema, value) == [], (schema, value)
    return True


@pytest.fixture(scope="module")
def bundled_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights over the bundled BPE: its prompts with tools fit the 512-token test context."""
    torch.manual_seed(0)
    tok = Tokenizer.from_file(BUNDLED_TOKENIZER)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "bundled", MiniGPT(tiny_config(tok.vocab_size)), tok)


@pytest.fixture(scope="module")
def live(bundled_checkpoint: Path) -> Iterator[LiveServer]:
    with live_server(bundled_checkpoint) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(live: LiveServer) -> Iterator[openai.OpenAI]:
    with live.sdk() as c:
        yield c


def ask(client: openai.OpenAI, **kw: Any) -> Any:
    body: dict[str, Any] = {"model": MODEL_NAME, "messages": MSGS, "temperature": 0, "max_tokens": 120}
    return client.chat.completions.create(**(body | kw))


def streamed(client: openai.OpenAI, **kw: Any) -> tuple[str, dict[int, dict[str, Any]], str | None]:
    """(content, {index: {id, name, arguments, chunks}}, finish_reason) assembled from the SSE deltas.

    A client that reads `delta.tool_calls[0]` chunk by chunk (one entry per index per chunk) must be enough;
    `chunks` counts the chunks that carried argument text.
    """
    content, calls, finish = "", {}, None
    for chunk in ask(client, stream=True, **kw):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            entries = choice.delta.tool_calls or []
            assert len({tc.index for tc in entries}) == len(entries)
            for tc in entries:
                if tc.index not in calls:  # the first delta of a call carries id, type, name and ""
                    assert tc.id and tc.type == "function" and tc.function.name and tc.function.arguments == ""
                    calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": "", "chunks": 0}
                else:
                    assert tc.id is None and tc.function.name is None and tc.function.arguments
                    calls[tc.index]["chunks"] += 1
                calls[tc.index]["arguments"] += tc.function.arguments or ""
            finish = choice.finish_reason or finish
    return content, calls, finish


def check_calls(message: Any, allowed: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """Every call: id "call_" + >= 16 chars, a tool from `allowed`, arguments JSON valid against its schema."""
    out = []
    for call in message.tool_calls:
        assert call.id.startswith("call_") and len(call.id) >= len("call_") + 16
        assert call.type == "function" and call.function.name in allowed
        args = json.loads(call.function.arguments)
        assert valid(SCHEMAS[call.function.name], args)
        out.append((call.function.name, args))
    return out


@pytest.mark.parametrize(
    ("tool_choice", "allowed"),
    [
        ("required", {"get_weather", "convert"}),
        ({"type": "function", "function": {"name": "convert"}}, {"convert"}),
    ],
)
def test_forced_calls_validate_and_stream_equals_non_stream(
    client: openai.OpenAI, tool_choice: Any, allowed: set[str]
) -> None:
    kw = {"tools": TOOLS, "tool_choice": tool_choice, "logit_bias": END_BIAS, "seed": 1}
    resp = ask(client, **kw)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert not (choice.message.content or "").strip()
    calls = check_calls(choice.message, allowed)
    assert len(calls) >= 1
    content, streamed_calls, finish = streamed(client, **kw)
    assert finish == "tool_calls" and content == (choice.message.content or "")
    assert [c["name"] for c in streamed_calls.values()] == [c.function.name for c in choice.message.tool_calls]
    # byte-identical arguments, whatever the fragmentation; fragments as generated, not in one piece
    assert [c["arguments"] for c in streamed_calls.values()] == [
        c.function.arguments for c in choice.message.tool_calls
    ]
    assert all(c["chunks"] > 1 for c in streamed_calls.values())


def test_streamed_call_on_the_wire(client: openai.OpenAI, live: LiveServer) -> None:
    """Raw SSE: one entry per index per chunk, the opening entry alone, then argument text over several chunks."""
    kw = {"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False, "logit_bias": END_BIAS}
    call = ask(client, **kw).choices[0].message.tool_calls[0]
    body = {"model": MODEL_NAME, "messages": MSGS, "temperature": 0, "max_tokens": 120, "stream": True} | kw
    with live.client() as c:
        raw = c.post("/v1/chat/completions", json=body).text
    events = [json.loads(line[6:]) for line in raw.split("\n\n") if line.startswith("data: {")]
    entries = []
    for event in events:
        (choice,) = event["choices"]
        calls = choice["delta"].get("tool_calls", [])
        assert len(calls) <= 1
        entries += calls
    opening = {"index": 0, "id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": ""}}
    assert entries[0]["id"].startswith("call_") and entries[0] == opening | {"id": entries[0]["id"]}
    fragments = [e["function"]["arguments"] for e in entries[1:]]
    assert all(e == {"index": 0, "function": {"arguments": f}} for e, f in zip(entries[1:], fragments, strict=True))
    assert len(fragments) > 1 and all(fragments) and "".join(fragments) == call.function.arguments


@pytest.mark.parametrize("stream", [False, True])
def test_auto_single_call_when_parallel_is_off(client: openai.OpenAI, stream: bool) -> None:
    kw = {"tools": TOOLS, "tool_choice": "auto", "parallel_tool_calls": False, "logit_bias": CALL_BIAS}
    if stream:
        _, calls, finish = streamed(client, **kw)
        assert len(calls) == 1 and finish == "tool_calls"
        call = next(iter(calls.values()))
        assert call["id"].startswith("call_") and len(call["id"]) >= 21
        assert valid(SCHEMAS[call["name"]], json.loads(call["arguments"]))
    else:
        choice = ask(client, **kw).choices[0]
        assert choice.finish_reason == "tool_calls"
        assert len(check_calls(choice.message, set(SCHEMAS))) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_none_never_calls_even_when_pushed_to(client: openai.OpenAI, stream: bool) -> None:
    kw = {"tools": TOOLS, "tool_choice": "none", "logit_bias": CALL_BIAS, "max_tokens": 12}
    kw |= {"temperature": 1.0, "seed": 0}  # sampled text (greedy on random weights is all newlines)
    if stream:
        content, calls, finish = streamed(client, **kw)
        assert calls == {} and finish in ("stop", "length") and content.strip()
    else:
        choice = ask(client, **kw).choices[0]
        assert not choice.message.tool_calls and choice.finish_reason in ("stop", "length")
        # the banned tag was not generated (unconstrained, the bias would make every token a tag: no text)
        assert (choice.message.content or "").strip() and "<tool_call>" not in (choice.message.content or "")


def test_response_format_json_schema_validates(client: openai.OpenAI) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "conv", "schema": CONVERT, "strict": True}}
    for seed in range(2):
        choice = ask(client, response_format=fmt, temperature=1.0, seed=seed).choices[0]
        assert choice.finish_reason == "stop"
        assert valid(CONVERT, json.loads(choice.message.content or ""))
    content, calls, finish = streamed(client, response_format=fmt)
    assert calls == {} and finish == "stop" and valid(CONVERT, json.loads(content))


def test_response_format_json_object(client: openai.OpenAI, live: LiveServer) -> None:
    with live.client() as c:
        closer, opener = (
            c.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()["tokens"]
            for text in ("}", '{"')
        )
    # nudge the random model to close the (otherwise unbounded) object, and away from a merged `{"` that would
    # open a key it might never close
    bias = {str(closer[-1]): 8} | ({str(opener[0]): -100} if len(opener) == 1 else {})
    choice = ask(client, response_format={"type": "json_object"}, logit_bias=bias).choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(json.loads(choice.message.content or ""), dict)


def test_tools_with_response_format_give_calls_or_json(client: openai.OpenAI) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "conv", "schema": CONVERT}}
    kw = {"tools": TOOLS, "response_format": fmt, "parallel_tool_calls": False}
    choice = ask(client, **kw, logit_bias=CALL_BIAS).choices[0]
    assert choice.finish_reason == "tool_calls" and len(check_calls(choice.message, set(SCHEMAS))) == 1
    choice = ask(client, **kw, logit_bias={str(TOOL_CALL_ID): -100}).choices[0]
    assert not choice.message.tool_calls
    assert valid(CONVERT, json.loads(choice.message.content or ""))


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"not": {"type": "string"}}}}]},
            "tools[0].function.parameters",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "r", "schema": {"type": "string", "pattern": "^(?=a)\\w+$"}},
                }
            },
            "response_format",
        ),
    ],
)
def test_unenforceable_requests_are_400(client: openai.OpenAI, kw: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, **kw)
    assert info.value.status_code == 400
    body: Any = info.value.body
    assert body["param"] == param and body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):  # and before the first byte when streaming
        ask(client, stream=True, **kw)


def test_multi_turn_with_tool_results(client: openai.OpenAI) -> None:
    history: list[Any] = [
        *MSGS,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abcdefghijklmnop1234",
                    "type": "function",
                    "function": {"name": "convert", "arguments": '{"value": 3, "to": "m"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abcdefghijklmnop1234", "content": "3000 m"},
    ]
    plain = ask(client, messages=MSGS, tools=TOOLS, max_tokens=1)
    resp = ask(client, messages=history, tools=TOOLS, max_tokens=8, logit_bias={str(TOOL_CALL_ID): -100})
    assert resp.choices[0].finish_reason in ("stop", "length") and not resp.choices[0].message.tool_calls
    assert resp.usage is not None and plain.usage is not None
    assert resp.usage.prompt_tokens > plain.usage.prompt_tokens + 10  # the call and its result are rendered


def test_required_after_a_bounded_think_block(client: openai.OpenAI) -> None:
    kw = {"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False}
    extra = {"chat_template_kwargs": {"enable_thinking": True}, "max_thinking_tokens": 5}
    resp = ask(client, **kw, extra_body=extra)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and len(check_calls(choice.message, set(SCHEMAS))) == 1
    assert resp.usage is not None and resp.usage.completion_tokens_details is not None
    assert resp.usage.completion_tokens_details.reasoning_tokens == 5  # exactly the budget; tags are not counted


def test_without_tools_the_model_cannot_open_a_call(client: openai.OpenAI) -> None:
    """Even pushed hard towards `<tool_call>`, a request that offers no tools gets plain content, streamed or not."""
    choice = ask(client, logit_bias=CALL_BIAS, max_tokens=16, logprobs=True).choices[0]
    assert not choice.message.tool_calls and choice.finish_reason != "tool_calls"
    sampled = [t.token for t in choice.logprobs.content]
    assert sampled and "<tool_call>" not in sampled and "<tool_call>" not in (choice.message.content or "")
    content, calls, finish = streamed(client, logit_bias=CALL_BIAS, max_tokens=16)
    assert calls == {} and finish != "tool_calls" and "<tool_call>" not in content
