"""Wire formatting of `ChoiceDelta`s: SSE chunks for `stream: true`, and the accumulated non-stream body.

Both shapes are built from the same deltas (`server.generation`), so a streamed answer and a non-streamed one
carry the same text, tool calls, logprobs and usage by construction. SSE framing is exactly OpenAI's:
`data: {json}\\n\\n` lines, no `event:` names, the same `id` / `created` / `model` on every chunk, `role` in
the first delta of each choice, `finish_reason` once per choice, an optional usage chunk with `choices: []`,
then `data: [DONE]`. An error after the first byte becomes a final `data: {"error": ...}` event. A tool call
streams as OpenAI's do: one entry per chunk, the first with `id`, `type`, the name and `arguments: ""`, then the
argument text in the pieces the model wrote it. /v1/completions logprobs agree with the text: `tokens` join to
it and `text_offset` points into it (a tag is "" there, as it is absent from the text; see `TokenTexts`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from minigpt_core.detokenizer import IncrementalDetokenizer
from minigpt_core.tokenizer import NUM_SPECIAL
from server.errors import error_response_for
from server.generation import ChoiceDelta, TokenLogprob

logger = logging.getLogger(__name__)

DONE_LINE = b"data: [DONE]\n\n"
# One encoder for every event: `json.dumps` with options builds a new JSONEncoder on each call.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def sse(obj: Any) -> bytes:
    return b"data: " + _encode(obj).encode() + b"\n\n"


@dataclass
class ResponseMeta:
    """What every chunk of one response shares, plus what its usage needs."""

    id: str
    created: int
    model: str
    prompt_tokens: int
    n_choices: int
    token_bytes: Callable[[int], bytes]
    logprobs: bool = False
    thinking: bool = False
    include_usage: bool = False
    prompt_texts: list[str] = field(default_factory=list)  # /v1/completions echo, per choice
    on_done: Callable[[Usage], None] | None = None  # logging / metrics once the last delta is in
    _frames: dict[str, tuple[bytes, bytes]] = field(default_factory=dict, repr=False)

    def done(self, usage: Usage) -> None:
        if self.on_done is not None:
            self.on_done(usage)

    def frame(self, obj: str) -> tuple[bytes, bytes]:
        """The bytes around `choices` in every chunk of this response: `data: {"id":...,"choices":` and the
        rest (`,"usage":null}` when usage was asked for), computed once so that an event encodes only its
        choices."""
        frame = self._frames.get(obj)
        if frame is None:
            head = {"id": self.id, "object": obj, "created": self.created, "model": self.model}
            prefix = b"data: " + _encode(head).encode()[:-1] + b',"system_fingerprint":null,"choices":'
            suffix = b',"usage":null}\n\n' if self.include_usage else b"}\n\n"
            frame = self._frames[obj] = (prefix, suffix)
        return frame


@dataclass
class Usage:
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0  # of the prompt (counted once, like prompt_tokens, whatever n is)
    finish_reasons: dict[int, str] = field(default_factory=dict)

    def add(self, delta: ChoiceDelta) -> None:
        self.completion_tokens += delta.completion_tokens
        self.cached_tokens = max(self.cached_tokens, delta.cached_tokens)
        self.reasoning_tokens += delta.reasoning_tokens
        if delta.finish_reason is not None:
            self.finish_reasons[delta.index] = delta.finish_reason

    def body(self, prompt_tokens: int) -> dict[str, Any]:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }


# --- logprobs ------------------------------------------------------------------------------------------
def _token_entry(token_bytes: Callable[[int], bytes], token_id: int, logprob: float) -> dict[str, Any]:
    raw = token_bytes(token_id)
    return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}


def chat_logprobs(meta: ResponseMeta, items: list[TokenLogprob]) -> dict[str, Any]:
    content = []
    for item in items:
        entry = _token_entry(meta.token_bytes, item.token_id, item.logprob)
        entry["top_logprobs"] = [_token_entry(meta.token_bytes, t, lp) for t, lp in item.top]
        content.append(entry)
    return {"content": content}


class TokenTexts:
    """One /v1/completions choice: the piece of `text` each generated token accounts for, and where it starts.

    Built so that `"".join(tokens) == text` and `text[text_offset[i]:][: len(tokens[i])] == tokens[i]`: it
    decodes like the parser does (whole characters; a tag adds no text and ends a partial character), so a
    token carries the characters it completes ("" for a tag, or for the first bytes of a split character).
    A token is released once the text it adds has been sent (the parser holds back what may become a stop
    string); at the end, text that a stop string cut is cut from the last tokens too.
    """

    def __init__(self, token_bytes: Callable[[int], bytes], start: int) -> None:
        self._detok = IncrementalDetokenizer(token_bytes)
        self._pending: list[tuple[TokenLogprob, str, bool]] = []  # (token, its text, inside a partial char)
        self._offset = start  # where the next released token's text starts (after any echoed prompt)
        self._sent = start  # end of the text sent so far

    def add(self, items: list[TokenLogprob]) -> None:
        for item in items:
            piece = self._detok.flush() if item.token_id < NUM_SPECIAL else self._detok.push(item.token_id)
            self._pending.append((item, piece, self._detok.has_pending))

    def release(self, text: str, *, final: bool) -> list[tuple[TokenLogprob, str, int]]:
        """`text` was just sent; the tokens it completes as (token, its text, text offset)."""
        self._sent += len(text)
        limit = len(self._pending)
        if final:
            tail = self._detok.flush()  # a character cut by the end: U+FFFD, as the parser emits it
            if tail and self._pending:
                item, piece, _ = self._pending[-1]
                self._pending[-1] = (item, piece + tail, False)
        elif self._detok.has_pending:  # the tokens of a character still incomplete wait for it
            while limit and self._pending[limit - 1][2]:
                limit -= 1
        out: list[tuple[TokenLogprob, str, int]] = []
        for item, piece, _ in self._pending[:limit]:
            if self._offset + len(piece) > self._sent:
                if not final:
                    break
                piece = piece[: max(0, self._sent - self._offset)]
            out.append((item, piece, self._offset))
            self._offset += len(piece)
        del self._pending[: len(out)]
        return out


def completion_logprobs(meta: ResponseMeta, tokens: list[tuple[TokenLogprob, str, int]]) -> dict[str, Any]:
    """Legacy /v1/completions logprobs: tokens, token_logprobs, top_logprobs (dicts), text_offset.

    `tokens` comes from `TokenTexts.release`; the alternatives in top_logprobs are keyed by their own text.
    """
    out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for item, token, offset in tokens:
        out["tokens"].append(token)
        out["token_logprobs"].append(item.logprob)
        tops = {meta.token_bytes(t).decode("utf-8", errors="replace"): lp for t, lp in item.top}
        out["top_logprobs"].append(tops)
        out["text_offset"].append(offset)
    return out


# --- chat completions ------------------------------------------------------------------------------------
def _chunk(meta: ResponseMeta, obj: str, choices: list[dict[str, Any]], usage: Any = None) -> bytes:
    """One SSE event of a stream: the same id, created and model on every chunk; usage only when asked for."""
    prefix, suffix = meta.frame(obj)
    if usage is not None and meta.include_usage:
        suffix = b',"usage":' + _encode(usage).encode() + b"}\n\n"
    return prefix + _encode(choices).encode() + suffix


def _chat_chunk(meta: ResponseMeta, choices: list[dict[str, Any]], usage: Any = None) -> bytes:
    return _chunk(meta, "chat.completion.chunk", choices, usage)


def _tool_call_entries(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A delta's tool-call entries with the argument fragments of one call run together (copies).

    The opening entry of a call (it carries `id`) keeps `arguments: ""`, as OpenAI's does: fragments that came
    with it in the same delta go into the entry after it.
    """
    out: list[dict[str, Any]] = []
    for call in calls:
        prev = out[-1] if out else None
        if prev is not None and "id" not in prev and "id" not in call and prev["index"] == call["index"]:
            prev["function"]["arguments"] += call["function"].get("arguments", "")
        else:
            out.append({**call, "function": dict(call["function"])})
    return out


def _chat_deltas(delta: ChoiceDelta) -> list[dict[str, Any]]:
    """The `delta` objects of the chunks one ChoiceDelta becomes: text first, then one tool-call entry each.

    One entry per chunk keeps OpenAI's shape (never two entries for one index in a chunk; the entry with the
    id and name comes alone, before any argument text) whatever the engine batched into one delta.
    """
    first: dict[str, Any] = {}
    if delta.reasoning:
        first["reasoning_content"] = delta.reasoning
        first["reasoning"] = delta.reasoning
    if delta.content:
        first["content"] = delta.content
    entries = _tool_call_entries(delta.tool_calls)
    if not entries:
        return [first] if first else []
    return [first | {"tool_calls": entries[:1]}, *({"tool_calls": [e]} for e in entries[1:])]


async def _chat_chunks(
    meta: ResponseMeta, deltas: AsyncIterator[ChoiceDelta], usage: Usage
) -> AsyncGenerator[bytes, None]:
    pending: dict[int, list[TokenLogprob]] = {i: [] for i in range(meta.n_choices)}
    for i in range(meta.n_choices):
        first = {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        yield _chat_chunk(meta, [first])
    async for delta in deltas:
        usage.add(delta)
        pending[delta.index].extend(delta.logprobs)
        bodies = _chat_deltas(delta)
        if not bodies and delta.finish_reason is None and pending[delta.index] and meta.logprobs:
            bodies = [{}]
        for k, body in enumerate(bodies):  # this step's logprobs ride on its first chunk
            lp = None
            if meta.logprobs and k == 0:
                lp, pending[delta.index] = chat_logprobs(meta, pending[delta.index]), []
            choice = {"index": delta.index, "delta": body, "logprobs": lp, "finish_reason": None}
            yield _chat_chunk(meta, [choice])
        if delta.finish_reason is not None:
            rest = pending.pop(delta.index, [])
            lp = chat_logprobs(meta, rest) if meta.logprobs and rest else None
            pending[delta.index] = []
            choice = {"index": delta.index, "delta": {}, "logprobs": lp, "finish_reason": delta.finish_reason}
            yield _chat_chunk(meta, [choice])


def chat_stream(meta: ResponseMeta, deltas: AsyncIterator[ChoiceDelta]) -> AsyncIterator[bytes]:
    """SSE body of a streamed chat completion."""
    return _framed(meta, deltas, _chat_chunks, _chat_chunk)


@dataclass
class _ChatChoice:
    reasoning: str = ""
    content: str = ""
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str = "stop"

    def add(self, delta: ChoiceDelta) -> None:
        self.reasoning += delta.reasoning
        self.content += delta.content
        self.logprobs.extend(delta.logprobs)
        for call in delta.tool_calls:
            slot = self.tool_calls.setdefault(
                call["index"], {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
            )
            slot["id"] = call.get("id", slot["id"])
            fn = call.get("function", {})
            slot["function"]["name"] += fn.get("name", "")
            slot["function"]["arguments"] += fn.get("arguments", "")
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason


async def chat_response(meta: ResponseMeta, deltas: AsyncIterator[ChoiceDelta]) -> dict[str, Any]:
    """Non-streamed chat completion: the same deltas, accumulated."""
    usage = Usage()
    choices = [_ChatChoice() for _ in range(meta.n_choices)]
    async for delta in deltas:
        usage.add(delta)
        choices[delta.index].add(delta)
    meta.done(usage)
    out = []
    for i, c in enumerate(choices):
        message: dict[str, Any] = {"role": "assistant", "content": c.content}
        if c.tool_calls:
            message["tool_calls"] = [c.tool_calls[k] for k in sorted(c.tool_calls)]
            message["content"] = c.content or None
        if meta.thinking:
            message["reasoning_content"] = c.reasoning
            message["reasoning"] = c.reasoning
        lp = chat_logprobs(meta, c.logprobs) if meta.logprobs else None
        out.append({"index": i, "message": message, "logprobs": lp, "finish_reason": c.finish_reason})
    return {
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": None,
        "choices": out,
        "usage": usage.body(meta.prompt_tokens),
    }


# --- legacy completions -----------------------------------------------------------------------------------
def _completion_chunk(meta: ResponseMeta, choices: list[dict[str, Any]], usage: Any = None) -> bytes:
    return _chunk(meta, "text_completion", choices, usage)


def _echo_texts(meta: ResponseMeta) -> list[str]:
    return [meta.prompt_texts[i] if i < len(meta.prompt_texts) else "" for i in range(meta.n_choices)]


async def _completion_chunks(
    meta: ResponseMeta, deltas: AsyncIterator[ChoiceDelta], usage: Usage
) -> AsyncGenerator[bytes, None]:
    echoes = _echo_texts(meta)
    token_texts = [TokenTexts(meta.token_bytes, len(echo)) for echo in echoes]
    for i, text in enumerate(echoes):
        if text:
            yield _completion_chunk(meta, [{"index": i, "text": text, "logprobs": None, "finish_reason": None}])
    async for delta in deltas:
        usage.add(delta)
        text = delta.reasoning + delta.content
        lp = None
        if meta.logprobs:
            token_texts[delta.index].add(delta.logprobs)
            released = token_texts[delta.index].release(text, final=delta.finish_reason is not None)
            lp = completion_logprobs(meta, released)
        if text or delta.finish_reason is not None or (lp and lp["tokens"]):
            choice = {"index": delta.index, "text": text, "logprobs": lp, "finish_reason": delta.finish_reason}
            yield _completion_chunk(meta, [choice])


def completion_stream(meta: ResponseMeta, deltas: AsyncIterator[ChoiceDelta]) -> AsyncIterator[bytes]:
    """SSE body of a streamed legacy completion."""
    return _framed(meta, deltas, _completion_chunks, _completion_chunk)


async def completion_response(meta: ResponseMeta, deltas: AsyncIterator[ChoiceDelta]) -> dict[str, Any]:
    usage = Usage()
    echoes = _echo_texts(meta)
    texts = list(echoes)
    lps: list[list[TokenLogprob]] = [[] for _ in range(meta.n_choices)]
    async for delta in deltas:
        usage.add(delta)
        texts[delta.index] += delta.reasoning + delta.content
        lps[delta.index].extend(delta.logprobs)
    meta.done(usage)
    choices = []
    for i in range(meta.n_choices):
        lp = None
        if meta.logprobs:
            token_texts = TokenTexts(meta.token_bytes, len(echoes[i]))
            token_texts.add(lps[i])
            lp = completion_logprobs(meta, token_texts.release(texts[i][len(echoes[i]) :], final=True))
        reason = usage.finish_reasons.get(i, "stop")
        choices.append({"index": i, "text": texts[i], "logprobs": lp, "finish_reason": reason})
    return {
        "id": meta.id,
        "object": "text_completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": usage.body(meta.prompt_tokens),
    }


async def _framed(
    meta: ResponseMeta,
    deltas: AsyncIterator[ChoiceDelta],
    chunks_of: Callable[[ResponseMeta, AsyncIterator[ChoiceDelta], Usage], AsyncGenerator[bytes, None]],
    chunk: Callable[[ResponseMeta, list[dict[str, Any]], Any], bytes],
) -> AsyncIterator[bytes]:
    """The frame of the chat and completion streams: the chunks `chunks_of` makes; at the end `meta.done` (metrics,
    the log line) and, when the client asked for it (`stream_options.include_usage`), a last chunk without choices
    that carries the usage; an error after the first byte becomes a last `data: {"error": ...}` event; then
    `[DONE]`. The usage chunk or the error event comes in one piece with `[DONE]` (one send for the end)."""
    usage = Usage()
    chunks = chunks_of(meta, deltas, usage)  # they add every delta to `usage`
    tail = DONE_LINE
    async with contextlib.aclosing(chunks):
        try:
            async for line in chunks:
                yield line
            meta.done(usage)
            if meta.include_usage:
                tail = chunk(meta, [], usage.body(meta.prompt_tokens)) + DONE_LINE
        except Exception as exc:
            tail = _stream_error(exc) + DONE_LINE
    yield tail


def _stream_error(exc: BaseException) -> bytes:
    status, body, _ = error_response_for(exc)
    logger.warning("error after the stream began (status %d): %s", status, body["error"]["message"])
    return sse(body)
