"""HTTP routes: chat and legacy completions, models, health / readiness / version, metrics, tokenize / detokenize.

Each handler validates (pydantic wire model, model name, context length), submits every choice to the engine
before the first byte, then hands the merged deltas to `server.streaming` for either SSE or one JSON body.
A client that disconnects, streaming or not, cancels its engine requests. No error mapping here (see
`server.errors`), no sampling or template logic (see `server.chat`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from minigpt_core.custom_template import render_prompt
from minigpt_core.engine_api import EngineLike
from minigpt_core.errors import InvalidRequest
from minigpt_core.output_parser import OutputParser
from minigpt_core.tokenizer import Tokenizer
from server.chat import resolve_max_tokens, sampling_params, start_chat
from server.generation import ChoiceJob, merge_choices, submit_all
from server.metrics import CONTENT_TYPE
from server.openapi import BODY_ERRORS, HEALTH_RESPONSES, STREAMING_OK, HealthStatus, errors, text_response
from server.protocol import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from server.sse import SSEResponse
from server.state import ServerState, package_version
from server.streaming import (
    ResponseMeta,
    Usage,
    chat_response,
    chat_stream,
    completion_response,
    completion_stream,
)

logger = logging.getLogger(__name__)
router = APIRouter()

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


def _serving(request: Request, model: str | None) -> tuple[ServerState, Tokenizer, EngineLike]:
    """What a generation route starts from: the state, the tokenizer and the engine serving `model` (the base model
    or a view of it for an adapter); 503 while loading or draining and 404 for an unknown model, in that order."""
    state = _state(request)
    _, tokenizer = state.require_ready()
    state.check_model(model)
    return state, tokenizer, state.engine_for(model)


def _request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", "")) or f"{time.time_ns():x}"


def _canceller(jobs: Sequence[ChoiceJob]) -> Callable[[], None]:
    def cancel() -> None:
        for job in jobs:
            job.handle.cancel()

    return cancel


def _on_done(state: ServerState, rid: str, prompt_tokens: int, started: float) -> Callable[[Usage], None]:
    def done(usage: Usage) -> None:
        elapsed = time.perf_counter() - started
        state.metrics.count_tokens(prompt=prompt_tokens, generated=usage.completion_tokens)
        state.metrics.observe_e2e(elapsed)
        reasons = ",".join(usage.finish_reasons[i] for i in sorted(usage.finish_reasons))
        logger.info(
            "%s generated: prompt_tokens=%d completion_tokens=%d latency=%.3fs finish=%s",
            rid,
            prompt_tokens,
            usage.completion_tokens,
            elapsed,
            reasons,
        )

    return done


async def _until_disconnect(
    request: Request, work: Coroutine[Any, Any, dict[str, Any]], jobs: Sequence[ChoiceJob]
) -> Response:
    """Run a non-streamed generation, cancelling it if the client goes away first."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return JSONResponse(task.result())
        logger.info("%s client disconnected; generation cancelled", _request_id(request))
        return Response(status_code=499)
    finally:
        _canceller(jobs)()  # first: the engine drops the requests now, not after the tasks have unwound
        for t in (watcher, task):
            t.cancel()
        await asyncio.gather(watcher, task, return_exceptions=True)


@router.post(
    "/v1/chat/completions", response_model=None, responses={**STREAMING_OK, **errors(*BODY_ERRORS, 404, 429, 503)}
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    state, tokenizer, engine = _serving(request, body.model)
    started = time.perf_counter()
    rid = _request_id(request)
    prep, jobs = await start_chat(state, engine, body, tokenizer, rid)
    meta = ResponseMeta(
        id=f"chatcmpl-{rid}",
        created=int(time.time()),
        model=state.served_name(body.model),
        prompt_tokens=len(prep.prompt_ids),
        n_choices=len(jobs),
        token_bytes=tokenizer.token_bytes,
        logprobs=body.logprobs,
        thinking=prep.thinking,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        on_done=_on_done(state, rid, len(prep.prompt_ids), started),
    )
    deltas = merge_choices(jobs, state.metrics, logprobs=meta.logprobs)
    if body.stream:
        return SSEResponse(chat_stream(meta, deltas), _canceller(jobs))
    return await _until_disconnect(request, chat_response(meta, deltas), jobs)


def _completion_prompts(body: CompletionRequest, state: ServerState) -> list[tuple[list[int], str]]:
    """(ids, text) per prompt; token prompts are checked against the vocabulary."""
    assert state.tokenizer is not None
    raw = body.prompt
    items: list[str | list[int]]
    if isinstance(raw, str):
        items = [raw]
    elif raw and all(isinstance(x, int) for x in raw):
        items = [list(raw)]  # type: ignore[arg-type]
    else:
        items = list(raw)  # type: ignore[arg-type]
    out: list[tuple[list[int], str]] = []
    for k, item in enumerate(items):
        if isinstance(item, str):
            ids = state.tokenizer.encode(item)
            text = item
        else:
            if any(not 0 <= t < state.vocab_size for t in item):
                raise InvalidRequest(f"prompt[{k}] holds a token id outside the vocabulary", "prompt")
            ids, text = list(item), state.tokenizer.decode(item)
        if not ids:
            raise InvalidRequest(f"prompt[{k}] is empty", "prompt")
        out.append((ids, text))
    return out


@router.post("/v1/completions", response_model=None, responses={**STREAMING_OK, **errors(*BODY_ERRORS, 404, 429, 503)})
async def completions(body: CompletionRequest, request: Request) -> Response:
    state, tokenizer, engine = _serving(request, body.model)
    started = time.perf_counter()
    prompts = _completion_prompts(body, state)
    longest = max(len(ids) for ids, _ in prompts)
    max_new = resolve_max_tokens(body.max_tokens, longest, state.max_model_len, COMPLETIONS_DEFAULT_MAX_TOKENS)
    top = body.logprobs or 0
    params = sampling_params(
        body,
        max_new_tokens=max_new,
        vocab_size=state.vocab_size,
        defaults=state.defaults,
        logprobs=body.logprobs is not None,
        top_logprobs=top,
    )
    rid = _request_id(request)
    stops = body.stop_list()
    triples = [(p * body.n + j, ids, params[j]) for p, (ids, _) in enumerate(prompts) for j in range(body.n)]

    def make_parser() -> OutputParser:  # plain text: every token's text, tags dropped (logprobs line up with it)
        return OutputParser(tokenizer, thinking=False, parse_tools=False, stops=stops, swallow_think=False)

    jobs = await submit_all(engine, triples, rid, make_parser, param="prompt" if len(prompts) > 1 else "n")
    prompt_tokens = sum(len(ids) for ids, _ in prompts)
    meta = ResponseMeta(
        id=f"cmpl-{rid}",
        created=int(time.time()),
        model=state.served_name(body.model),
        prompt_tokens=prompt_tokens,
        n_choices=len(jobs),
        token_bytes=tokenizer.token_bytes,
        logprobs=body.logprobs is not None,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        prompt_texts=[text for _, text in prompts for _ in range(body.n)] if body.echo else [],
        on_done=_on_done(state, rid, prompt_tokens, started),
    )
    deltas = merge_choices(jobs, state.metrics, logprobs=meta.logprobs)
    if body.stream:
        return SSEResponse(completion_stream(meta, deltas), _canceller(jobs))
    return await _until_disconnect(request, completion_response(meta, deltas), jobs)


def _model_card(state: ServerState, name: str | None = None) -> dict[str, Any]:
    """The base model's card, or an adapter's (as vLLM: `root` its directory, `parent` the base model)."""
    card = {
        "id": name or state.model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "minigpt",
        "root": state.model_name,
        "max_model_len": state.max_model_len or None,
    }
    if name is not None:
        card.update(root=str(state.adapters[name]), parent=state.model_name)
    return card


@router.get("/v1/models", responses=errors(400, 401))
async def list_models(request: Request) -> dict[str, Any]:
    state = _state(request)
    return {"object": "list", "data": [_model_card(state), *(_model_card(state, name) for name in state.adapters)]}


@router.get("/v1/models/{model_id:path}", responses=errors(400, 401, 404))
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    state = _state(request)
    state.check_model(model_id)
    return _model_card(state, model_id if model_id in state.adapters else None)


@router.get("/health", response_model=None, responses=HEALTH_RESPONSES)
async def health(request: Request) -> Response:
    state = _state(request)
    if state.ready:
        return JSONResponse({"status": "ok", "model": state.model_name})
    status = "error" if state.load_error else "loading"
    return JSONResponse({"status": status, "detail": state.load_error}, status_code=503)


READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": HealthStatus, "description": "The model is loaded and new requests are accepted"},
    503: {
        "model": HealthStatus,
        "description": "Not taking new requests: the model is loading (`loading`), failed (`error`), or the server "
        "got SIGTERM and is finishing the requests in flight (`draining`)",
    },
    400: HEALTH_RESPONSES[400],
}


@router.get("/ready", response_model=None, responses=READY_RESPONSES)
async def ready(request: Request) -> Response:
    """Readiness for a load balancer: 200 only while new requests are served (/health stays 200 while draining)."""
    state = _state(request)
    if state.ready and not state.draining:
        return JSONResponse({"status": "ok", "model": state.model_name})
    status = "draining" if state.draining else "error" if state.load_error else "loading"
    return JSONResponse({"status": status, "detail": state.load_error}, status_code=503)


@router.get("/version", responses=errors(400))
async def version() -> dict[str, str]:
    """The server's package version (as vLLM's /version)."""
    return {"version": package_version()}


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: text_response("text/plain", "Prometheus text exposition (format 0.0.4)"), **errors(400, 401)},
)
async def metrics(request: Request) -> Response:
    return Response(_state(request).metrics.render(), media_type=CONTENT_TYPE)


@router.post("/tokenize", responses=errors(*BODY_ERRORS, 404, 503))
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    state = _state(request)
    _, tokenizer = state.require_ready()
    state.check_model(body.model)
    if body.prompt is not None:
        ids = tokenizer.encode(body.prompt)
    else:
        assert body.messages is not None
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        ids = render_prompt(
            messages, add_generation_prompt=body.add_generation_prompt, tokenizer=tokenizer, custom=state.chat_template
        ).ids
    return {"tokens": ids, "count": len(ids), "max_model_len": state.max_model_len}


@router.post("/detokenize", responses=errors(*BODY_ERRORS, 404, 503))
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, Any]:
    state = _state(request)
    _, tokenizer = state.require_ready()
    state.check_model(body.model)
    if any(not 0 <= t < state.vocab_size for t in body.tokens):
        raise InvalidRequest("tokens holds an id outside the vocabulary", "tokens")
    return {"prompt": tokenizer.decode(body.tokens)}
