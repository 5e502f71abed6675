"""Token constraints: the small interface the engine applies before sampling, and the built-in ones.

What it is: a `Constraint` protocol (a mask of allowed next tokens, `advance` with the token actually
generated, `is_finished`), `AllOf` and `FirstOf` to combine several, and `ThinkBudget`, which caps the length of a
`<think>` block exactly by allowing only `</think>` once the budget is spent.

What it is not: no grammar engine lives here. The llguidance-backed constraint for JSON schemas and tool
calls (a later issue) only has to implement the same three methods. Constraints are stateful and belong to
one request; the engine calls them from its own thread, one request at a time, so they need no locks.

Semantics the engine relies on:
- `allowed()` returns a bool tensor of shape (V,) (True = may be sampled) or None for "no restriction".
  The engine applies it to the logits before sampling; an all-False mask fails that request ("error").
- `advance(token_id)` is called once for every generated token, in order, after sampling.
- `is_finished()` True means the constrained output is complete and generation must stop now
  (finish_reason "stop"); a constraint that only restricts a part of the output (ThinkBudget) never finishes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import torch

from minigpt_core.errors import InvalidRequest

logger = logging.getLogger(__name__)


@runtime_checkable
class Constraint(Protocol):
    """Restricts which token may come next. Implementations keep their own state per request."""

    def allowed(self) -> torch.Tensor | None:
        """Bool mask (V,) of the tokens allowed next, or None when anything goes."""
        ...

    def advance(self, token_id: int) -> None:
        """Record the token that was generated."""
        ...

    def is_finished(self) -> bool:
        """True when the constrained output is complete and generation must stop."""
        ...


class AllOf:
    """The conjunction of several constraints: a token is allowed only if every member allows it.

    Finished as soon as any member is finished (a member that ends the output ends it for all).
    """

    def __init__(self, constraints: Iterable[Constraint]) -> None:
        self.constraints: list[Constraint] = list(constraints)

    def allowed(self) -> torch.Tensor | None:
        mask: torch.Tensor | None = None
        for constraint in self.constraints:
            member = constraint.allowed()
            if member is None:
                continue
            member = member.to(torch.bool)
            if mask is None:
                mask = member
            else:
                if member.shape != mask.shape:
                    raise ValueError(f"constraint masks disagree in shape: {mask.shape} vs {member.shape}")
                mask = mask & member
        return mask

    def advance(self, token_id: int) -> None:
        for constraint in self.constraints:
            constraint.advance(token_id)

    def is_finished(self) -> bool:
        return any(constraint.is_finished() for constraint in self.constraints)


class FirstOf:
    """Either member, decided by the tokens: allows what any still-viable member allows.

    Each generated token is passed to the members that allowed it; the others drop out. Used for tools plus
    `response_format`: the answer is either tool calls or the structured answer, never free text.
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


class ThinkBudget:
    """Cap a `<think>` block at exactly `max_thinking_tokens` tokens, then force `</think>`.

    Counting starts when generation starts inside a think block (`inside=True`, `minigpt_core.prompting` decides
    from the prompt) or when the model emits `think_id` itself. After `max_thinking_tokens` generated tokens without
    `think_end_id`, only `think_end_id` is allowed; once `</think>` is seen the constraint stops restricting.
    A budget of 0 forces `</think>` at once. The budget counts only tokens strictly inside the block.

    When the budget forced the close, `stop_ids` (end-of-turn tokens) stay banned for the next
    `min_answer_tokens` tokens: a model cut off mid-thought tends to end the turn at once, and a client that
    capped the reasoning still asked for an answer. `minigpt_core.prompting` passes the end-of-turn tokens and 3
    (the template's "\n\n" after `</think>` is two tokens, so at least one answer token follows). A block the
    model closes itself is not touched.
    """

    def __init__(
        self,
        max_thinking_tokens: int,
        think_end_id: int,
        *,
        vocab_size: int,
        think_id: int | None = None,
        inside: bool = True,
        stop_ids: Iterable[int] = (),
        min_answer_tokens: int = 0,
    ) -> None:
        if isinstance(max_thinking_tokens, bool) or not isinstance(max_thinking_tokens, int):
            raise InvalidRequest("max_thinking_tokens must be an integer", param="max_thinking_tokens")
        if max_thinking_tokens < 0:
            raise InvalidRequest("max_thinking_tokens must be >= 0", param="max_thinking_tokens")
        if not 0 <= think_end_id < vocab_size:
            raise ValueError(f"think_end_id {think_end_id} is outside the vocabulary of {vocab_size}")
        self.max_thinking_tokens = max_thinking_tokens
        self.think_end_id = think_end_id
        self.think_id = think_id
        self.vocab_size = vocab_size
        self.inside = inside
        if min_answer_tokens < 0:
            raise ValueError(f"min_answer_tokens must be >= 0, got {min_answer_tokens}")
        self.stop_ids = tuple(stop_ids)
        self.min_answer_tokens = min_answer_tokens
        self.closed = False  # True once </think> was generated
        self.forced = False  # True when the budget (not the model) closed the block
        self.thinking_tokens = 0
        self.answer_tokens = 0  # tokens generated after a forced close, counted up to min_answer_tokens
        self._only_end: torch.Tensor | None = None  # built lazily, reused
        self._no_stop: torch.Tensor | None = None

    def allowed(self) -> torch.Tensor | None:
        if self.closed:
            if not self.forced or self.answer_tokens >= self.min_answer_tokens or not self.stop_ids:
                return None
            if self._no_stop is None:
                mask = torch.ones(self.vocab_size, dtype=torch.bool)
                mask[[i for i in self.stop_ids if 0 <= i < self.vocab_size]] = False
                self._no_stop = mask
            return self._no_stop
        if not self.inside or self.thinking_tokens < self.max_thinking_tokens:
            return None
        if self._only_end is None:
            mask = torch.zeros(self.vocab_size, dtype=torch.bool)
            mask[self.think_end_id] = True
            self._only_end = mask
        return self._only_end

    def advance(self, token_id: int) -> None:
        if self.closed:
            if self.forced:
                self.answer_tokens += 1
            return
        if not self.inside:
            if self.think_id is not None and token_id == self.think_id:
                self.inside = True
            return
        if token_id == self.think_end_id:
            self.closed = True
            self.forced = self.thinking_tokens >= self.max_thinking_tokens
            logger.debug("think block closed after %d tokens", self.thinking_tokens)
        else:
            self.thinking_tokens += 1

    def is_finished(self) -> bool:
        return False


def prompt_ends_inside_think(prompt_ids: Iterable[int], think_id: int, think_end_id: int) -> bool:
    """True when the last `think_id` in the prompt is not followed by a `think_end_id`."""
    inside = False
    for token_id in prompt_ids:
        if token_id == think_id:
            inside = True
        elif token_id == think_end_id:
            inside = False
    return inside
