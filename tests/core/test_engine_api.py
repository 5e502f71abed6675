"""minigpt_core.engine_api: a chat's constraint sent to another process as a ConstraintSpec is the same constraint."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from minigpt_core.engine_api import ConstraintSpec, PortableConstraint, portable_constraints, spec_of
from minigpt_core.errors import ConfigError
from minigpt_core.prompting import ChatRequest, prepare
from minigpt_core.tokenizer import Tokenizer

TOKENIZER = Path(__file__).parents[2] / "minigpt_core" / "assets" / "tokenizer.json"
USER = [{"role": "user", "content": "what is 2 + 3?"}]
CALC: Any = {
    "type": "function",
    "function": {
        "name": "calc",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
    },
}


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_file(TOKENIZER)


def masks(constraint: Any, tokens: list[int]) -> list[torch.Tensor | None]:
    """The allowed mask before each of `tokens` (each advanced after its mask)."""
    out = []
    for token in tokens:
        out.append(constraint.allowed())
        constraint.advance(token)
    return out


@pytest.mark.parametrize(
    "request_",
    [
        ChatRequest(USER, [CALC], "required", max_thinking_tokens=3, thinking=True),
        ChatRequest(USER, json_answer=True, json_schema={"type": "object", "properties": {"a": {"type": "integer"}}}),
        ChatRequest(USER, max_thinking_tokens=2, thinking=True),
    ],
    ids=["tools+budget", "json", "budget"],
)
def test_a_pickled_spec_builds_the_same_constraint(tok: Tokenizer, request_: ChatRequest) -> None:
    chat = prepare(request_, tok, vocab_size=tok.vocab_size)
    make = portable_constraints(chat)
    assert make is not None
    here = make()
    assert isinstance(here, PortableConstraint)
    spec = pickle.loads(pickle.dumps(spec_of(here)))
    assert isinstance(spec, ConstraintSpec) and spec.request.messages == ()  # the messages stay behind
    there = spec.build(Tokenizer.from_file(TOKENIZER))  # the other process's own tokenizer
    # walk both along what the first allows: '{' / a tag / a word, then whatever each next mask allows first
    path: list[int] = []
    probe = make()
    for _ in range(6):
        mask = probe.allowed()
        token = int(mask.nonzero()[0]) if mask is not None else 10
        probe.advance(token)
        path.append(token)
    ours, theirs = masks(here, path), masks(there, path)
    assert any(m is not None for m in ours)  # something was constrained
    for a, b in zip(ours, theirs, strict=True):
        assert (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


def test_free_output_has_no_constraint_and_a_plain_constraint_cannot_leave(tok: Tokenizer) -> None:
    assert portable_constraints(prepare(ChatRequest(USER), tok, vocab_size=tok.vocab_size)) is None
    assert spec_of(None) is None
    plain = prepare(ChatRequest(USER, max_thinking_tokens=2, thinking=True), tok, vocab_size=tok.vocab_size)
    with pytest.raises(ConfigError, match="portable_constraints"):
        spec_of(plain.constraint())
