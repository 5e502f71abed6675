"""What the engine keeps per request (`Request`: its slot, progress and how each new token is accounted and
stopped), what it hands the consumer per token (`TokenEvent`), and the engine's monotonic counters. Written by
the engine thread only; the slot and step logic is in scheduler.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from minigpt_core.constraints import Constraint
from minigpt_core.sampling import RequestSampler, SampledToken, SamplingParams, is_simple


@dataclass
class TokenEvent:
    """One generated token, or the end of a request.

    `finish_reason` is None while generating, else "stop" (EOS, a stop token or a finished constraint; the
    event still carries that token), "length" (max_new_tokens or the context end; carries the last token),
    "cancelled" or "error" (both with `token_id` None; "error" has a message in `error`).
    """

    token_id: int | None
    logprob: float | None
    top_logprobs: list[tuple[int, float]] | None
    finish_reason: str | None
    error: str | None = None
    cached_tokens: int = 0  # on a request's first token: prompt tokens served from the prefix cache


@dataclass(eq=False)
class Request:
    """One request inside the engine. `num_cached` tokens of prompt + output sit in the slot's KV cache."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    sampler: RequestSampler
    constraint: Constraint | None
    emit: Callable[[TokenEvent], None]
    is_cancelled: Callable[[], bool]
    slot: int = -1
    num_cached: int = 0
    num_generated: int = 0
    last_token: int = -1
    finished: bool = False
    adapter: int = 0  # LoRA adapter index (minigpt_core.lora); 0 = the base model
    cached_tokens: int = 0  # prompt tokens whose keys/values came from the prefix cache
    output_ids: list[int] = field(default_factory=list)
    error: bool = False

    @property
    def prefilled(self) -> bool:
        return self.num_cached >= len(self.prompt_ids)

    def record(self, sampled: SampledToken, eos_token_ids: frozenset[int], max_model_len: int) -> TokenEvent:
        """Take `sampled` as the next token: penalties' counts, the constraint, the stop decision; its event."""
        token_id = sampled.token_id
        self.sampler.observe(token_id)
        if self.constraint is not None:
            self.constraint.advance(token_id)
        reason = self.stop_reason(token_id, eos_token_ids, max_model_len)
        self.num_generated += 1
        self.last_token = token_id
        self.output_ids.append(token_id)
        top = sampled.top_logprobs if self.params.top_logprobs > 0 else None
        event = TokenEvent(token_id, sampled.logprob, top, reason)
        if self.num_generated == 1:
            event.cached_tokens = self.cached_tokens
        return event

    def stop_reason(self, token_id: int, eos_token_ids: frozenset[int], max_model_len: int) -> str | None:
        """Why the request ends with `token_id` as its next token: "stop", "length", or None to go on."""
        params = self.params
        if token_id in eos_token_ids and not params.ignore_eos:
            return "stop"
        if token_id in params.stop_token_ids:
            return "stop"
        if self.constraint is not None and self.constraint.is_finished():
            return "stop"
        # The budget counts this token (num_generated is bumped after this check).
        if self.num_generated + 1 >= params.max_new_tokens:
            return "length"
        if len(self.prompt_ids) + self.num_generated + 1 >= max_model_len:
            return "length"
        return None


@dataclass
class Counters:
    """Monotonic totals for /metrics; written by the engine thread only."""

    prompt_tokens: int = 0  # prefilled (computed) prompt tokens
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    generation_tokens: int = 0
    steps: int = 0
    finished: dict[str, int] = field(default_factory=dict)


def batched_sampling(seq: Request) -> bool:
    """Whether `seq`'s tokens can be drawn by the batched device sampler (no grammar, see `is_simple`)."""
    return seq.constraint is None and is_simple(seq.params)


def sampling_mode(params: list[SamplingParams]) -> str:
    """How a batch is sampled: "greedy" (argmax only), "sample", or "seeded" (some rows replay from their seed)."""
    if all(p.greedy for p in params):
        return "greedy"
    return "seeded" if any(p.seed is not None and not p.greedy for p in params) else "sample"
