"""Request preparation: OpenAI wire request -> prompt token ids, per-choice `SamplingParams`, parser options.

The boundary where wire names (`max_tokens`, `logit_bias`, `reasoning_effort`, ...) become internal ones: the
chat options become a `minigpt_core.prompting.ChatRequest` (messages as validated `chat_template.Message`s, or as
dicts for a `--chat-template`), and `minigpt_core.prompting` renders it and builds the constraints, as it does for
`minigpt-generate`, the evals and GRPO. Here: thinking options (`reasoning_effort`, `ultra_think`, ...), the context
length check before anything is queued (never silent truncation) and the SamplingParams; `start_chat`, the chat
routes' common start, submits the prepared choices. It does not format responses: that is `server.streaming`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from minigpt_core.chat_template import Message, make_tool_call
from minigpt_core.constraints import Constraint
from minigpt_core.custom_template import CustomTemplate
from minigpt_core.engine_api import EngineLike, portable_constraints
from minigpt_core.errors import ContextLengthExceeded, InvalidRequest
from minigpt_core.output_parser import OutputParser
from minigpt_core.prompting import ChatRequest, prepare
from minigpt_core.sampling import SamplingParams
from server.generation import ChoiceJob, submit_all
from server.protocol import ChatCompletionRequest, ChatMessage, NamedToolChoice, SamplingFields, TextPart

logger = logging.getLogger(__name__)

# reasoning_effort -> thinking budget in tokens (None = only max_tokens bounds it).
EFFORT_BUDGETS: dict[str, int | None] = {"minimal": 64, "low": 256, "medium": 1024, "high": None}


@dataclass(frozen=True)
class PreparedRequest:
    """Everything the generation runner needs; one `params` entry per choice (`n`)."""

    prompt_ids: list[int]
    params: list[SamplingParams]
    stops: list[str] = field(default_factory=list)
    thinking: bool = False
    parse_tools: bool = False
    single_tool_call: bool = False
    # Builds a fresh Constraint per choice (they are stateful); None = unconstrained.
    make_constraint: Callable[[], Constraint | None] | None = None


def resolve_thinking(req: ChatCompletionRequest) -> tuple[bool, int | None]:
    """(enable_thinking, max_thinking_tokens) from ultra_think, reasoning_effort and chat_template_kwargs."""
    enabled = False
    budget: int | None = None
    kwargs = req.chat_template_kwargs or {}
    if "enable_thinking" in kwargs:
        value = kwargs["enable_thinking"]
        if not isinstance(value, bool):
            raise InvalidRequest("chat_template_kwargs.enable_thinking must be a boolean", "chat_template_kwargs")
        enabled = value
    if req.reasoning_effort is not None:
        enabled = req.reasoning_effort != "none"
        budget = EFFORT_BUDGETS.get(req.reasoning_effort)
    if req.ultra_think is not None:
        enabled = req.ultra_think
    if req.max_thinking_tokens is not None:
        budget = req.max_thinking_tokens
    return enabled, budget if enabled else None


def _messages(req: ChatCompletionRequest, *, typed: bool) -> list[Message] | list[dict[str, Any]]:
    """The wire messages as the template takes them: validated `Message`s for the built-in template, dicts in the
    wire shape for a custom (Jinja) one, which sees every field."""
    out: list[Any] = []
    for i, msg in enumerate(req.messages):
        if isinstance(msg.content, list) and any(not isinstance(p, TextPart) for p in msg.content):
            raise InvalidRequest("only text content parts are supported", f"messages.{i}.content")
        if msg.role == "tool" and not msg.tool_call_id:
            raise InvalidRequest("a tool message needs tool_call_id", f"messages.{i}.tool_call_id")
        role = "system" if msg.role == "developer" else msg.role
        out.append(_typed(msg, role, i) if typed else _wire_dict(msg, role))
    return out


def _typed(msg: ChatMessage, role: str, i: int) -> Message:
    if isinstance(msg.content, list):  # text parts only (checked by the caller), joined as the template joins them
        content = "\n".join(p.text for p in msg.content if isinstance(p, TextPart))
    else:
        content = msg.content or ""
    if role != "assistant":
        return Message(role, content)
    calls = [
        make_tool_call(c.function.name, c.function.arguments, f"messages[{i}].tool_calls[{j}]")
        for j, c in enumerate(msg.tool_calls or [])
    ]
    return Message(role, content, (msg.reasoning_content or "").strip("\n"), calls)


def _wire_dict(msg: ChatMessage, role: str) -> dict[str, Any]:
    content = msg.content if isinstance(msg.content, str | None) else [p.model_dump() for p in msg.content]
    item: dict[str, Any] = {"role": role, "content": content}
    if msg.role == "assistant" and msg.tool_calls:
        item["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in msg.tool_calls
        ]
    if msg.reasoning_content:
        item["reasoning_content"] = msg.reasoning_content
    if msg.role == "tool":
        item["tool_call_id"] = msg.tool_call_id
    if msg.name:
        item["name"] = msg.name
    return item


def chat_request(req: ChatCompletionRequest, *, typed_messages: bool = True) -> ChatRequest:
    """The wire request in internal terms (`minigpt_core.prompting` does the rest)."""
    thinking, budget = resolve_thinking(req)
    choice = req.tool_choice
    fmt = req.response_format
    wants_json = fmt is not None and fmt.type != "text"
    schema = None
    if fmt is not None and fmt.type == "json_schema":
        assert fmt.json_schema is not None  # checked by the wire model
        schema = fmt.json_schema.schema_
        if schema is None:
            raise InvalidRequest("response_format.json_schema needs a schema", "response_format")
    return ChatRequest(
        messages=_messages(req, typed=typed_messages),
        tools=[t.model_dump(mode="json", exclude_none=True, by_alias=True) for t in req.tools or []],
        tool_choice=choice.model_dump(mode="json") if isinstance(choice, NamedToolChoice) else choice or "auto",
        parallel_tool_calls=req.parallel_tool_calls,
        json_answer=wants_json,
        json_schema=schema,
        thinking=thinking,
        max_thinking_tokens=budget,
        template_kwargs=req.chat_template_kwargs,
    )


def resolve_max_tokens(requested: int | None, prompt_len: int, max_model_len: int, default: int) -> int:
    """The completion budget; raises ContextLengthExceeded rather than truncating anything."""
    room = max_model_len - prompt_len
    if requested is None:
        if room < 1:
            raise ContextLengthExceeded(prompt_len, 1, max_model_len)
        return min(default, room)
    if prompt_len + requested > max_model_len:
        raise ContextLengthExceeded(prompt_len, requested, max_model_len)
    return requested


def sampling_params(
    req: SamplingFields,
    *,
    max_new_tokens: int,
    vocab_size: int,
    defaults: Mapping[str, float],
    logprobs: bool = False,
    top_logprobs: int = 0,
    banned_token_ids: tuple[int, ...] = (),
) -> list[SamplingParams]:
    """One validated SamplingParams per choice; seeded requests use seed + i for choice i."""
    bias: list[tuple[int, float]] = []
    for key, value in (req.logit_bias or {}).items():
        try:
            token_id = int(key)
        except ValueError:
            raise InvalidRequest(f"logit_bias keys must be token ids, got {key!r}", "logit_bias") from None
        bias.append((token_id, float(value)))
    top_k = req.top_k if req.top_k is not None and req.top_k > 0 else 0  # past the vocabulary: off (sampling.py)
    base = SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=req.temperature if req.temperature is not None else float(defaults.get("temperature", 1.0)),
        top_p=req.top_p if req.top_p is not None else float(defaults.get("top_p", 1.0)),
        top_k=top_k,
        min_p=req.min_p or 0.0,
        repetition_penalty=req.repetition_penalty if req.repetition_penalty is not None else 1.0,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        logit_bias=tuple(bias),
        seed=req.seed,
        ignore_eos=req.ignore_eos,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        banned_token_ids=banned_token_ids,
    )
    base.validate(vocab_size)
    if req.seed is None:
        return [base] * req.n
    return [_replace_seed(base, req.seed + i) for i in range(req.n)]


def _replace_seed(params: SamplingParams, seed: int) -> SamplingParams:
    import dataclasses

    return dataclasses.replace(params, seed=seed)


def prepare_chat(
    req: ChatCompletionRequest,
    tokenizer: Any,
    *,
    max_model_len: int,
    default_max_tokens: int,
    defaults: Mapping[str, float],
    vocab_size: int,
    chat_template: CustomTemplate | None = None,
) -> PreparedRequest:
    """Messages -> template (`chat_template`, else the built-in one) -> ids; context check; SamplingParams; parser
    options; the constraint factory (built last, after the cheaper checks). Raises InvalidRequest."""
    chat = prepare(
        chat_request(req, typed_messages=chat_template is None), tokenizer, vocab_size=vocab_size, custom=chat_template
    )
    max_new = resolve_max_tokens(req.requested_max_tokens(), len(chat.prompt_ids), max_model_len, default_max_tokens)
    params = sampling_params(
        req,
        max_new_tokens=max_new,
        vocab_size=vocab_size,
        defaults=defaults,
        logprobs=req.logprobs,
        top_logprobs=req.top_logprobs or 0,
        banned_token_ids=chat.banned_token_ids,
    )
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("prompt text: %r", chat.text)
    return PreparedRequest(
        prompt_ids=chat.prompt_ids,
        params=params,
        stops=req.stop_list(),
        thinking=chat.thinking,
        parse_tools=chat.parse_tools,
        single_tool_call=chat.single_tool_call,
        make_constraint=portable_constraints(chat),  # each carries its spec, for an engine process
    )


async def start_chat(
    state: Any, engine: EngineLike, req: ChatCompletionRequest, tokenizer: Any, request_id: str
) -> tuple[PreparedRequest, list[ChoiceJob]]:
    """The common start of the chat routes (/v1/chat/completions, /v1/responses): `prepare_chat` in a worker thread
    (a long prompt or a new grammar, compiled and tried there, seconds for some schemas, must not stall every other
    request and stream on the event loop), then every choice submitted before the first byte (`submit_all`)."""
    prep = await asyncio.to_thread(
        prepare_chat,
        req,
        tokenizer,
        max_model_len=state.max_model_len,
        default_max_tokens=state.settings.default_max_tokens,
        defaults=state.defaults,
        vocab_size=state.vocab_size,
        chat_template=state.chat_template,
    )

    def make_parser() -> OutputParser:
        return OutputParser(tokenizer, thinking=prep.thinking, parse_tools=prep.parse_tools, stops=prep.stops)

    jobs = await submit_all(
        engine,
        [(i, prep.prompt_ids, p) for i, p in enumerate(prep.params)],
        request_id,
        make_parser,
        make_constraint=prep.make_constraint,
        thinking=prep.thinking,
        single_tool_call=prep.single_tool_call,
    )
    return prep, jobs
