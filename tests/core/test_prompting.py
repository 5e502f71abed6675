"""minigpt_core.prompting: the one chat -> engine-request path (server, minigpt-generate, evals, GRPO)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from minigpt_core.constraints import AllOf, ThinkBudget
from minigpt_core.errors import InvalidRequest
from minigpt_core.prompting import ChatRequest, prepare
from minigpt_core.tokenizer import THINK_END_ID, TOOL_CALL_ID, Tokenizer

TOKENIZER = Path(__file__).parents[2] / "minigpt_core" / "assets" / "tokenizer.json"
USER = [{"role": "user", "content": "what is 2 + 3?"}]


def tool(name: str) -> dict[str, object]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_file(TOKENIZER)


def test_tools_shown_banned_ids_and_tool_choice_checks(tok: Tokenizer) -> None:
    plain = prepare(ChatRequest(USER), tok, vocab_size=tok.vocab_size)
    assert plain.banned_token_ids == (TOOL_CALL_ID,) and not plain.parse_tools
    assert plain.constraint_factory() is None
    tools = [tool("calc"), tool("clock")]
    offered = prepare(ChatRequest(USER, tools), tok, vocab_size=tok.vocab_size)
    assert offered.banned_token_ids == () and offered.parse_tools and '"clock"' in offered.text
    named = ChatRequest(USER, tools, {"type": "function", "function": {"name": "calc"}})
    assert '"clock"' not in prepare(named, tok, vocab_size=tok.vocab_size).text  # only the named tool is shown
    none = prepare(ChatRequest(USER, tools, "none"), tok, vocab_size=tok.vocab_size)
    assert none.banned_token_ids == (TOOL_CALL_ID,) and '"calc"' not in none.text
    kept = prepare(ChatRequest(USER, tools, "none", show_tools_when_none=True), tok, vocab_size=tok.vocab_size)
    assert kept.text == offered.text and kept.banned_token_ids == ()
    for bad in (ChatRequest(USER, [tool("a"), tool("a")]), ChatRequest(USER, None, "required")):
        with pytest.raises(InvalidRequest):
            prepare(bad, tok, vocab_size=tok.vocab_size)


def test_think_budget_is_a_constraint_beside_the_grammar(tok: Tokenizer) -> None:
    free = prepare(ChatRequest(USER, thinking=True, max_thinking_tokens=2), tok, vocab_size=tok.vocab_size)
    budget = free.constraint()
    assert isinstance(budget, ThinkBudget) and budget.inside and budget.min_answer_tokens == 3
    budget.advance(100)
    budget.advance(101)
    mask = budget.allowed()
    assert mask is not None and mask.nonzero().flatten().tolist() == [THINK_END_ID]
    chat = ChatRequest(USER, [tool("calc")], thinking=True, max_thinking_tokens=2)
    both = prepare(chat, tok, vocab_size=tok.vocab_size).constraint()
    assert isinstance(both, AllOf) and isinstance(both.constraints[1], ThinkBudget)
    assert both.constraints[1].min_answer_tokens == 0  # the grammar decides when the answer may end
    assert (
        prepare(ChatRequest(USER, [tool("calc")], grammar=False), tok, vocab_size=tok.vocab_size).constraint() is None
    )


def test_importing_it_does_not_import_torch() -> None:
    code = "import sys, minigpt_core.prompting; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
