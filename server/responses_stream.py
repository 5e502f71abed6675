"""The Responses API output side: `ChoiceDelta`s -> output items, as SSE events or as one response object.

`OutputBuilder` turns the deltas of the one choice into output items in the order the model wrote them: a
`reasoning` item (its text as `reasoning_text` content; no summary: there is no summarizer), a `message` item
with one `output_text` part, a `function_call` item per call. It returns the events that build each item
(`response.output_item.added`, `response.content_part.added`, `response.output_text.delta`, ...), which the
stream sends and the non-streamed answer drops, so both carry the same items by construction. The framing is
OpenAI's for this API: `event: <type>` and `data: {json}` lines, a `sequence_number` on every event, the stream
opening with `response.created` and `response.in_progress` and ending with `response.completed` (or
`response.incomplete` when max_output_tokens cut it), no `[DONE]`. An error after the first byte is an `error`
event then `response.failed`. This module does not map the request (`server.responses`).
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from server.errors import error_response_for
from server.generation import ChoiceDelta
from server.streaming import Usage

logger = logging.getLogger(__name__)


def item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class OutputBuilder:
    """The output items of one response, built from its deltas; `feed` / `close` return the events."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None  # the item being written: always self.items[-1]

    def _index(self) -> int:
        return len(self.items) - 1

    def _start(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        self.items.append(item)
        self._open = item
        events = [{"type": "response.output_item.added", "output_index": self._index(), "item": _copy(item)}]
        if item["type"] in ("message", "reasoning"):
            part: dict[str, Any] = {"type": "reasoning_text", "text": ""}
            if item["type"] == "message":
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            item["content"].append(part)
            events.append(self._part_event("response.content_part.added", part))
        return events

    def _part_event(self, kind: str, part: dict[str, Any]) -> dict[str, Any]:
        assert self._open is not None
        ids = {"item_id": self._open["id"], "output_index": self._index(), "content_index": 0}
        return {"type": kind, **ids, "part": dict(part)}

    def _text(self, kind: str, text: str) -> list[dict[str, Any]]:
        """Append `text` to the open reasoning / message item, opening one first if another kind is open."""
        events: list[dict[str, Any]] = []
        if self._open is None or self._open["type"] != kind:
            events += self._finish_open("completed")
            item: dict[str, Any] = {"id": item_id("rs" if kind == "reasoning" else "msg"), "type": kind}
            if kind == "reasoning":
                item["summary"] = []
            else:
                item["role"] = "assistant"
            events += self._start({**item, "content": [], "status": "in_progress"})
        assert self._open is not None
        self._open["content"][0]["text"] += text
        name = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        event = {"type": name, "item_id": self._open["id"], "output_index": self._index(), "content_index": 0}
        event["delta"] = text
        if kind == "message":
            event["logprobs"] = []
        return [*events, event]

    def _call(self, entry: dict[str, Any]) -> list[dict[str, Any]]:
        fn = entry.get("function", {})
        events: list[dict[str, Any]] = []
        if "id" in entry:  # a new call: its id, name and no arguments yet
            events += self._finish_open("completed")
            item = {"id": item_id("fc"), "type": "function_call", "call_id": entry["id"], "name": fn.get("name", "")}
            events += self._start({**item, "arguments": "", "status": "in_progress"})
        fragment = fn.get("arguments", "")
        if fragment and self._open is not None and self._open["type"] == "function_call":
            self._open["arguments"] += fragment
            ids = {"item_id": self._open["id"], "output_index": self._index()}
            events.append({"type": "response.function_call_arguments.delta", **ids, "delta": fragment})
        return events

    def feed(self, delta: ChoiceDelta) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if delta.reasoning:
            events += self._text("reasoning", delta.reasoning)
        if delta.content:
            events += self._text("message", delta.content)
        for entry in delta.tool_calls:
            events += self._call(entry)
        return events

    def _finish_open(self, status: str) -> list[dict[str, Any]]:
        item, self._open = self._open, None
        if item is None:
            return []
        ids = {"item_id": item["id"], "output_index": len(self.items) - 1}
        events: list[dict[str, Any]] = []
        if item["type"] == "function_call":
            events.append({"type": "response.function_call_arguments.done", **ids, "arguments": item["arguments"]})
        else:
            part = item["content"][0]
            done = "response.output_text.done" if item["type"] == "message" else "response.reasoning_text.done"
            text_done = {"type": done, **ids, "content_index": 0, "text": part["text"]}
            if item["type"] == "message":
                text_done["logprobs"] = []
            events.append(text_done)
            events.append({"type": "response.content_part.done", **ids, "content_index": 0, "part": dict(part)})
        item["status"] = status
        events.append({"type": "response.output_item.done", "output_index": ids["output_index"], "item": _copy(item)})
        return events

    def close(self, status: str) -> list[dict[str, Any]]:
        """Finish the open item with `status`; a response that produced nothing gets an empty message."""
        events: list[dict[str, Any]] = []
        if not self.items:
            events += self._text("message", "")[:-1]  # the item and its part, no empty delta
        return events + self._finish_open(status)


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(item))
    return out


@dataclass
class ResponsesMeta:
    """What the response object carries besides its output: ids, the request's settings echoed, usage hooks."""

    id: str
    created_at: int
    model: str
    prompt_tokens: int
    echo: dict[str, Any] = field(default_factory=dict)  # instructions, tools, tool_choice, temperature, ...
    on_done: Callable[[Usage], None] | None = None

    def body(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: Usage | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": incomplete,
            "model": self.model,
            "output": output,
            **self.echo,
            "store": False,
            "background": False,
            "previous_response_id": None,
            "truncation": "disabled",
            "usage": _usage(usage, self.prompt_tokens) if usage is not None else None,
        }


def _usage(usage: Usage, prompt_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": prompt_tokens + usage.completion_tokens,
    }


def _status(usage: Usage) -> str:
    return "incomplete" if usage.finish_reasons.get(0) == "length" else "completed"


async def responses_body(meta: ResponsesMeta, deltas: AsyncIterator[ChoiceDelta]) -> dict[str, Any]:
    """The non-streamed response: the same items the stream builds, its events dropped."""
    usage, builder = Usage(), OutputBuilder()
    async for delta in deltas:
        usage.add(delta)
        builder.feed(delta)
    status = _status(usage)
    builder.close(status)
    if meta.on_done is not None:
        meta.on_done(usage)
    return meta.body(status, builder.items, usage)


def _event(obj: dict[str, Any]) -> bytes:
    data = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return f"event: {obj['type']}\ndata: {data}\n\n".encode()


async def responses_stream(meta: ResponsesMeta, deltas: AsyncIterator[ChoiceDelta]) -> AsyncIterator[bytes]:
    """The SSE body of a streamed response; every event numbered in `sequence_number`."""
    seq = itertools.count()

    def event(obj: dict[str, Any]) -> bytes:
        return _event({**obj, "sequence_number": next(seq)})

    usage, builder = Usage(), OutputBuilder()
    yield event({"type": "response.created", "response": meta.body("in_progress", [])})
    yield event({"type": "response.in_progress", "response": meta.body("in_progress", [])})
    try:
        async for delta in deltas:
            usage.add(delta)
            for obj in builder.feed(delta):
                yield event(obj)
        status = _status(usage)
        for obj in builder.close(status):
            yield event(obj)
        if meta.on_done is not None:
            meta.on_done(usage)
        final = "response.completed" if status == "completed" else "response.incomplete"
        yield event({"type": final, "response": meta.body(status, builder.items, usage)})
    except Exception as exc:
        code, envelope, _ = error_response_for(exc)
        err = envelope["error"]
        logger.warning("error after the stream began (status %d): %s", code, err["message"])
        yield event({"type": "error", "code": err["code"], "message": err["message"], "param": err["param"]})
        # response.error.code is one of OpenAI's few codes; our own code is in the error event and in `type`
        kind = "rate_limit_exceeded" if code == 429 else "invalid_prompt" if code < 500 else "server_error"
        failure = {"code": kind, "message": err["message"], "param": err["param"], "type": err["code"]}
        yield event({"type": "response.failed", "response": meta.body("failed", builder.items, usage, failure)})
