"""Request preparation: OpenAI wire request -> prompt token ids, per-choice `SamplingParams`, parser options.

The boundary where wire names (`max_tokens`, `logit_bias`, `reasoning_effort`, ...) become internal ones.
It renders chat messages through `minigpt_core.chat_template.render` (the one template training also uses; a
`--chat-template` replaces it through `minigpt_core.custom_template`), checks the context length before anything
is queued (never silent truncation), and builds the grammar `Constraint` factory from `tools` / `tool_choice` /
`parallel_tool_calls` / `response_format` (llguidance, see `minigpt_core.grammar`). It does not run the engine
or format responses: that is `server.streaming`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from minigpt_core.constraints import Constraint, prompt_ends_inside_think
from minigpt_core.custom_template import CustomTemplate, render_prompt
from minigpt_core.errors import ContextLengthExceeded, InvalidRequest
from minigpt_core.grammar import JsonConstraint, ToolCallConstraint, ToolChoice
from minigpt_core.sampling import SamplingParams
from minigpt_core.tokenizer import THINK_END_ID, THINK_ID, TOOL_CALL_ID
from server.protocol import ChatCompletionRequest, NamedToolChoice, SamplingFields, TextPart

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


def _template_messages(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(req.messages):
        if isinstance(msg.content, list) and any(not isinstance(p, TextPart) for p in msg.content):
            raise InvalidRequest("only text content parts are supported", f"messages.{i}.content")
        role = "system" if msg.role == "developer" else msg.role
        content = msg.content if isinstance(msg.content, str | None) else [p.model_dump() for p in msg.content]
        item: dict[str, Any] = {"role": role, "content": content}
        if msg.role == "assistant" and msg.tool_calls:
            item["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": c.function.arguments},
                }
                for c in msg.tool_calls
            ]
        if msg.reasoning_content:
            item["reasoning_content"] = msg.reasoning_content
        if msg.role == "tool":
            if not msg.tool_call_id:
                raise InvalidRequest("a tool message needs tool_call_id", f"messages.{i}.tool_call_id")
            item["tool_call_id"] = msg.tool_call_id
        if msg.name:
            item["name"] = msg.name
        out.append(item)
    return out


def _offered_tools(req: ChatCompletionRequest) -> list[Mapping[str, Any]] | None:
    """The tools to render, after checking tool_choice against them; None when no tool may be called."""
    tools = req.tools or []
    names = [t.function.name for t in tools]
    if len(set(names)) != len(names):
        raise InvalidRequest("tool names must be unique", "tools")
    choice = req.tool_choice
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            raise InvalidRequest(f"tool_choice names {choice.function.name!r}, which is not in tools", "tool_choice")
        tools = [t for t in tools if t.function.name == choice.function.name]
    elif choice == "required" and not tools:
        raise InvalidRequest('tool_choice "required" needs at least one tool', "tool_choice")
    if choice == "none" or not tools:
        return None
    return [t.model_dump(mode="json", exclude_none=True, by_alias=True) for t in tools]


class FirstOf:
    """Either member, decided by the tokens: allows what any still-viable member allows.

    Each generated token is passed to the members that allowed it; the others drop out. Used for tools plus
    `response_format`: the answer is either tool calls or the structured answer, never free text.
    TODO(issue 9): belongs beside `AllOf` in minigpt_core.constraints.
    """

    def __init__(self, members: Sequence[Constraint]) -> None:
        self.members: list[Constraint] = list(members)
        self._masks: list[torch.Tensor | None] = []

    def allowed(self) -> torch.Tensor | None:
        self._masks = [m.allowed() for m in self.members]
        if any(mask is None for mask in self._masks):
            return None
        union = self._masks[0]
        assert union is not None
        for mask in self._masks[1:]:
            assert mask is not None
            union = union | mask
        return union

    def advance(self, token_id: int) -> None:
        masks = self._masks if len(self._masks) == len(self.members) else [m.allowed() for m in self.members]
        kept = [m for m, mask in zip(self.members, masks, strict=True) if mask is None or bool(mask[token_id])]
        self.members = kept or self.members[:1]  # an all-False mask already failed the request upstream
        self._masks = []
        for member in self.members:
            member.advance(token_id)

    def is_finished(self) -> bool:
        return any(m.is_finished() for m in self.members)


def _tool_dicts(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    return [t.model_dump(mode="json", exclude_none=True, by_alias=True) for t in req.tools or []]


def _json_schema(req: ChatCompletionRequest) -> tuple[bool, dict[str, Any] | None]:
    """(constrain?, schema) from response_format; schema None = any JSON object."""
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return False, None
    if fmt.type == "json_object":
        return True, None
    assert fmt.json_schema is not None  # checked by the wire model
    schema = fmt.json_schema.schema_
    if schema is None:
        raise InvalidRequest("response_format.json_schema needs a schema", "response_format")
    return True, schema


def build_constraint_factory(
    req: ChatCompletionRequest, tokenizer: Any, *, prompt_ids: Sequence[int], vocab_size: int
) -> Callable[[], Constraint | None] | None:
    """A factory of fresh grammar constraints (one per choice: they keep state), or None for free output.

    - no tools, tool_choice unset/"auto": no tool constraint; "none" bans the tool-call tags;
    - tools with "auto" / "required" / named: calls follow the tools' schemas (`parallel_tool_calls` honoured);
    - response_format json_object / json_schema: the whole answer is that JSON;
    - both tools (callable: tool_choice auto) and response_format: the answer is either tool calls
      (starting at once) or the JSON answer (`FirstOf`); with "required" / named the call is forced and the
      format is left for a later turn; with "none" only the format applies.
    The first constraint is built here, so an unenforceable schema or tool_choice raises InvalidRequest
    before anything is queued.
    """
    tools = _tool_dicts(req)
    choice = req.tool_choice
    mode: ToolChoice = choice.model_dump(mode="json") if isinstance(choice, NamedToolChoice) else choice or "auto"
    wants_json, schema = _json_schema(req)
    inside = prompt_ends_inside_think(prompt_ids, THINK_ID, THINK_END_ID)
    parallel = req.parallel_tool_calls
    callable_tools = bool(tools) and mode != "none"
    if not callable_tools and not wants_json and mode != "none":
        return None

    def make() -> Constraint:
        def tool_constraint(m: ToolChoice) -> ToolCallConstraint:
            return ToolCallConstraint(
                tokenizer, tools, m, parallel=parallel, inside_think=inside, vocab_size=vocab_size
            )

        json_c = JsonConstraint(tokenizer, schema, inside_think=inside, vocab_size=vocab_size) if wants_json else None
        if json_c is None:
            return tool_constraint(mode)
        if not callable_tools:
            return json_c
        if mode == "auto":
            return FirstOf([tool_constraint("required"), json_c])
        return tool_constraint(mode)

    first: list[Constraint] = [make()]  # raises InvalidRequest now, before the first byte

    def factory() -> Constraint:
        return first.pop() if first else make()

    return factory


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
    max_thinking_tokens: int | None = None,
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
        max_thinking_tokens=max_thinking_tokens,
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
    options. Raises InvalidRequest."""
    thinking, budget = resolve_thinking(req)
    tools = _offered_tools(req)
    rendered = render_prompt(
        _template_messages(req),
        tools,
        add_generation_prompt=True,
        enable_thinking=thinking,
        tokenizer=tokenizer,
        custom=chat_template,
        template_kwargs=req.chat_template_kwargs,
    )
    prompt_ids = list(rendered.ids)
    max_new = resolve_max_tokens(req.requested_max_tokens(), len(prompt_ids), max_model_len, default_max_tokens)
    params = sampling_params(
        req,
        max_new_tokens=max_new,
        vocab_size=vocab_size,
        defaults=defaults,
        logprobs=req.logprobs,
        top_logprobs=req.top_logprobs or 0,
        max_thinking_tokens=budget,
        # no callable tools: a call could not be returned (OpenAI never sends tool_calls then), so the model
        # may not start one, and its tags can never leak into content
        banned_token_ids=() if tools else (TOOL_CALL_ID,),
    )
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("prompt text: %r", rendered.text)
    return PreparedRequest(
        prompt_ids=prompt_ids,
        params=params,
        stops=req.stop_list(),
        thinking=thinking,
        parse_tools=tools is not None,
        single_tool_call=not req.parallel_tool_calls,
        make_constraint=build_constraint_factory(req, tokenizer, prompt_ids=prompt_ids, vocab_size=vocab_size),
    )
