"""One chat -> engine request: messages, tools, tool_choice, response format and thinking options become the prompt
ids, the constraint the engine applies, the token ids that may never be sampled and the output parser's options.

What it is: `ChatRequest` (a chat's options in internal names), `prepare(request, tokenizer, vocab_size=...)` ->
`PreparedChat`, and `with_think_budget`. The chat policy lives here, once, for every caller: the server
(`server/chat.py`, which maps the OpenAI wire request onto a `ChatRequest`), `minigpt-generate`, the evals
(`training/evals.py`, `training/bfcl.py`) and GRPO rollouts (`training/rlhf.py`):
- tools: names unique; a named `tool_choice` must name an offered tool and only that tool is rendered; "required"
  needs tools; with "none" the tools are not rendered (`show_tools_when_none` keeps them, for an agent loop's last
  round); with no tools rendered the tool-call tag can never be sampled (`banned_token_ids`);
- grammar (llguidance, `minigpt_core.grammar`): tool calls follow the offered tools' schemas (`parallel_tool_calls`
  honoured); a JSON response format makes the whole answer that JSON; with both and tool_choice "auto" the answer
  is either tool calls or the JSON (`FirstOf`); every grammar knows whether the prompt ends inside `<think>`;
- thinking: `max_thinking_tokens` becomes a `ThinkBudget` beside the grammar (the engine only applies constraints).

What it is not: the OpenAI wire mapping, sampling parameters or the context-length check (each caller has its own
policy for a prompt that leaves no room), nor the engine. The module imports no torch: the constraints are built
lazily, when a caller asks for them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from minigpt_core.chat_template import Message, RenderedChat, render
from minigpt_core.errors import InvalidRequest
from minigpt_core.tokenizer import EOT_ID, IM_END_ID, THINK_END_ID, THINK_ID, TOOL_CALL_ID, Tokenizer

if TYPE_CHECKING:
    from minigpt_core.constraints import Constraint
    from minigpt_core.custom_template import CustomTemplate

ToolChoice = Literal["auto", "none", "required"] | dict[str, Any]  # as minigpt_core.grammar.ToolChoice
END_OF_TURN_IDS = (IM_END_ID, EOT_ID)
# After a think block the budget closed, the end of turn stays banned this long: the template's "\n\n" after
# `</think>` is two tokens, so at least one answer token follows. Only for free text: a grammar decides itself when
# the answer may end (and a JSON value is never empty).
MIN_ANSWER_TOKENS = 3


@dataclass(frozen=True)
class ChatRequest:
    """A chat to prepare. `tools` are OpenAI function tools as dicts; `json_schema` None with `json_answer` = any
    JSON object. `grammar=False` samples free (the evals' unconstrained run, GRPO rollouts)."""

    messages: Sequence[Message | Mapping[str, Any]]
    tools: Sequence[Mapping[str, Any]] | None = None
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    json_answer: bool = False
    json_schema: dict[str, Any] | None = None
    thinking: bool = False
    max_thinking_tokens: int | None = None
    grammar: bool = True
    show_tools_when_none: bool = False
    template_kwargs: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class PreparedChat:
    """The engine request of a chat, less its sampling parameters, plus the output parser's options."""

    prompt_ids: list[int]
    text: str
    thinking: bool
    parse_tools: bool  # tools were rendered: the parser turns `<tool_call>` blocks into calls
    single_tool_call: bool
    banned_token_ids: tuple[int, ...]
    request: ChatRequest = field(repr=False)
    tokenizer: Tokenizer = field(repr=False)
    vocab_size: int = 0

    def constraint_factory(self) -> Callable[[], Constraint] | None:
        """Fresh constraints, one per choice (they keep state), or None for free output.

        The first one is built now, so an unenforceable schema or tool_choice raises InvalidRequest here, before
        anything is queued."""
        grammar = self._grammar_factory() if self.request.grammar else None
        budget = self.request.max_thinking_tokens
        if grammar is None and budget is None:
            return None
        prompt = self.prompt_ids

        def make() -> Constraint:
            made = grammar() if grammar is not None else None
            out = with_think_budget(made, prompt, budget, vocab_size=self.vocab_size)
            assert out is not None  # a grammar or a budget
            return out

        first: list[Constraint] = [make()]

        def factory() -> Constraint:
            return first.pop() if first else make()

        return factory

    def constraint(self) -> Constraint | None:
        """One constraint for a single generation (None: free output)."""
        factory = self.constraint_factory()
        return factory() if factory is not None else None

    def _grammar_factory(self) -> Callable[[], Constraint] | None:
        from minigpt_core.constraints import FirstOf, prompt_ends_inside_think
        from minigpt_core.grammar import JsonConstraint, ToolCallConstraint

        req, tok, vocab = self.request, self.tokenizer, self.vocab_size
        tools = [dict(t) for t in req.tools or []]
        mode = req.tool_choice
        inside = prompt_ends_inside_think(self.prompt_ids, THINK_ID, THINK_END_ID)
        callable_tools = bool(tools) and mode != "none"
        if not callable_tools and not req.json_answer and mode != "none":
            return None

        def tool_constraint(m: ToolChoice) -> Constraint:
            return ToolCallConstraint(
                tok, tools, m, parallel=req.parallel_tool_calls, inside_think=inside, vocab_size=vocab
            )

        def make() -> Constraint:
            if not req.json_answer:
                return tool_constraint(mode)
            json_c = JsonConstraint(tok, req.json_schema, inside_think=inside, vocab_size=vocab)
            if not callable_tools:
                return json_c
            if mode == "auto":  # tool calls (starting at once) or the JSON answer
                return FirstOf([tool_constraint("required"), json_c])
            return tool_constraint(mode)  # a forced call; the format is left for a later turn

        return make


def with_think_budget(
    constraint: Constraint | None, prompt_ids: Sequence[int], max_thinking_tokens: int | None, *, vocab_size: int
) -> Constraint | None:
    """`constraint` plus a `ThinkBudget` of `max_thinking_tokens` (None: no budget, `constraint` as it is)."""
    if max_thinking_tokens is None:
        return constraint
    from minigpt_core.constraints import AllOf, ThinkBudget, prompt_ends_inside_think

    budget = ThinkBudget(
        max_thinking_tokens,
        THINK_END_ID,
        vocab_size=vocab_size,
        think_id=THINK_ID,
        inside=prompt_ends_inside_think(prompt_ids, THINK_ID, THINK_END_ID),
        stop_ids=END_OF_TURN_IDS,
        min_answer_tokens=MIN_ANSWER_TOKENS if constraint is None else 0,
    )
    return budget if constraint is None else AllOf([constraint, budget])


def _tool_name(tool: Mapping[str, Any]) -> Any:
    fn = tool.get("function") if isinstance(tool, Mapping) else None
    return fn.get("name") if isinstance(fn, Mapping) else None


def rendered_tools(req: ChatRequest) -> list[Mapping[str, Any]] | None:
    """The tools to render, after checking tool_choice against them; None when none is shown."""
    tools = list(req.tools or [])
    names = [_tool_name(t) for t in tools]
    if len(set(names)) != len(names):
        raise InvalidRequest("tool names must be unique", "tools")
    choice = req.tool_choice
    if isinstance(choice, Mapping):
        name = _tool_name(choice)
        if name not in names:
            raise InvalidRequest(f"tool_choice names {name!r}, which is not in tools", "tool_choice")
        tools = [t for t in tools if _tool_name(t) == name]
    elif choice == "required" and not tools:
        raise InvalidRequest('tool_choice "required" needs at least one tool', "tool_choice")
    if (choice == "none" and not req.show_tools_when_none) or not tools:
        return None
    return tools


def render_chat(
    req: ChatRequest, tools: Sequence[Mapping[str, Any]] | None, tokenizer: Tokenizer, custom: CustomTemplate | None
) -> RenderedChat:
    """The prompt through `custom` (a `--chat-template`) when given, else the built-in template."""
    if custom is None:
        return render(
            req.messages, tools, add_generation_prompt=True, enable_thinking=req.thinking, tokenizer=tokenizer
        )
    from minigpt_core.custom_template import render_prompt

    return render_prompt(
        req.messages,  # type: ignore[arg-type]  # a custom template is given the messages as dicts
        tools,
        add_generation_prompt=True,
        enable_thinking=req.thinking,
        tokenizer=tokenizer,
        custom=custom,
        template_kwargs=req.template_kwargs,
    )


def prepare(
    req: ChatRequest, tokenizer: Tokenizer, *, vocab_size: int, custom: CustomTemplate | None = None
) -> PreparedChat:
    """Render the chat and settle its options; raises InvalidRequest. Constraints: `constraint_factory()`."""
    tools = rendered_tools(req)
    rendered = render_chat(req, tools, tokenizer, custom)
    return PreparedChat(
        prompt_ids=list(rendered.ids),
        text=rendered.text,
        thinking=req.thinking,
        parse_tools=tools is not None,
        single_tool_call=not req.parallel_tool_calls,
        # no tools shown: a call could not be returned (OpenAI never sends tool_calls then), so the model may not
        # start one, and its tags can never leak into content
        banned_token_ids=() if tools else (TOOL_CALL_ID,),
        request=req,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
    )
