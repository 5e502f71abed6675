"""What a server needs of an engine, whichever process it runs in: `EngineLike` / `HandleLike`, and constraints that
can be sent to another process (`PortableConstraint`, built from a `ConstraintSpec`).

What it is: two `typing.Protocol`s that both the in-process `minigpt_core.engine.Engine` and the engine process's
client (`minigpt_core.engine_client.EngineClient`) satisfy, so that the server is typed against one interface; and
the data a chat's constraint is rebuilt from on the other side of a process boundary. A `Constraint` holds a
grammar matcher and torch masks and cannot be pickled; a `ConstraintSpec` holds only what
`prompting.PreparedChat.constraint_factory` reads (the tools, tool_choice, response format and thinking budget of
the chat, and the prompt ids) and builds the same constraint again with the tokenizer of the process it lands in.
`portable_constraints(chat)` is the factory the server uses: each constraint it makes works in-process as it is and
carries its spec for the engine process.

What it is not: no engine and no transport (engine.py, engine_process.py, engine_client.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from minigpt_core.constraints import Constraint
    from minigpt_core.engine import EngineStats
    from minigpt_core.prompting import ChatRequest, PreparedChat
    from minigpt_core.request import TokenEvent
    from minigpt_core.sampling import SamplingParams
    from minigpt_core.tokenizer import Tokenizer


class HandleLike(Protocol):
    """One submitted request, as its consumer on the event loop sees it (`minigpt_core.engine.RequestHandle`)."""

    request_id: str
    prompt_tokens: int

    @property
    def cancelled(self) -> bool: ...

    def cancel(self) -> None: ...

    def drain_nowait(self) -> list[TokenEvent]: ...

    def __aiter__(self) -> AsyncIterator[TokenEvent]: ...

    async def __anext__(self) -> TokenEvent: ...


class EngineLike(Protocol):
    """The engine surface the server uses. `submit` validates before anything is queued (InvalidRequest,
    ContextLengthExceeded, EngineOverloaded, EngineClosed) and must be called on the event loop that iterates the
    handle."""

    @property
    def max_model_len(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def max_queued(self) -> int: ...

    @property
    def num_adapters(self) -> int: ...

    def submit(
        self,
        prompt_ids: Iterable[int],
        params: SamplingParams,
        constraint: Constraint | None = None,
        request_id: str | None = None,
        adapter: int = 0,
    ) -> HandleLike: ...

    def stats(self) -> EngineStats: ...

    def shutdown(self, timeout_s: float = 30.0) -> None: ...


@dataclass(frozen=True)
class ConstraintSpec:
    """A chat's constraint as data: the chat's options without its messages, and the prompt ids (whether the prompt
    ends inside `<think>` is read from them). Picklable; `build(tokenizer)` makes a fresh constraint."""

    request: ChatRequest
    prompt_ids: tuple[int, ...]
    vocab_size: int

    @classmethod
    def of(cls, chat: PreparedChat) -> ConstraintSpec:
        # the messages and template options are already rendered into the prompt: the constraint never reads them
        return cls(replace(chat.request, messages=(), template_kwargs=None), tuple(chat.prompt_ids), chat.vocab_size)

    def build(self, tokenizer: Tokenizer) -> Constraint | None:
        from minigpt_core.prompting import PreparedChat

        chat = PreparedChat(
            prompt_ids=list(self.prompt_ids),
            text="",
            thinking=self.request.thinking,
            parse_tools=False,
            single_tool_call=False,
            banned_token_ids=(),
            request=self.request,
            tokenizer=tokenizer,
            vocab_size=self.vocab_size,
        )
        return chat.constraint()


class PortableConstraint:
    """A constraint that also carries its `ConstraintSpec`: the in-process engine applies it as it is, the engine
    process's client sends the spec and the engine process builds it again."""

    def __init__(self, spec: ConstraintSpec, inner: Constraint) -> None:
        self.spec, self.inner = spec, inner

    def allowed(self) -> torch.Tensor | None:
        return self.inner.allowed()

    def advance(self, token_id: int) -> None:
        self.inner.advance(token_id)

    def is_finished(self) -> bool:
        return self.inner.is_finished()


def portable_constraints(chat: PreparedChat) -> Callable[[], PortableConstraint] | None:
    """`chat.constraint_factory()` (the first constraint is built now: an unenforceable schema raises
    InvalidRequest here) whose constraints carry their spec; None for free output."""
    factory = chat.constraint_factory()
    if factory is None:
        return None
    spec = ConstraintSpec.of(chat)

    def make() -> PortableConstraint:
        return PortableConstraint(spec, factory())

    return make


def spec_of(constraint: Constraint | None) -> ConstraintSpec | None:
    """What crosses to the engine process for `constraint` (None stays None); ConfigError for a constraint that
    carries no spec (only `portable_constraints` makes those that do)."""
    if constraint is None:
        return None
    if not isinstance(constraint, PortableConstraint):
        from minigpt_core.errors import ConfigError

        raise ConfigError(
            f"a {type(constraint).__name__} cannot be sent to the engine process: build it with "
            "minigpt_core.engine_api.portable_constraints"
        )
    return constraint.spec
