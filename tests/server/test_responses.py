"""The Responses API (`POST /v1/responses`, issue 21) through the official `openai` SDK against a live uvicorn.

The server runs the shipped DEMO model, so text, reasoning and tool calls are the model's own; a call is forced
where a test needs one (tool_choice "required" / named: the grammar starts the call). A Responses request must
give what the equivalent chat request gives (same prompt tokens, same greedy text): the endpoint is a mapping
onto the chat machinery, and these tests hold it to that. Streamed answers are checked event by event against
the SDK's event types, and against the non-streamed answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pydantic
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from minigpt_core.errors import EngineClosed
from minigpt_core.resources import DEMO_MODEL_DIR
from server.generation import ChoiceDelta
from server.responses_stream import ResponsesMeta, responses_stream
from tests.server.conftest import MODEL_NAME, LiveServer, live_server
from training.datagen.schema_check import schema_errors

pytestmark = pytest.mark.usefixtures("one_thread")

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}
CONVERT = {
    "type": "object",
    "properties": {"value": {"type": "integer", "minimum": 0, "maximum": 99}, "to": {"enum": ["m", "km"]}},
    "required": ["value", "to"],
}
TOOLS: list[Any] = [
    {"type": "function", "name": "get_weather", "description": "Weather in a city", "parameters": WEATHER},
    {"type": "function", "name": "convert", "description": "Convert a length", "parameters": CONVERT},
]
CHAT_TOOLS = [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}} for t in TOOLS]
SCHEMAS = {"get_weather": WEATHER, "convert": CONVERT}
QUESTION = "What is the weather in Paris?"
TAGS = ("<think>", "</think>", "<tool_call>", "</tool_call>")
# the settings a response echoes, as the route fills them for a request that set none
ECHO: dict[str, Any] = {"instructions": None, "max_output_tokens": None, "max_tool_calls": None, "metadata": {}}
ECHO |= {"parallel_tool_calls": True, "reasoning": None, "temperature": 1.0, "top_p": 1.0, "user": None}
ECHO |= {"text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": []}


@pytest.fixture(scope="module")
def demo() -> Iterator[LiveServer]:
    with live_server(Path(DEMO_MODEL_DIR), max_num_seqs=4) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(demo: LiveServer) -> Iterator[openai.OpenAI]:
    with demo.sdk() as c:
        yield c


def respond(client: openai.OpenAI, **kw: Any) -> Any:
    body: dict[str, Any] = {"model": MODEL_NAME, "temperature": 0, "max_output_tokens": 60}
    return client.responses.create(**(body | kw))


def chat(client: openai.OpenAI, messages: list[dict[str, Any]], **kw: Any) -> Any:
    body: dict[str, Any] = {"model": MODEL_NAME, "temperature": 0, "max_tokens": 60}
    return client.chat.completions.create(messages=messages, **(body | kw))  # type: ignore[arg-type]


def events_of(client: openai.OpenAI, **kw: Any) -> list[Any]:
    """Every event of a streamed response, checked for the framing all of them share."""
    events = list(respond(client, stream=True, **kw))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1
    return events


def final(events: list[Any]) -> Any:
    assert events[-1].type in ("response.completed", "response.incomplete")
    return events[-1].response


def check_item_events(events: list[Any]) -> None:
    """Each output item: added -> (part added -> deltas -> done -> part done) or (argument deltas -> done) -> done,
    every delta of the item joining to its final text, and the items of the final response those of the events."""
    done_items = []
    for index in sorted({e.output_index for e in events if hasattr(e, "output_index")}):
        mine = [e for e in events if getattr(e, "output_index", None) == index]
        added, last = mine[0], mine[-1]
        assert added.type == "response.output_item.added" and last.type == "response.output_item.done"
        assert added.item.status == "in_progress" and last.item.id == added.item.id
        kinds = [e.type for e in mine[1:-1]]
        if added.item.type == "function_call":
            assert added.item.arguments == "" and added.item.call_id == last.item.call_id
            deltas = "".join(e.delta for e in mine if e.type == "response.function_call_arguments.delta")
            assert kinds[-1] == "response.function_call_arguments.done" and mine[-2].arguments == deltas
            assert last.item.arguments == deltas
        else:
            text_kind = "output_text" if added.item.type == "message" else "reasoning_text"
            assert kinds[0] == "response.content_part.added" and kinds[-1] == "response.content_part.done"
            assert kinds[-2] == f"response.{text_kind}.done"
            deltas = "".join(e.delta for e in mine if e.type == f"response.{text_kind}.delta")
            assert mine[-3].text == deltas == mine[-2].part.text == last.item.content[0].text
            assert all(e.item_id == added.item.id for e in mine[1:-1])
        done_items.append(last.item)
    assert final(events).output == done_items


def test_plain_text_equals_chat(client: openai.OpenAI) -> None:
    resp = respond(client, input="Who are you?")
    reference = chat(client, [{"role": "user", "content": "Who are you?"}])
    assert resp.object == "response" and resp.id.startswith("resp_") and resp.status == "completed"
    assert resp.output_text == reference.choices[0].message.content and resp.output_text.strip()
    [item] = resp.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert [part.type for part in item.content] == ["output_text"]
    usage = resp.usage
    assert (usage.input_tokens, usage.output_tokens) == (
        reference.usage.prompt_tokens,
        reference.usage.completion_tokens,
    )
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    # A prompt prefix an earlier request left in the KV cache is reused (whole 16-token blocks, never all of it).
    assert 0 <= usage.input_tokens_details.cached_tokens < usage.input_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert resp.store is False and resp.incomplete_details is None and resp.model == MODEL_NAME
    assert resp.temperature == 0 and resp.max_output_tokens == 60 and resp.tools == []


def test_streamed_equals_non_streamed(client: openai.OpenAI) -> None:
    events = events_of(client, input="What is 17 + 25?")
    check_item_events(events)
    whole = respond(client, input="What is 17 + 25?")
    streamed_usage = final(events).usage
    assert final(events).output_text == whole.output_text and streamed_usage is not None and whole.usage is not None
    # The same prompt a second time may be served from the prefix cache: only cached_tokens may differ.
    assert streamed_usage.model_dump(exclude={"input_tokens_details"}) == whole.usage.model_dump(
        exclude={"input_tokens_details"}
    )
    assert whole.usage.input_tokens_details.cached_tokens >= streamed_usage.input_tokens_details.cached_tokens
    with client.responses.stream(model=MODEL_NAME, input="What is 17 + 25?", temperature=0, max_output_tokens=60) as s:
        texts = [e.delta for e in s if e.type == "response.output_text.delta"]
        assert "".join(texts) == s.get_final_response().output_text == whole.output_text


def test_instructions_and_input_items_equal_chat_messages(client: openai.OpenAI) -> None:
    system = "You are a terse assistant."
    history = [
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
        {"role": "developer", "content": "Answer in one line."},
        {"role": "user", "content": "Who are you?"},
    ]
    resp = respond(client, instructions=system, input=history)
    reference = chat(
        client,
        [
            {"role": "system", "content": system},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "developer", "content": "Answer in one line."},
            {"role": "user", "content": "Who are you?"},
        ],
    )
    assert resp.usage.input_tokens == reference.usage.prompt_tokens
    assert resp.output_text == reference.choices[0].message.content
    assert resp.instructions == system
    plain = respond(client, input="Who are you?")
    assert plain.usage.input_tokens < resp.usage.input_tokens  # the instructions and history are in the prompt


def check_call(item: Any, name: str | None = None) -> dict[str, Any]:
    assert item.type == "function_call" and item.status == "completed"
    assert item.call_id.startswith("call_") and item.id.startswith("fc_")
    assert item.name in SCHEMAS and (name is None or item.name == name)
    args = json.loads(item.arguments)
    assert schema_errors(SCHEMAS[item.name], args) == []
    return dict(args)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call_round_trip(client: openai.OpenAI, stream: bool) -> None:
    kw: dict[str, Any] = {"input": QUESTION, "tools": TOOLS[:1], "tool_choice": "required"}
    if stream:
        events = events_of(client, **kw)
        check_item_events(events)
        first = final(events)
        assert any(e.type == "response.function_call_arguments.delta" for e in events)
    else:
        first = respond(client, **kw)
    assert first.status == "completed" and first.tool_choice == "required"
    assert [t.name for t in first.tools] == ["get_weather"] and first.tools[0].type == "function"
    [call] = first.output
    check_call(call, "get_weather")
    result = json.dumps({"city": "Paris", "temp_c": 21, "sky": "sunny"})
    history = [
        {"role": "user", "content": QUESTION},
        call.model_dump(exclude_none=True),  # the output item as it came back
        {"type": "function_call_output", "call_id": call.call_id, "output": result},
    ]
    answer = respond(client, input=history, tools=TOOLS[:1], stream=False)
    reference = chat(
        client,
        [
            {"role": "user", "content": QUESTION},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.call_id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.call_id, "content": result},
        ],
        tools=CHAT_TOOLS[:1],
    )
    assert answer.usage.input_tokens == reference.usage.prompt_tokens
    assert answer.status == "completed"
    if reference.choices[0].message.tool_calls:  # the model chose to call again: the same call, as an item
        assert [o.type for o in answer.output] == ["function_call"]
        assert answer.output[0].arguments == reference.choices[0].message.tool_calls[0].function.arguments
    else:
        assert answer.output_text == reference.choices[0].message.content and answer.output_text.strip()
        assert not any(tag in answer.output_text for tag in TAGS)


@pytest.mark.parametrize("stream", [False, True])
def test_named_tool_choice(client: openai.OpenAI, stream: bool) -> None:
    kw: dict[str, Any] = {
        "input": "Convert 3 km to m",
        "tools": TOOLS,
        "tool_choice": {"type": "function", "name": "convert"},
        "parallel_tool_calls": False,
    }
    resp = final(events_of(client, **kw)) if stream else respond(client, **kw)
    [call] = resp.output
    check_call(call, "convert")
    assert resp.tool_choice.type == "function" and resp.tool_choice.name == "convert"


def test_tool_choice_none_and_allowed_tools(client: openai.OpenAI) -> None:
    none = respond(client, input=QUESTION, tools=TOOLS, tool_choice="none")
    assert [o.type for o in none.output] == ["message"] and not any(t in none.output_text for t in TAGS)
    allowed = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "convert"}]}
    resp = respond(client, input=QUESTION, tools=TOOLS, tool_choice=allowed, parallel_tool_calls=False)
    assert [check_call(o, "convert") for o in resp.output]


class Answer(pydantic.BaseModel):
    city: str
    temperature_c: int


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_text_format_parses(client: openai.OpenAI, stream: bool) -> None:
    schema = Answer.model_json_schema() | {"additionalProperties": False}
    fmt = {"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}}
    resp = final(events_of(client, input=QUESTION, text=fmt)) if stream else respond(client, input=QUESTION, text=fmt)
    assert resp.status == "completed", resp.output_text  # a cut answer would not parse
    Answer.model_validate_json(resp.output_text)
    assert resp.text.format.type == "json_schema" and resp.text.format.name == "answer"
    if not stream:  # the SDK's own structured-output helper, with a pydantic class
        parsed = client.responses.parse(model=MODEL_NAME, input=QUESTION, text_format=Answer, temperature=0)
        assert isinstance(parsed.output_parsed, Answer)


def test_reasoning_effort_gives_a_reasoning_item(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = {"input": "What is 17 + 25?", "reasoning": {"effort": "low"}, "max_output_tokens": 200}
    resp = respond(client, **kw)
    assert [o.type for o in resp.output] == ["reasoning", "message"]
    reasoning = resp.output[0]
    assert reasoning.id.startswith("rs_") and reasoning.summary == []
    assert [c.type for c in reasoning.content] == ["reasoning_text"] and reasoning.content[0].text.strip()
    assert not any(tag in reasoning.content[0].text or tag in resp.output_text for tag in TAGS)
    assert 0 < resp.usage.output_tokens_details.reasoning_tokens < resp.usage.output_tokens
    assert resp.reasoning.effort == "low"
    events = events_of(client, **kw)
    check_item_events(events)
    streamed = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert streamed == reasoning.content[0].text and final(events).output_text == resp.output_text
    # the ultra think option of the chat endpoint gives the same answer
    reference = chat(client, [{"role": "user", "content": "What is 17 + 25?"}], max_tokens=200, reasoning_effort="low")
    assert resp.output_text == reference.choices[0].message.content


def test_minimal_effort_budget_and_no_effort(client: openai.OpenAI) -> None:
    minimal = respond(client, input="Tom has 3 bags of 4 apples. How many apples?", reasoning={"effort": "minimal"})
    assert 0 < minimal.usage.output_tokens_details.reasoning_tokens <= 64
    off = respond(client, input="What is 17 + 25?", reasoning={"effort": "none"})
    assert [o.type for o in off.output] == ["message"] and off.usage.output_tokens_details.reasoning_tokens == 0


def test_reasoning_item_goes_back_as_input(client: openai.OpenAI) -> None:
    """A client that sends the whole output back (reasoning item included) gets a next turn."""
    first = respond(client, input="What is 17 + 25?", reasoning={"effort": "low"}, max_output_tokens=200)
    history = [
        {"role": "user", "content": "What is 17 + 25?"},
        *(o.model_dump(exclude_none=True) for o in first.output),
    ]
    history.append({"role": "user", "content": "And 17 + 26?"})
    second = respond(client, input=history, reasoning={"effort": "low"}, max_output_tokens=200)
    assert second.status == "completed" and second.output_text.strip()
    assert second.usage.input_tokens > first.usage.input_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_max_output_tokens_cut_is_incomplete(client: openai.OpenAI, stream: bool) -> None:
    kw: dict[str, Any] = {"input": "Who are you?", "max_output_tokens": 3}
    if stream:
        events = events_of(client, **kw)
        assert events[-1].type == "response.incomplete"
        check_item_events(events)
        resp = final(events)
    else:
        resp = respond(client, **kw)
    assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"
    assert resp.usage.output_tokens == 3 and resp.output[-1].status == "incomplete"


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def test_previous_response_id_is_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        respond(client, input="Hi", previous_response_id="resp_123")
    err = error_of(info.value)
    assert err["param"] == "previous_response_id" and "stateless" in err["message"]


BAD_INPUTS: list[tuple[dict[str, Any], str]] = [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "name": "bad name!"}]}, "tools[0].name"),
    ({"tools": CHAT_TOOLS}, "tools[0].name"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    (
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
        "input[0].content[0].type",
    ),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [{"type": "computer_call_output", "call_id": "c", "output": {}}]}, "input[0].type"),
    ({"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]}, "input[0].call_id"),
    ({"input": [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "[1]"}]}, "input[0].arguments"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    ({"input": []}, "input"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"temperature": 3}, "temperature"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"max_output_tokens": 100_000}, "input"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"background": True}, "background"),
    ({"truncation": "auto"}, "truncation"),
]


@pytest.mark.parametrize(("extra", "param"), BAD_INPUTS)
def test_bad_input_is_a_400_in_the_envelope(demo: LiveServer, extra: dict[str, Any], param: str) -> None:
    body = {"model": MODEL_NAME, "input": "Hi", "max_output_tokens": 8} | extra
    for stream in (False, True):
        r = httpx.post(demo.base_url + "/responses", json=body | {"stream": stream}, timeout=30)
        assert r.status_code == 400, r.text
        assert r.headers["content-type"].startswith("application/json")
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["param"] == param, err


def test_chat_shaped_tools_get_a_hint(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        respond(client, input=QUESTION, tools=CHAT_TOOLS)
    assert "chat completions shape" in error_of(info.value)["message"]


def test_unknown_model_is_404_and_route_is_documented(demo: LiveServer) -> None:
    r = httpx.post(demo.base_url + "/responses", json={"model": "gpt-9", "input": "Hi"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    doc = httpx.get(demo.url + "/openapi.json", timeout=30).json()
    operation = doc["paths"]["/v1/responses"]["post"]
    assert {"200", "400", "404", "429", "503"} <= set(operation["responses"])
    assert "422" not in operation["responses"]
    metrics = httpx.get(demo.url + "/metrics", timeout=30).text  # counted under its own label, not "other"
    assert 'minigpt_requests_total{endpoint="/v1/responses",status="404"}' in metrics


def running(demo: LiveServer) -> float:
    text = httpx.get(demo.url + "/metrics", timeout=30).text
    match = re.search(r"^minigpt_num_requests_running ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match is not None
    return float(match.group(1))


def test_a_client_that_hangs_up_cancels_its_generation(demo: LiveServer) -> None:
    """Streamed or not, as on the chat route; `ignore_eos` (a chat extra) passes through, so only a cancel ends it."""
    body = {"model": MODEL_NAME, "input": "go", "max_output_tokens": 400, "ignore_eos": True}
    before = demo.engine.stats().generation_tokens_total
    with httpx.Client(base_url=demo.base_url, timeout=30) as c:
        for _ in range(3):
            with c.stream("POST", "/responses", json=body | {"stream": True}) as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
                next(r.iter_raw())  # the first event, then hang up
    with httpx.Client(base_url=demo.base_url, timeout=0.3) as c, contextlib.suppress(httpx.TimeoutException):
        c.post("/responses", json=body)
    assert demo.engine.wait_idle(5)
    assert running(demo) == 0
    assert demo.engine.stats().generation_tokens_total - before < 4 * 400 / 2


STREAM_EVENT = pydantic.TypeAdapter(ResponseStreamEvent)


def raw_events(demo: LiveServer, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The SSE events off the wire: `event: <type>` then `data: {json}`, the two naming the same type."""
    out = []
    with httpx.stream("POST", demo.base_url + "/responses", json=body | {"stream": True}, timeout=60) as r:
        assert r.status_code == 200
        text = r.read().decode()
    for block in text.strip().split("\n\n"):
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        event = json.loads(data.removeprefix("data: "))
        assert event["type"] == name.removeprefix("event: ")
        out.append(event)
    return out


@pytest.mark.parametrize(
    "extra",
    [
        {"input": "Who are you?"},
        {"input": "What is 17 + 25?", "reasoning": {"effort": "minimal"}, "max_output_tokens": 120},
        {"input": QUESTION, "tools": TOOLS, "tool_choice": "required"},
        {"input": "Who are you?", "max_output_tokens": 2},
    ],
    ids=["text", "reasoning", "tools", "incomplete"],
)
def test_wire_shapes_validate_against_the_sdk_types(demo: LiveServer, extra: dict[str, Any]) -> None:
    """Strict validation (not the SDK's lenient construction) of every event and of the non-streamed body."""
    body = {"model": MODEL_NAME, "temperature": 0, "max_output_tokens": 40} | extra
    for event in raw_events(demo, body):
        parsed = STREAM_EVENT.validate_python(event)
        assert parsed.type == event["type"]
    whole = httpx.post(demo.base_url + "/responses", json=body, timeout=60).json()
    Response.model_validate(whole)
    assert whole["store"] is False and whole["previous_response_id"] is None


def test_an_error_after_the_first_byte_is_an_error_event_then_failed() -> None:
    """The engine going away mid-answer (EngineClosed: a 503 before the first byte) ends the stream in-band."""

    async def deltas() -> AsyncIterator[ChoiceDelta]:
        yield ChoiceDelta(0, content="Hel", completion_tokens=1)
        raise EngineClosed("the server is shutting down")

    meta = ResponsesMeta(id="resp_1", created_at=0, model=MODEL_NAME, prompt_tokens=3, echo=ECHO)

    async def collect() -> list[str]:
        return [chunk.decode() async for chunk in responses_stream(meta, deltas())]

    chunks = asyncio.run(collect())
    events = [STREAM_EVENT.validate_python(json.loads(c.split("\ndata: ")[1])) for c in chunks]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    error, failed = events[-2:]
    assert error.code == "engine_closed" and "shutting down" in error.message
    assert failed.response.status == "failed" and failed.response.error.message == error.message
    assert failed.response.error.code == "server_error"  # OpenAI's code for a 5xx; ours is in the error event
    assert failed.response.output[0].content[0].text == "Hel"  # what was sent before the failure
