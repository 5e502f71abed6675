"""Fixture data for the preference and RLHF tests: a trivially learnable preference and toy prompts.

What it is: `pet_pairs` (the chosen answer names an animal, the rejected one an object; pairs are drawn from
the same small word pools, so a tiny model can learn the preference and carry it to held-out pairs) and
`prompt_records` (plain user prompts for GRPO rollouts).
What it is not: the bundled corpus (training.datagen) or a pytest fixture module.
"""

from __future__ import annotations

import random
from typing import Any

GOOD = ("cat", "dog", "bird", "fish", "horse", "mouse", "sheep", "goat")
BAD = ("table", "chair", "spoon", "window", "paper", "stone", "door", "wall")


def _chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def pet_pairs(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _i in range(n):
        question = f"name a pet, please ({rng.randint(0, 99)})"
        good, bad = rng.choice(GOOD), rng.choice(BAD)
        out.append({"kind": "pet", "chosen": _chat(question, f"a {good}."), "rejected": _chat(question, f"a {bad}.")})
    return out


def prompt_records(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": f"say something {rng.randint(0, 999)}"}]} for _ in range(n)]
