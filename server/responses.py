"""The Responses API (`POST /v1/responses`) request side: its wire model and the mapping onto a chat request.

A Responses request becomes the `ChatCompletionRequest` that /v1/chat/completions takes: `instructions` and the
`input` items become chat messages (`function_call` items the assistant's tool calls, `function_call_output`
items tool messages, a `reasoning` item the next assistant turn's reasoning), the flat function tools become chat
tools, `text.format` becomes `response_format` and `reasoning.effort` becomes `reasoning_effort`. So
`server.chat.prepare_chat` does the template, the context-length check, the grammar constraints and thinking for
both endpoints alike. Stateless: nothing is stored; `previous_response_id`, `conversation`, `background` and item
references are a 400 that says so. This module is not the output side (`server.responses_stream`) nor the route
(`server.responses_route`).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from minigpt_core.errors import InvalidRequest
from server.errors import BadRequest
from server.protocol import MAX_TOP_LOGPROBS, ChatCompletionRequest, FunctionDef, RequestBody, WireModel

# Chat-request extras (vLLM / MiniGPT names) that a Responses request may carry too, passed through unchanged.
CHAT_EXTRAS = (
    "seed",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "stop",
    "ignore_eos",
    "ultra_think",
    "max_thinking_tokens",
    "chat_template_kwargs",
)
# Responses' effort scale onto the chat one (server.chat.EFFORT_BUDGETS); the two above "high" are "high" here.
EFFORTS = {"none": "none", "minimal": "minimal", "low": "low", "medium": "medium", "high": "high"}
EFFORTS |= {"xhigh": "high", "max": "high"}
STATELESS = "this server is stateless and stores no responses: send the whole conversation in `input`"


class ReasoningConfig(WireModel):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class TextFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> TextFormat:
        if self.type == "json_schema" and self.schema_ is None:
            raise BadRequest("text.format of type json_schema needs a `schema`", "text.format.schema")
        return self


class TextConfig(WireModel):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(RequestBody):
    """`POST /v1/responses` (OpenAI's names). `input` items and `tools` are checked item by item in `to_chat`."""

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    max_tool_calls: int | None = Field(default=None, ge=1)
    reasoning: ReasoningConfig | None = None
    text: TextConfig | None = None
    stream: bool = False
    store: bool | None = None
    metadata: dict[str, str] | None = None
    include: list[str] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None
    # stateful features, each refused with a 400 that names it
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None
    prompt: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> ResponsesRequest:
        if self.previous_response_id is not None:
            raise BadRequest(f"previous_response_id is not supported: {STATELESS}", "previous_response_id")
        if self.conversation is not None:
            raise BadRequest(f"conversation is not supported: {STATELESS}", "conversation")
        if self.background:
            raise BadRequest("background responses are not supported: this server answers in the request", "background")
        if self.prompt is not None:
            raise BadRequest("stored prompt templates are not supported: send instructions and input", "prompt")
        if self.truncation == "auto":
            raise BadRequest(
                'truncation "auto" is not supported: a prompt over the context length is a 400, never cut',
                "truncation",
            )
        if (self.top_logprobs or 0) > 0 or "message.output_text.logprobs" in (self.include or []):
            raise BadRequest("logprobs are not supported on /v1/responses; use /v1/chat/completions", "top_logprobs")
        if isinstance(self.input, list) and not self.input:
            raise BadRequest("input must not be an empty list", "input")
        return self

    def function_tools(self) -> list[FunctionDef]:
        """The tools as validated function definitions; any other tool type is a 400 naming it."""
        out: list[FunctionDef] = []
        for i, tool in enumerate(self.tools or []):
            kind = tool.get("type")
            if kind != "function":
                raise InvalidRequest(
                    f"tools[{i}] has type {kind!r}, which this server does not support: "
                    'only function tools ({"type": "function", "name": ..., "parameters": ...}) run here',
                    f"tools[{i}].type",
                )
            if "name" not in tool and isinstance(tool.get("function"), dict):
                raise InvalidRequest(
                    f"tools[{i}] has the chat completions shape; /v1/responses takes function tools flat: "
                    '{"type": "function", "name": ..., "parameters": ...}',
                    f"tools[{i}].name",
                )
            fields = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
            try:
                out.append(FunctionDef.model_validate(fields))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise InvalidRequest(f"tools[{i}].{where}: {first['msg']}", f"tools[{i}].{where}") from None
        return out


# --- input items -> chat messages -------------------------------------------------------------------------
def _text_parts(content: Any, param: str) -> str | list[dict[str, str]]:
    """A message's content as chat text parts: a string, or input_text / output_text / refusal parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{param} must be a string or a list of content parts", param)
    parts: list[dict[str, str]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        key = {"input_text": "text", "output_text": "text", "refusal": "refusal"}.get(kind) if kind else None
        if key is None:
            raise InvalidRequest(
                f"{param}[{j}] has type {kind!r}: only text content (input_text, output_text) is supported",
                f"{param}[{j}].type",
            )
        text = part.get(key)
        if not isinstance(text, str):
            raise InvalidRequest(f"{param}[{j}].{key} must be a string", f"{param}[{j}].{key}")
        parts.append({"type": "text", "text": text})
    return parts


def _string(item: dict[str, Any], key: str, param: str, *, empty: bool = False) -> str:
    value = item.get(key)
    if not isinstance(value, str) or (not empty and not value):
        raise InvalidRequest(f"{param}.{key} must be a {'' if empty else 'non-empty '}string", f"{param}.{key}")
    return value


def _call_arguments(item: dict[str, Any], param: str) -> str:
    args = _string(item, "arguments", param, empty=True) or "{}"
    try:
        parsed = json.loads(args)
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        raise InvalidRequest(f"{param}.arguments must be a JSON object in a string", f"{param}.arguments")
    return args


def _reasoning_text(item: dict[str, Any], param: str) -> str:
    """A reasoning item's text: its reasoning_text content, else its summary (what a client sends back)."""
    texts: list[str] = []
    for key in ("content", "summary"):
        parts = item.get(key) or []
        if not isinstance(parts, list):
            raise InvalidRequest(f"{param}.{key} must be a list", f"{param}.{key}")
        texts = [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]
        if texts:
            break
    return "\n".join(texts)


class _Messages:
    """Chat messages built item by item; consecutive assistant output merges into one assistant turn."""

    def __init__(self) -> None:
        self.out: list[dict[str, Any]] = []
        self.call_ids: set[str] = set()
        self.reasoning: str | None = None  # from a reasoning item, for the assistant turn that follows it
        self.open_assistant = False  # the last message is assistant output that a function_call may join

    def add(self, message: dict[str, Any]) -> None:
        if message["role"] == "assistant" and self.reasoning:
            message["reasoning_content"] = self.reasoning
            self.reasoning = None
        self.out.append(message)
        self.open_assistant = message["role"] == "assistant"

    def message(self, item: dict[str, Any], param: str) -> None:
        role = item.get("role")
        if role not in ("user", "system", "developer", "assistant"):
            raise InvalidRequest(
                f"{param}.role must be one of user, system, developer, assistant; got {role!r}", f"{param}.role"
            )
        self.add({"role": role, "content": _text_parts(item.get("content"), f"{param}.content")})

    def function_call(self, item: dict[str, Any], param: str) -> None:
        call_id = _string(item, "call_id", param)
        call = {
            "id": call_id,
            "type": "function",
            "function": {"name": _string(item, "name", param), "arguments": _call_arguments(item, param)},
        }
        self.call_ids.add(call_id)
        if self.open_assistant and not self.reasoning:
            self.out[-1].setdefault("tool_calls", []).append(call)
        else:
            self.add({"role": "assistant", "content": None, "tool_calls": [call]})

    def function_call_output(self, item: dict[str, Any], param: str) -> None:
        call_id = _string(item, "call_id", param)
        if call_id not in self.call_ids:
            raise InvalidRequest(
                f"{param}.call_id {call_id!r} answers no function_call item before it in input", f"{param}.call_id"
            )
        content = _text_parts(item.get("output"), f"{param}.output")
        self.add({"role": "tool", "tool_call_id": call_id, "content": content})


def input_messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    """`instructions` + `input` as chat messages (dicts in the chat wire shape). Raises InvalidRequest."""
    msgs = _Messages()
    if req.instructions:
        msgs.add({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        msgs.add({"role": "user", "content": req.input})
        return msgs.out
    for i, item in enumerate(req.input):
        param = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            msgs.message(item, param)
        elif kind == "function_call":
            msgs.function_call(item, param)
        elif kind == "function_call_output":
            msgs.function_call_output(item, param)
        elif kind == "reasoning":
            msgs.reasoning = _reasoning_text(item, param) or None
        elif kind == "item_reference":
            raise InvalidRequest(f"{param}: item references are not supported: {STATELESS}", f"{param}.type")
        else:
            raise InvalidRequest(
                f"{param} has type {kind!r}, which this server does not support "
                "(message, function_call, function_call_output and reasoning items are)",
                f"{param}.type",
            )
    if not any(m["role"] != "system" and m["role"] != "developer" for m in msgs.out):
        raise InvalidRequest("input holds no user, assistant or tool item to answer", "input")
    return msgs.out


# --- the whole request -> ChatCompletionRequest ----------------------------------------------------------------
def _tool_choice(req: ResponsesRequest, names: list[str]) -> tuple[Any, list[str] | None]:
    """(chat tool_choice, the tool names it allows or None for all) from Responses' tool_choice."""
    choice = req.tool_choice
    if choice is None or isinstance(choice, str):
        return choice, None
    kind = choice.get("type")
    if kind == "function":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest('tool_choice {"type": "function"} needs a `name`', "tool_choice.name")
        return {"type": "function", "function": {"name": name}}, None
    if kind == "allowed_tools":
        mode, allowed = choice.get("mode", "auto"), choice.get("tools")
        if mode not in ("auto", "required") or not isinstance(allowed, list) or not allowed:
            raise InvalidRequest(
                'tool_choice {"type": "allowed_tools"} needs mode "auto" or "required" and a non-empty tools list',
                "tool_choice",
            )
        picked = [t.get("name") for t in allowed if isinstance(t, dict) and t.get("type") == "function"]
        unknown = [n for n in picked if n not in names]
        if len(picked) != len(allowed) or unknown:
            raise InvalidRequest(
                "tool_choice.tools must name function tools given in tools"
                + (f"; unknown: {', '.join(map(str, unknown))}" if unknown else ""),
                "tool_choice.tools",
            )
        return mode, [str(n) for n in picked]
    raise InvalidRequest(
        f"tool_choice of type {kind!r} is not supported: use none, auto, required, "
        '{"type": "function", "name": ...} or {"type": "allowed_tools", ...}',
        "tool_choice",
    )


def _response_format(req: ResponsesRequest) -> dict[str, Any] | None:
    fmt = req.text.format if req.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": fmt.name or "response", "schema": fmt.schema_}}


def reasoning_effort(req: ResponsesRequest) -> str | None:
    """The chat reasoning_effort: `reasoning` given without an effort means medium (as OpenAI's models default)."""
    if req.reasoning is None:
        return None
    return EFFORTS[req.reasoning.effort or "medium"]


def to_chat(req: ResponsesRequest) -> ChatCompletionRequest:
    """The chat request that generates this response. Raises InvalidRequest / ValidationError (both 400)."""
    tools = req.function_tools()
    names = [t.name for t in tools]
    choice, allowed = _tool_choice(req, names)
    if allowed is not None:
        tools = [t for t in tools if t.name in allowed]
    extras = req.model_extra or {}
    body: dict[str, Any] = {
        "model": req.model,
        "messages": input_messages(req),
        "max_completion_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "tools": [{"type": "function", "function": t.model_dump(exclude_none=True)} for t in tools] or None,
        "tool_choice": choice,
        "parallel_tool_calls": req.parallel_tool_calls and req.max_tool_calls != 1,
        "response_format": _response_format(req),
        "reasoning_effort": reasoning_effort(req),
        **{k: extras[k] for k in CHAT_EXTRAS if k in extras},
    }
    return ChatCompletionRequest.model_validate({k: v for k, v in body.items() if v is not None})


def echo_tools(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's tools in the response's shape (FunctionTool)."""
    return [
        {
            "type": "function",
            "name": t.name,
            "description": t.description,
            "parameters": t.parameters,
            "strict": t.strict if t.strict is not None else True,
        }
        for t in req.function_tools()
    ]
