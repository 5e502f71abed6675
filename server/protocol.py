"""OpenAI wire models for requests: the only place that uses OpenAI's field names.

Pydantic models with unknown fields allowed (clients send vendor extras). Validation here is about shapes and
ranges a client can get wrong; every failure becomes a 400 through `server.errors`. Before any field is looked
at, `check_json_text` walks the whole parsed body once: a lone UTF-16 surrogate (JSON's `"\\ud800"`, which Python
parses into a `str` that no tokenizer or UTF-8 encoder accepts) or nesting deeper than `MAX_JSON_DEPTH` (which
would end in a RecursionError in some recursive walker later) is a 400 naming the field. Responses are built as
plain dicts in `server.streaming`, so that the stream and non-stream bodies are byte-for-byte under our control.
This module is not the mapping onto internal names: that is `server.chat`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.errors import BadRequest

MAX_N = 16
MAX_STOP = 16
MAX_TOP_LOGPROBS = 20
# Objects and arrays inside objects and arrays, counted from the body itself. A tool schema nested 10 levels deep
# (OpenAI's limit for structured outputs) uses about 25; the grammar engine gives up near 128.
MAX_JSON_DEPTH = 64

_SURROGATE = re.compile("[\ud800-\udfff]")


def _param(path: tuple[str | int, ...]) -> str:
    """OpenAI's spelling of a field's place in the body: `messages[0].content`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _lone_surrogate(text: str, path: tuple[str | int, ...], *, in_key: bool = False) -> BadRequest:
    found = _SURROGATE.search(text)
    char = f"\\u{ord(found.group()):04x}" if found else "?"
    where = _param(path) or "the body"
    what = "has a key holding" if in_key else "holds"
    return BadRequest(
        f"{where} {what} a lone UTF-16 surrogate ({char}): text must be valid Unicode "
        "(a \\ud800-\\udbff escape must be followed by a \\udc00-\\udfff one)",
        _param(path) or None,
    )


def check_json_text(data: Any) -> Any:
    """Raise BadRequest for a lone surrogate in any string or key, or for nesting deeper than MAX_JSON_DEPTH.

    Iterative (the body may be nested ~1,000 deep: Python's json parser stops there, not before). Returns `data`
    unchanged, so it serves as a `mode="before"` model validator.
    """
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if not value.isascii() and _SURROGATE.search(value):
                raise _lone_surrogate(value, path)
            continue
        if not isinstance(value, dict | list):
            continue
        if len(path) >= MAX_JSON_DEPTH:
            raise BadRequest(
                f"{_param(path)} is nested too deeply: at most {MAX_JSON_DEPTH} levels of objects and arrays",
                _param(path),
            )
        children: list[tuple[Any, tuple[str | int, ...]]] = []
        if isinstance(value, list):
            children = [(item, (*path, i)) for i, item in enumerate(value)]
        else:
            for key, item in value.items():
                if isinstance(key, str) and not key.isascii() and _SURROGATE.search(key):
                    raise _lone_surrogate(key, path, in_key=True)
                children.append((item, (*path, key)))
        stack.extend(reversed(children))  # popped in document order: the first problem is the one reported
    return data


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class RequestBody(WireModel):
    """A whole request body: checked by `check_json_text` before its fields are validated."""

    @model_validator(mode="before")
    @classmethod
    def _check_text(cls, data: Any) -> Any:
        return check_json_text(data)


class StreamOptions(WireModel):
    include_usage: bool = False


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class ImagePart(WireModel):
    """Accepted by the parser so that the error says 'not supported' instead of a shape error."""

    type: Literal["image_url", "input_audio", "file", "refusal"]


class FunctionCall(WireModel):
    name: str
    arguments: str = "{}"


class ToolCall(WireModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart | ImagePart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None

    def text(self) -> str:
        """The message's text, content parts joined; non-text parts are rejected by `server.chat`."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


class FunctionDef(WireModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class ToolDef(WireModel):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(WireModel):
    name: str


class NamedToolChoice(WireModel):
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaSpec(WireModel):
    name: str = "response"
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema object")
        return self


class SamplingFields(RequestBody):
    """Fields shared by /v1/chat/completions and /v1/completions (OpenAI names plus vLLM-style extras)."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # extras (vLLM names)
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    ignore_eos: bool = False

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return [s for s in stops if s]

    @model_validator(mode="after")
    def _check_stop(self) -> SamplingFields:
        if isinstance(self.stop, list) and len(self.stop) > MAX_STOP:
            raise ValueError(f"stop may hold at most {MAX_STOP} strings")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    # reasoning (issue 5)
    ultra_think: bool | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    max_thinking_tokens: int | None = Field(default=None, ge=0)
    # tools and structured output (issue 9)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _check_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and self.top_logprobs > 0 and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs to be true")
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    best_of: int | None = Field(default=None, ge=1, le=MAX_N)
    suffix: str | None = None

    @model_validator(mode="after")
    def _check(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of different from n is not supported")
        if self.suffix:
            raise ValueError("suffix is not supported")
        if isinstance(self.prompt, list) and len(self.prompt) == 0:
            raise ValueError("prompt must not be empty")
        return self


class TokenizeRequest(RequestBody):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool = True

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class DetokenizeRequest(RequestBody):
    model: str | None = None
    tokens: list[int]
