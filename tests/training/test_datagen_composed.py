"""Issue 18's corpus properties: composed tools (many distinct schemas, values copied per argument), refusals that
never recite an unoffered tool, a sane refusal share, system personas, world questions, and budget-cut thoughts.

All built with the generator's own entry points at a small scale (a few thousand dialogues, seconds)."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from typing import Any

import pytest

from training.datagen import api_specs, composed_tools, persona, schema_errors
from training.datagen.base import make_rng
from training.datagen.corpus import SFT_KINDS, sft_conversation
from training.datagen.identity import NAME
from training.datagen.math_dialogues import budget_cut, math_conversation
from training.datagen.stats import main as stats_cli
from training.datagen.stats import sft_stats

Conv = list[dict[str, Any]]


def composed(n: int, split: str = "train", seed: int = 0) -> list[Conv]:
    rng = random.Random(seed)
    return [composed_tools.composed_conversation(rng, split) for _ in range(n)]  # type: ignore[arg-type]


def sft_rows(n: int, seed: int = 0) -> list[Conv]:
    rng = make_rng(seed, "sft", "train")
    return [sft_conversation(rng, "train") for _ in range(n)]


def offered(conv: Conv) -> dict[str, dict[str, Any]]:
    return {t["function"]["name"]: t for m in conv for t in m.get("tools") or []}


def calls(conv: Conv) -> list[dict[str, Any]]:
    return [c for m in conv for c in m.get("tool_calls") or []]


def test_composed_tools_are_nearly_all_distinct_and_bfcl_shaped() -> None:
    convs = composed(800)
    tools = [t["function"] for conv in convs for t in offered(conv).values()]
    names = Counter(t["name"] for t in tools)
    descriptions = Counter(t["description"] for t in tools)
    assert len(tools) > 1500
    assert len(names) > 0.95 * len(tools), names.most_common(3)  # a new tool in nearly every slot
    assert len(descriptions) > 0.6 * len(tools), descriptions.most_common(3)
    assert max(descriptions.values()) < 10
    n_params = Counter(len(t["parameters"]["properties"]) for t in tools)
    assert set(n_params) >= {1, 2, 3, 4, 5}, n_params
    for t in tools:
        props = t["parameters"]["properties"]
        assert all(p["description"] for p in props.values())  # every parameter described, BFCL style
        assert set(t["parameters"]["required"]) <= set(props) and t["parameters"]["required"]
    optional_with_default = sum(
        "efault" in p["description"] for t in tools for p in t["parameters"]["properties"].values()
    )
    assert optional_with_default > 300


def test_composed_calls_copy_every_value_from_the_request() -> None:
    shapes: Counter[str] = Counter()
    for conv in composed(1200, seed=1):
        tools, request, made = offered(conv), conv[1]["content"], calls(conv)
        if not made:
            shapes["no call"] += 1
            continue
        shapes["parallel" if len(made) > 1 else "single"] += 1
        for call in made:
            args = json.loads(call["function"]["arguments"])
            assert not schema_errors(tools[call["function"]["name"]]["function"]["parameters"], args), call
            numbers = [v for v in args.values() if isinstance(v, int | float) and not isinstance(v, bool)]
            assert len(set(numbers)) == len(numbers), args  # distinct per argument: copying, not a constant
            for value in args.values():
                for item in value if isinstance(value, list) else [value]:
                    if not isinstance(item, bool):
                        assert str(item) in request, (item, request)
    assert shapes["single"] > 600 and shapes["parallel"] > 150 and 100 < shapes["no call"] < 260, shapes


def test_refusals_name_only_offered_tools_and_recite_no_description() -> None:
    descriptions = {s.does.rstrip(".").lower() for s in api_specs.SPECS}
    identifier = re.compile(r"\b[A-Za-z]+(?:_[A-Za-z0-9]+)+\b|\b[a-z]+(?:[A-Z][a-z0-9]+)+\b")
    refusals = 0
    for conv in sft_rows(3000) + composed(600, seed=2):
        tools = offered(conv)
        if not tools or calls(conv):
            continue
        answer = conv[-1]["content"]
        refusals += 1
        assert not any(d in answer.lower() for d in descriptions), answer
        for name in identifier.findall(answer):
            assert name in tools, (name, answer)
    assert refusals > 200


def test_refusal_share_is_a_sane_prior() -> None:
    rows = [conv for conv in sft_rows(4000, seed=3) if offered(conv)]
    share = sum(not calls(conv) for conv in rows) / len(rows)
    assert 0.1 < share < 0.22, share  # was 0.26 over every tool dialogue, 0.30 in the built-in tool mix
    assert len(rows) > 0.45 * 4000


def test_sft_rows_are_unique_and_tools_are_varied() -> None:
    rows = sft_rows(4000, seed=4)
    keys = Counter(json.dumps([{k: v for k, v in m.items() if k != "tool_call_id"} for m in conv], sort_keys=True)
                   for conv in rows)  # fmt: skip
    assert len(keys) > 0.93 * len(rows)
    described = Counter(t["function"]["description"] for conv in rows for t in offered(conv).values())
    assert len(described) > 0.5 * sum(described.values()), described.most_common(3)
    assert abs(sum(w for w, _ in SFT_KINDS.values()) - 1.0) < 1e-9


def test_system_persona_wins_and_world_questions_are_not_identity() -> None:
    personas = worlds = 0
    for conv in sft_rows(3000, seed=5):
        system = next((m["content"] for m in conv if m["role"] == "system"), "")
        if re.match(r"(You are|Your name is|Act as|Role:|你是|你的名字叫)", system) and "MiniGPT" not in system:
            if "tools" in conv[0] or "helpful" in system or "乐于助人" in system:
                continue
            personas += 1
            assert NAME not in conv[-1]["content"], conv
    rng = random.Random(6)
    for _ in range(300):
        system, _question, answer, name = persona.persona_exchange(rng, "train")
        assert name in system and name in answer and NAME not in answer
        _q, a, word = persona.world_question(rng, "train")
        assert word in a and NAME not in a
        worlds += 1
    assert personas > 40 and worlds
    record = persona.persona_eval(random.Random(7))
    messages = record["messages"]
    assert isinstance(messages, list) and messages[0]["role"] == "system" and record["must_not_contain"] == [NAME]


def test_budget_cut_thoughts_continue_in_the_answer() -> None:
    for seed in range(300):
        full = math_conversation(random.Random(seed), "train", think=True, cut_share=0.0)[-1]
        cut = math_conversation(random.Random(seed), "train", think=True, cut_share=1.0)[-1]
        assert cut["content"].endswith(full["content"])  # the same final sentence after the steps left
        squeeze = "".join(full["reasoning_content"].split())
        assert squeeze.startswith("".join(cut["reasoning_content"].split()))
        assert len(cut["reasoning_content"]) < len(full["reasoning_content"])
    reasoning = "First 12 × 3 = 36. Then 36 + 36 = 72."
    for seed in range(30):
        thought, answer = budget_cut(random.Random(seed), reasoning, "The total is 72.")
        assert reasoning.startswith(thought) and answer.endswith("The total is 72.")
        assert "36 + 36 = 72" in thought + " " + answer and "12 × 3 = 72" not in answer
    assert math_conversation(random.Random(1), "val", think=True, cut_share=1.0)[-1]["content"]  # val: never cut


def test_stats_count_the_corpus_the_generator_writes(capsys: pytest.CaptureFixture[str]) -> None:
    stats = sft_stats(seed=0, scale=0.25)
    assert stats["rows"] == 1500 and stats["demo_sft_epochs"] == 256.0
    assert sum(stats["kinds"].values()) == 1500 and stats["distinct_rows"] > 0.93 * 1500
    assert 0.1 < stats["no_call_share"] < 0.22
    descriptions = stats["offered_descriptions"]
    assert descriptions["distinct"] > 0.5 * descriptions["total"]
    repeated, multi = stats["calls_with_a_repeated_number"]
    assert multi > 100 and repeated < 0.02 * multi
    assert stats_cli(["--scale", "0.01"]) == 0 and json.loads(capsys.readouterr().out)["rows"] == 60
    assert stats_cli(["--scale", "0"]) == 2
