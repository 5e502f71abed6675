"""The `POST /v1/responses` route: a Responses request run through the chat endpoint's machinery.

The request is mapped onto a chat request (`server.responses.to_chat`) and started by `server.chat.start_chat`, as
a chat request is: prepared in a worker thread and submitted before the first byte (so bad input is a 400 and a
full queue a 429 exactly as on /v1/chat/completions), and its deltas are written by `server.responses_stream`.
A client that disconnects cancels its engine request, streaming or not (the chat route's helpers). One output
per request: Responses has no `n`.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from minigpt_core.errors import InvalidRequest
from server.chat import start_chat
from server.generation import merge_choices
from server.openapi import BODY_ERRORS, STREAMING_OK, errors
from server.responses import ResponsesRequest, echo_tools, to_chat
from server.responses_stream import ResponsesMeta, responses_body, responses_stream
from server.routes import _canceller, _on_done, _request_id, _serving, _until_disconnect
from server.sse import SSEResponse

router = APIRouter()


def _echo(body: ResponsesRequest, defaults: dict[str, float]) -> dict[str, Any]:
    """The request's settings as the response object repeats them."""
    fmt = body.text.format if body.text is not None else None
    choice = body.tool_choice if body.tool_choice is not None else "auto"
    effort = (body.reasoning.effort or "medium") if body.reasoning is not None else None
    return {
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "max_tool_calls": body.max_tool_calls,
        "metadata": body.metadata or {},
        "parallel_tool_calls": body.parallel_tool_calls,
        "reasoning": {"effort": effort, "summary": body.reasoning.summary} if body.reasoning is not None else None,
        "temperature": body.temperature if body.temperature is not None else defaults.get("temperature", 1.0),
        "top_p": body.top_p if body.top_p is not None else defaults.get("top_p", 1.0),
        "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
        "tool_choice": choice,
        "tools": echo_tools(body),
        "user": body.user,
    }


@router.post("/v1/responses", response_model=None, responses={**STREAMING_OK, **errors(*BODY_ERRORS, 404, 429, 503)})
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    """OpenAI's Responses API, stateless: text, function tools, reasoning, JSON schema output, streaming."""
    state, tokenizer, engine = _serving(request, body.model)  # as the chat route starts
    started = time.perf_counter()
    chat = to_chat(body)
    rid = _request_id(request)
    try:
        prep, jobs = await start_chat(state, engine, chat, tokenizer, rid)
    except InvalidRequest as exc:  # the chat request's `messages` are this request's `input`
        if exc.param is not None and exc.param.startswith("messages"):
            exc.param = "input"
        raise
    meta = ResponsesMeta(
        id=f"resp_{rid}",
        created_at=int(time.time()),
        model=state.served_name(body.model),
        prompt_tokens=len(prep.prompt_ids),
        echo=_echo(body, state.defaults),
        on_done=_on_done(state, rid, len(prep.prompt_ids), started),
    )
    deltas = merge_choices(jobs, state.metrics, logprobs=False)  # the output_text parts carry `logprobs: []`
    if body.stream:
        return SSEResponse(responses_stream(meta, deltas), _canceller(jobs))
    return await _until_disconnect(request, responses_body(meta, deltas), jobs)
