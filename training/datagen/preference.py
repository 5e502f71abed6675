"""Preference pairs for DPO and reward models: {"chosen": [messages], "rejected": [messages]}.

What it is: pairs that share the prompt and differ only in the last assistant turn, where the difference is real
and checkable — correct vs wrong arithmetic, correct vs wrong tool (or a wrong argument value), on-identity vs
off-identity, concise vs rambling. Each pair records its `kind` so evaluations can break accuracy down.
What it is not: a DPO trainer or a reward function (training/ stages own those).
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

from training.datagen import math_dialogues, smalltalk
from training.datagen.base import Conversation, Split, assistant, assistant_calls, maybe_system, system_message, user
from training.datagen.base import tool_call as make_call
from training.datagen.identity import sample_qa
from training.datagen.tool_dialogues import builtin_or_synthetic, offered_tools

Pair = dict[str, Any]

OFF_IDENTITY = {
    "en": (
        "I am ChatGPT, a large language model trained by OpenAI.",
        "I'm Claude, an AI assistant made by Anthropic.",
        "I am Gemini, developed by Google.",
        "I am Llama, created by Meta.",
    ),
    "zh": (
        "我是 ChatGPT，由 OpenAI 开发的大型语言模型。",
        "我是文心一言，由百度开发。",
        "我是通义千问，由阿里云开发。",
    ),
}
RAMBLE_OPEN = (
    "Well, that is a really interesting question, and there are many, many things one could say about it. ",
    "Great question! Before I answer, let me say that I have thought about this a lot, in many different ways. ",
    "Hmm, let me think about this for a while, because it deserves a long and careful answer. ",
)
RAMBLE_CLOSE = (
    " I hope this long explanation helps, and I could go on about it for much longer if you like.",
    " Anyway, that is more or less my answer, although there is always more to say about everything.",
    " Of course, this is just one way to look at it, and other people might say something else entirely.",
)


def _replace_last(text: str, old: str, new: str) -> str:
    head, sep, tail = text.rpartition(old)
    return head + new + tail if sep else text


def _wrong_number(rng: random.Random, answer: int) -> int:
    while True:
        wrong = answer + rng.choice((-10, -2, -1, 1, 2, 10, answer or 1))
        if wrong != answer and wrong >= 0:
            return wrong


def arithmetic_pair(rng: random.Random, split: Split) -> Pair:
    problem = math_dialogues.sample_problem(rng, split)
    prompt = [*maybe_system(rng, split, 0.3), user(problem.question)]
    wrong = str(_wrong_number(rng, problem.answer))
    think = rng.random() < 0.5
    good_reasoning = problem.reasoning if think else None
    bad_reasoning = _replace_last(problem.reasoning, str(problem.answer), wrong) if think else None
    return {
        "kind": "arithmetic",
        "chosen": [*prompt, assistant(problem.final, good_reasoning)],
        "rejected": [*prompt, assistant(_replace_last(problem.final, str(problem.answer), wrong), bad_reasoning)],
    }


def _mutate(rng: random.Random, arguments: dict[str, Any]) -> dict[str, Any]:
    """The same arguments with one value changed (a number shifted, a string altered, a bool flipped)."""
    changed = copy.deepcopy(arguments)
    key = rng.choice(sorted(changed))
    value = changed[key]
    if isinstance(value, bool):
        changed[key] = not value
    elif isinstance(value, int | float):
        changed[key] = value + rng.choice((1, 2, 5, 10))
    elif isinstance(value, str):
        changed[key] = value[::-1] if len(set(value)) > 1 else value + "x"
    else:
        changed[key] = None if not isinstance(value, list) else []
    return changed


def tool_pair(rng: random.Random, split: Split) -> Pair:
    scenario = builtin_or_synthetic(rng, split)[0]
    tools = offered_tools(rng, split, [scenario.tool], rng.randint(2, 4))
    prompt = [system_message(rng, split, tools), user(scenario.request)]
    good = make_call(rng, scenario.name, scenario.arguments)
    others = [t["function"]["name"] for t in tools if t["function"]["name"] != scenario.name]
    if rng.random() < 0.5:
        bad = make_call(rng, rng.choice(others), scenario.arguments)
    else:
        bad = make_call(rng, scenario.name, _mutate(rng, scenario.arguments))
    bad["id"] = good["id"]
    if bad["function"] == good["function"]:  # a mutation can be a no-op (e.g. a palindrome): use a wrong tool
        bad["function"] = {"name": rng.choice(others), "arguments": json.dumps(scenario.arguments)}
    return {"kind": "tool", "chosen": [*prompt, assistant_calls([good])], "rejected": [*prompt, assistant_calls([bad])]}


def identity_pair(rng: random.Random, split: Split) -> Pair:
    qa = sample_qa(rng, split)
    prompt = [*maybe_system(rng, split, 0.3), user(qa.question)]
    return {
        "kind": "identity",
        "chosen": [*prompt, assistant(qa.answer)],
        "rejected": [*prompt, assistant(rng.choice(OFF_IDENTITY[qa.lang]))],
    }


def concise_pair(rng: random.Random, split: Split) -> Pair:
    question, answer = smalltalk.sample_chat(rng, split)
    prompt: Conversation = [*maybe_system(rng, split, 0.3), user(question)]
    rambling = rng.choice(RAMBLE_OPEN) + answer + rng.choice(RAMBLE_CLOSE) + rng.choice(RAMBLE_CLOSE)
    return {"kind": "concise", "chosen": [*prompt, assistant(answer)], "rejected": [*prompt, assistant(rambling)]}


PAIR_KINDS = (arithmetic_pair, tool_pair, identity_pair, concise_pair)


def preference_pair(rng: random.Random, split: Split) -> Pair:
    """One pair of a random kind (the four kinds equally likely)."""
    return rng.choice(PAIR_KINDS)(rng, split)
