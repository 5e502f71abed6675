"""The ChatML chat template (Qwen3 / minimind v3 layout): messages -> token ids + training mask, and its Jinja twin.

What it is: one Python renderer used by training, serving, eval and the CLI, plus `CHAT_TEMPLATE_JINJA`, a Jinja
template that renders exactly the same text for HF tools (`apply_chat_template`).

What it is not: a parser of model output (see `output_parser.py`) or a request validator beyond message shapes.

Token-level contract: only text the template itself owns ("<|im_start|>", "<think>", the tools instruction, ...)
becomes special tokens; message content, reasoning, tool JSON and tool results are encoded as plain text, so they
can never forge a turn. `RenderedChat.text` shows specials as their literal strings; for benign content,
re-tokenising it with specials enabled gives exactly `RenderedChat.ids`. Plain runs between two specials are
encoded in one piece (never segment by segment), so BPE sees the same context as on the whole text.

Deviation from Qwen3: a tool call's `arguments` given as a JSON string is emitted verbatim (after checking it is a
JSON object), because Jinja cannot parse JSON; a dict is emitted as `json.dumps(..., ensure_ascii=False)`.
"""

from __future__ import annotations

import bisect
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from minigpt_core.errors import InvalidRequest
from minigpt_core.tokenizer import SPECIAL_TOKENS, Tokenizer

ROLES = ("system", "user", "assistant", "tool")
_SPECIAL_ID = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")

TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)

CHAT_TEMPLATE_JINJA = (
    r"""{%- macro render_content(c) %}
    {%- if c is string %}
        {{- c }}
    {%- elif c is iterable and c is not mapping %}
        {{- c | map(attribute='text') | join('\n') }}
    {%- endif %}
{%- endmacro %}
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- render_content(messages[0].content) + '\n\n' }}
    {%- endif %}
    {{- '"""
    + TOOLS_HEADER.replace("\n", r"\n")
    + r"""' }}
    {%- for tool in tools %}
        {{- '\n' + (tool | tojson) }}
    {%- endfor %}
    {{- '"""
    + TOOLS_FOOTER.replace("\n", r"\n")
    + r"""<|im_end|>\n' }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + render_content(messages[0].content) + '<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(last_user=-1) %}
{%- for message in messages %}
    {%- if message.role == 'user' %}
        {%- set ns.last_user = loop.index0 %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set content = render_content(message.content) %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {%- set reasoning = message.reasoning_content.strip('\n') if message.reasoning_content is string else '' %}
        {%- if loop.index0 > ns.last_user and reasoning %}
            {{- '<|im_start|>assistant\n<think>\n' + reasoning + '\n</think>\n\n' + content }}
        {%- else %}
            {{- '<|im_start|>assistant\n<think>\n\n</think>\n\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if content or not loop.first %}
                    {{- '\n' }}
                {%- endif %}
                {{- '<tool_call>\n{"name": ' + (tool_call.function.name | tojson) + ', "arguments": ' }}
                {%- if tool_call.function.arguments is string %}
                    {{- tool_call.function.arguments }}
                {%- else %}
                    {{- tool_call.function.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' + content + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking %}
        {{- '<think>\n' }}
    {%- else %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""
)


@dataclass(frozen=True)
class RenderedChat:
    """A rendered conversation: `mask[i]` is True where the model learns `ids[i]` (assistant bodies)."""

    ids: list[int]
    mask: list[bool]
    text: str


@dataclass(frozen=True)
class ToolCall:
    """A validated tool call of an assistant message."""

    name: str
    arguments: str  # JSON object text, exactly as rendered


@dataclass(frozen=True)
class Message:
    """A validated message (`parse_messages` builds them from OpenAI-style dicts); `render` takes them as they are."""

    role: str
    content: str
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass(frozen=True)
class _Segment:
    text: str
    special: bool
    trainable: bool


# ----- validation: OpenAI-style dicts -> Message -----


def _content_text(value: Any, param: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts: list[str] = []
        for j, part in enumerate(value):
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest(f"{param}[{j}] must be a text part {{'type': 'text', 'text': str}}", param=param)
            texts.append(part["text"])
        return "\n".join(texts)
    raise InvalidRequest(f"{param} must be a string, null or a list of text parts", param=param)


def json_error_text(exc: BaseException) -> str:
    """Why `json.loads` failed, in words for an API user (the exception texts of the two limits speak Python)."""
    if isinstance(exc, RecursionError):
        return "it is nested too deeply"
    text = str(exc)
    if "integer string conversion" in text:  # ValueError past sys.get_int_max_str_digits()
        return f"it holds an integer of more than {sys.get_int_max_str_digits()} digits"
    return text


def _tool_call(value: Any, param: str) -> ToolCall:
    fn = value.get("function") if isinstance(value, Mapping) else None
    if not isinstance(fn, Mapping):
        raise InvalidRequest(f"{param} must be {{'type': 'function', 'function': {{...}}}}", param=param)
    return make_tool_call(fn.get("name"), fn.get("arguments"), param)


def make_tool_call(name: Any, args: Any, param: str) -> ToolCall:
    """A validated `ToolCall`: a non-empty name, arguments a JSON object (text or a dict); `param` names the call
    in errors (`messages[i].tool_calls[j]`)."""
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"{param}.function.name must be a non-empty string", param=f"{param}.function.name")
    if isinstance(args, str):
        try:
            parsed = json.loads(args)
        except (ValueError, RecursionError) as exc:
            raise InvalidRequest(
                f"{param}.function.arguments is not valid JSON: {json_error_text(exc)}",
                param=f"{param}.function.arguments",
            ) from None
        if not isinstance(parsed, dict):
            raise InvalidRequest(
                f"{param}.function.arguments must be a JSON object", param=f"{param}.function.arguments"
            )
        return ToolCall(name, args)
    if isinstance(args, Mapping):
        try:
            return ToolCall(name, json.dumps(dict(args), ensure_ascii=False))
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(
                f"{param}.function.arguments is not JSON-serialisable: {exc}", param=f"{param}.function.arguments"
            ) from exc
    raise InvalidRequest(
        f"{param}.function.arguments must be a JSON string or an object", param=f"{param}.function.arguments"
    )


def _message(value: Any, i: int) -> Message:
    param = f"messages[{i}]"
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{param} must be an object", param=param)
    role = value.get("role")
    if role not in ROLES:
        raise InvalidRequest(f"{param}.role must be one of {', '.join(ROLES)}; got {role!r}", param=f"{param}.role")
    content = _content_text(value.get("content"), f"{param}.content")
    if role != "assistant":
        tool_call_id = value.get("tool_call_id")
        if role == "tool" and tool_call_id is not None and not isinstance(tool_call_id, str):
            raise InvalidRequest(f"{param}.tool_call_id must be a string", param=f"{param}.tool_call_id")
        return Message(role, content)
    reasoning = value.get("reasoning_content")
    if reasoning is not None and not isinstance(reasoning, str):
        raise InvalidRequest(f"{param}.reasoning_content must be a string", param=f"{param}.reasoning_content")
    raw_calls = value.get("tool_calls")
    if raw_calls is not None and not isinstance(raw_calls, list):
        raise InvalidRequest(f"{param}.tool_calls must be a list", param=f"{param}.tool_calls")
    calls = [_tool_call(c, f"{param}.tool_calls[{j}]") for j, c in enumerate(raw_calls or [])]
    return Message(role, content, (reasoning or "").strip("\n"), calls)


def parse_messages(messages: Sequence[Message | Mapping[str, Any]]) -> list[Message]:
    """Validate OpenAI-style message dicts into `Message`s (those already typed are kept); raises InvalidRequest."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise InvalidRequest("messages must be a non-empty list", param="messages")
    return [m if isinstance(m, Message) else _message(m, i) for i, m in enumerate(messages)]


def _validate(messages: Any, tools: Any) -> tuple[list[Message], list[str]]:
    msgs = parse_messages(messages)
    tool_lines: list[str] = []
    if tools is not None:
        if not isinstance(tools, Sequence) or isinstance(tools, str):
            raise InvalidRequest("tools must be a list", param="tools")
        for k, tool in enumerate(tools):
            fn = tool.get("function") if isinstance(tool, Mapping) else None
            if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
                raise InvalidRequest(
                    f"tools[{k}] must be {{'type': 'function', 'function': {{'name': str, ...}}}}", param=f"tools[{k}]"
                )
            try:
                tool_lines.append(json.dumps(tool, ensure_ascii=False))
            except (TypeError, ValueError) as exc:
                raise InvalidRequest(f"tools[{k}] is not JSON-serialisable: {exc}", param=f"tools[{k}]") from exc
    return msgs, tool_lines


# ----- layout: Message list -> segments -----


class _Builder:
    def __init__(self) -> None:
        self.segments: list[_Segment] = []

    def template(self, text: str, trainable: bool = False) -> None:
        """Template-owned text: special strings in it become special tokens."""
        for piece in _SPECIAL_RE.split(text):
            if piece:
                self.segments.append(_Segment(piece, piece in _SPECIAL_ID, trainable))

    def plain(self, text: str, trainable: bool = False) -> None:
        """Message-owned text: always plain, whatever it contains."""
        if text:
            self.segments.append(_Segment(text, False, trainable))


def _assistant(b: _Builder, m: Message, keep_reasoning: bool) -> None:
    b.template("<|im_start|>assistant\n")
    if keep_reasoning and m.reasoning:
        b.template("<think>\n")
        b.plain(m.reasoning, True)
        b.template("\n</think>\n\n", True)
    else:
        b.template("<think>\n\n</think>\n\n")
    b.plain(m.content, True)
    for j, call in enumerate(m.tool_calls):
        if m.content or j > 0:
            b.template("\n", True)
        b.template("<tool_call>\n", True)
        b.plain(tool_call_text(call.name, call.arguments), True)
        b.template("\n</tool_call>", True)
    b.template("<|im_end|>", True)
    b.template("\n")


def _segments(
    msgs: list[Message], tool_lines: list[str], add_generation_prompt: bool, enable_thinking: bool
) -> list[_Segment]:
    b = _Builder()
    first_is_system = msgs[0].role == "system"
    if tool_lines:
        b.template("<|im_start|>system\n")
        if first_is_system:
            b.plain(msgs[0].content)
            b.template("\n\n")
        b.template(TOOLS_HEADER)
        for line in tool_lines:
            b.template("\n")
            b.plain(line)
        b.template(TOOLS_FOOTER + "<|im_end|>\n")
    elif first_is_system:
        b.template("<|im_start|>system\n")
        b.plain(msgs[0].content)
        b.template("<|im_end|>\n")
    last_user = max((i for i, m in enumerate(msgs) if m.role == "user"), default=-1)
    for i, m in enumerate(msgs):
        if m.role == "user" or (m.role == "system" and i > 0):
            b.template(f"<|im_start|>{m.role}\n")
            b.plain(m.content)
            b.template("<|im_end|>\n")
        elif m.role == "assistant":
            _assistant(b, m, keep_reasoning=i > last_user)
        elif m.role == "tool":
            if i == 0 or msgs[i - 1].role != "tool":
                b.template("<|im_start|>user")
            b.template("\n<tool_response>\n")
            b.plain(m.content)
            b.template("\n</tool_response>")
            if i == len(msgs) - 1 or msgs[i + 1].role != "tool":
                b.template("<|im_end|>\n")
    if add_generation_prompt:
        b.template("<|im_start|>assistant\n" + ("<think>\n" if enable_thinking else "<think>\n\n</think>\n\n"))
    return b.segments


def _tokenize(segments: list[_Segment], tokenizer: Tokenizer) -> tuple[list[int], list[bool]]:
    ids: list[int] = []
    mask: list[bool] = []
    run: list[_Segment] = []

    def flush() -> None:
        if not run:
            return
        text = "".join(s.text for s in run)
        starts: list[int] = []
        pos = 0
        for s in run:
            starts.append(pos)
            pos += len(s.text)
        run_ids, offsets = tokenizer.encode_with_offsets(text)
        ids.extend(run_ids)
        # A token belongs to the segment holding its first character.
        mask.extend(run[bisect.bisect_right(starts, off) - 1].trainable for off in offsets)
        run.clear()

    for seg in segments:
        if seg.special:
            flush()
            ids.append(_SPECIAL_ID[seg.text])
            mask.append(seg.trainable)
        else:
            run.append(seg)
    flush()
    return ids, mask


# ----- public API -----


def tool_call_text(name: object, arguments_json: str) -> str:
    """The JSON object the template writes between `<tool_call>` tags for one call."""
    return f'{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": {arguments_json}}}'


def render_text(
    messages: Sequence[Message | Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    add_generation_prompt: bool = False,
    enable_thinking: bool = False,
) -> str:
    """The conversation as one string (specials as literal text); equals `CHAT_TEMPLATE_JINJA`'s output."""
    msgs, tool_lines = _validate(messages, tools)
    return "".join(s.text for s in _segments(msgs, tool_lines, add_generation_prompt, enable_thinking))


def render(
    messages: Sequence[Message | Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    add_generation_prompt: bool = False,
    enable_thinking: bool = False,
    tokenizer: Tokenizer,
) -> RenderedChat:
    """Render to ids, the assistant-body training mask and text. Raises InvalidRequest on malformed messages.

    `messages` are `Message`s (validated once, where they were built) or OpenAI-style dicts (validated here)."""
    msgs, tool_lines = _validate(messages, tools)
    segments = _segments(msgs, tool_lines, add_generation_prompt, enable_thinking)
    ids, mask = _tokenize(segments, tokenizer)
    return RenderedChat(ids=ids, mask=mask, text="".join(s.text for s in segments))
