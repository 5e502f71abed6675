"""Rule-based verifiable rewards for RLHF: arithmetic answer, tool call, think format, length.

What it is: `Completion` (one sampled answer: the prompt record, generated ids, finish reason and the parsed
reasoning / content / tool calls), the rules (each `Completion -> float | None`, None meaning "does not apply to
this prompt"), the registry `RULES` and `RewardSet`, which sums the applicable rules of a `--reward a,b` list:
- `arithmetic`: 1 when the last number of the answer equals the record's `"answer"` (records without one: n/a);
- `tool`: for records with an `"expected"` call: 0 no call, 0.5 one well-formed call (known tool, JSON-object
  arguments), 1 the expected name with the expected arguments;
- `think`: with thinking on, 1 when the answer has a non-empty reasoning closed by `</think>` and then a non-empty
  answer without stray tags;
- `length`: 1 - generated / max_new_tokens for an answer that ended by itself, 0 for one cut at the limit.
What it is not: the learned reward model (training.reward_model) or evaluation reports (training.evals).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from minigpt_core.errors import ConfigError
from minigpt_core.output_parser import ParsedOutput
from minigpt_core.tokenizer import EOT_ID, IM_END_ID, NUM_SPECIAL, THINK_END_ID, THINK_ID

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
_ENDS = frozenset({IM_END_ID, EOT_ID})


@dataclass(frozen=True)
class Completion:
    record: dict[str, Any]  # the prompt record: {"messages", optional "answer" / "tools" + "expected"}
    token_ids: list[int]  # generated ids, the end-of-turn token included when the model stopped
    finish_reason: str | None
    parsed: ParsedOutput
    thinking: bool
    max_new_tokens: int


RewardFn = Callable[[Completion], float | None]


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def arithmetic_reward(c: Completion) -> float | None:
    if "answer" not in c.record:
        return None
    got = last_number(c.parsed.content)
    try:
        want = float(c.record["answer"])
    except (TypeError, ValueError):
        return None
    return 1.0 if got is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9) else 0.0


def _offered_tools(record: dict[str, Any]) -> set[str]:
    names = set()
    for tool in record.get("tools") or []:
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            names.add(fn["name"])
    return names


def _same(a: Any, b: Any) -> bool:
    """JSON equality with numbers compared by value (1 == 1.0) and bools kept apart from numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def tool_reward(c: Completion) -> float | None:
    expected = c.record.get("expected")
    if not isinstance(expected, dict):
        return None
    calls = c.parsed.tool_calls
    if len(calls) != 1:
        return 0.0
    call = calls[0]
    try:
        arguments = json.loads(call.arguments_json)
    except ValueError:
        return 0.0
    if not isinstance(arguments, dict) or call.name not in _offered_tools(c.record):
        return 0.0
    if call.name == expected.get("name") and _same(arguments, expected.get("arguments", {})):
        return 1.0
    return 0.5


def think_reward(c: Completion) -> float | None:
    if not c.thinking:
        return None
    ids = list(c.token_ids)
    if ids and ids[0] == THINK_ID:
        ids = ids[1:]
    if THINK_END_ID not in ids:
        return 0.0
    end = ids.index(THINK_END_ID)
    if any(t < NUM_SPECIAL for t in ids[:end]) or not c.parsed.reasoning.strip():
        return 0.0
    if any(t < NUM_SPECIAL and t not in _ENDS for t in ids[end + 1 :]):
        return 0.0
    content = c.parsed.content
    if not content.strip() or "<think>" in content or "</think>" in content:
        return 0.0
    return 1.0


def length_reward(c: Completion) -> float | None:
    if c.finish_reason != "stop":
        return 0.0
    return max(0.0, 1.0 - len(c.token_ids) / max(c.max_new_tokens, 1))


RULES: dict[str, RewardFn] = {
    "arithmetic": arithmetic_reward,
    "tool": tool_reward,
    "think": think_reward,
    "length": length_reward,
}


def parse_reward_names(spec: str) -> list[str]:
    """'arithmetic,think' → ['arithmetic', 'think']; ConfigError on an unknown name."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in RULES]
    if unknown:
        raise ConfigError(f"unknown reward {', '.join(unknown)}; choose from {', '.join(RULES)}")
    return names


class RewardSet:
    """The sum of the applicable rules; `breakdown` also reports each rule's mean over the batch."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)

    def score(self, c: Completion) -> tuple[float, dict[str, float]]:
        parts: dict[str, float] = {}
        for name in self.names:
            value = RULES[name](c)
            if value is not None:
                parts[name] = value
        return sum(parts.values()), parts

    def score_all(self, completions: Sequence[Completion]) -> tuple[list[float], dict[str, float]]:
        """Totals per completion and, per rule, its mean over the completions it applied to."""
        totals: list[float] = []
        sums: dict[str, list[float]] = {}
        for c in completions:
            total, parts = self.score(c)
            totals.append(total)
            for name, value in parts.items():
                sums.setdefault(name, []).append(value)
        return totals, {f"reward_{k}": sum(v) / len(v) for k, v in sums.items()}
