"""Tool-calling conversations and held-out tool eval prompts, built from built-in and synthetic scenarios.

What it is: the dialogue shapes the model must learn — system (with 1-4 offered tools, the right one among
distractors) → user → assistant `tool_calls` → tool result → final answer; two calls in one turn; and prompts
where no offered tool fits (a plain answer, no call). Also `tool_eval` records for `minigpt-eval tools`.
What it is not: scenario content (tools_data.py, synthetic_tools.py) or rendering (the chat template).
"""

from __future__ import annotations

import random
from typing import Any

from training.datagen import math_dialogues, smalltalk
from training.datagen.base import (
    Conversation,
    Split,
    assistant,
    assistant_calls,
    is_zh,
    register_templates,
    system_message,
    tool_call,
    tool_result,
    user,
)
from training.datagen.identity import sample_qa
from training.datagen.synthetic_tools import SyntheticTool, distractor_tools, make_tool, synthetic_scenario
from training.datagen.tools_data import BUILTIN_NAMES, BUILTIN_SCENARIOS, ToolScenario, builtin_schema

UNSUPPORTED = register_templates(
    "tools.unsupported",
    {
        "train": (
            "What's the weather in {city} today?",
            "Send an email to {name} saying hello.",
            "Book me a taxi to the airport.",
            "What is the price of Bitcoin right now?",
            "Play some music, please.",
            "Translate 'good night' into French.",
            "明天{city}会下雨吗？",
        ),
        "val": (
            "Order a pizza to my house.",
            "Turn off the lights in the kitchen.",
            "帮我给{name}打个电话。",
            "Is it going to snow in {city} tomorrow?",
        ),
    },
)
UNSUPPORTED_ANSWERS = (
    "I can't do that: none of my tools can help with this request.",
    "Sorry, I don't have a tool for that, so I can't do it.",
)
UNSUPPORTED_ANSWERS_ZH = ("抱歉，我没有能完成这个请求的工具。",)
CITIES = ("London", "Paris", "Beijing", "Tokyo", "Sydney", "Toronto")
PEOPLE = ("Alice", "Bob", "Lena", "Chen", "Maria")


def builtin_or_synthetic(
    rng: random.Random, split: Split, synthetic_share: float = 0.5
) -> tuple[ToolScenario, SyntheticTool | None]:
    """One single-call scenario (synthetic with probability `synthetic_share`) and its synthetic spec if any."""
    if rng.random() < synthetic_share:
        return synthetic_scenario(rng, split)
    return BUILTIN_SCENARIOS[rng.choice(BUILTIN_NAMES)](rng, split), None


def offered_tools(rng: random.Random, split: Split, needed: list[dict[str, Any]], total: int) -> list[dict[str, Any]]:
    """`needed` plus distractors (built-in and synthetic, distinct names) up to `total`, shuffled."""
    tools = list(needed)
    names = {t["function"]["name"] for t in tools}
    while len(tools) < total:
        if rng.random() < 0.5:
            candidate = builtin_schema(rng.choice(BUILTIN_NAMES))
        else:
            candidate = make_tool(rng, split).tool
        if candidate["function"]["name"] not in names:
            names.add(candidate["function"]["name"])
            tools.append(candidate)
    rng.shuffle(tools)
    return tools


def _tool_count(rng: random.Random, minimum: int = 1) -> int:
    """How many tools to offer: 1-4, fewer more often (long schema lists cost a small model context)."""
    return max(minimum, rng.choices((1, 2, 3, 4), weights=(3, 3, 2, 1))[0])


def single_call_dialogue(rng: random.Random, split: Split, think: bool) -> Conversation:
    scenario, spec = builtin_or_synthetic(rng, split, synthetic_share=0.6)
    if spec is not None and rng.random() < 0.4:
        # distractors that share the noun force the model to read the verb in the name
        tools = [scenario.tool, *distractor_tools(rng, split, spec, rng.randint(1, 3))]
        rng.shuffle(tools)
    else:
        tools = offered_tools(rng, split, [scenario.tool], _tool_count(rng))
    call = tool_call(rng, scenario.name, scenario.arguments)
    return [
        system_message(rng, split, tools),
        user(scenario.request),
        assistant_calls([call], scenario.reasoning if think else None),
        tool_result(call, scenario.result),
        assistant(scenario.answer),
    ]


def _join(first: str, second: str) -> str:
    if is_zh(first + second):
        return f"{first} 另外，{second}"
    second = second[0].lower() + second[1:] if second[:2] != "I " else second
    return f"{first} Also, {second}"


def parallel_dialogue(rng: random.Random, split: Split) -> Conversation:
    """Two independent requests in one message: two calls in one assistant turn, two results, one answer."""
    first = builtin_or_synthetic(rng, split, synthetic_share=0.3)[0]
    second = builtin_or_synthetic(rng, split, synthetic_share=0.3)[0]
    while True:  # both requests in one language: mixed-language messages are rare in the wild
        same_language = is_zh(first.request) == is_zh(second.request)
        if same_language and (first.name != second.name or first.tool == second.tool):
            break  # (one name offered twice with two schemas would make one call invalid)
        second = builtin_or_synthetic(rng, split, synthetic_share=0.3)[0]
    needed = [first.tool] if first.name == second.name else [first.tool, second.tool]
    tools = offered_tools(rng, split, needed, max(len(needed), _tool_count(rng, len(needed))))
    calls = [tool_call(rng, first.name, first.arguments), tool_call(rng, second.name, second.arguments)]
    return [
        system_message(rng, split, tools),
        user(_join(first.request, second.request)),
        assistant_calls(calls),
        tool_result(calls[0], first.result),
        tool_result(calls[1], second.result),
        assistant(f"{first.answer} {second.answer}"),
    ]


def no_fit_exchange(rng: random.Random, split: Split, offered: list[dict[str, Any]]) -> tuple[str, str]:
    """A request that none of `offered` serves, and its plain answer."""
    names = {t["function"]["name"] for t in offered}
    roll = rng.random()
    if roll < 0.3:
        return smalltalk.sample_chat(rng, split)
    if roll < 0.5:
        qa = sample_qa(rng, split)
        return qa.question, qa.answer
    if roll < 0.7 and "calculator" not in names:
        problem = math_dialogues.sample_problem(rng, split)
        return problem.question, problem.final
    request = rng.choice(UNSUPPORTED[split]).format(city=rng.choice(CITIES), name=rng.choice(PEOPLE))
    zh = is_zh(request)
    return request, rng.choice(UNSUPPORTED_ANSWERS_ZH if zh else UNSUPPORTED_ANSWERS)


def no_fit_tools(rng: random.Random, split: Split) -> list[dict[str, Any]]:
    """1-4 tools that cannot answer small talk, identity, plain arithmetic or the unsupported requests."""
    pool = [n for n in BUILTIN_NAMES if n != "calculator"]
    count = _tool_count(rng)
    tools = [builtin_schema(n) for n in rng.sample(pool, rng.randint(0, min(2, count)))]
    return offered_tools(rng, split, tools, count)


def no_fit_dialogue(rng: random.Random, split: Split) -> Conversation:
    tools = no_fit_tools(rng, split)
    question, answer = no_fit_exchange(rng, split, tools)
    return [system_message(rng, split, tools), user(question), assistant(answer)]


def tool_conversation(rng: random.Random, split: Split) -> Conversation:
    """One tool dialogue: mostly single calls, some parallel, some (18%) with no fitting tool."""
    roll = rng.random()
    if roll < 0.65:
        # few tool dialogues think: reasoning about offered tools leaked into think-mode answers without tools
        return single_call_dialogue(rng, split, think=rng.random() < 0.05)
    if roll < 0.82:
        return parallel_dialogue(rng, split)
    return no_fit_dialogue(rng, split)  # 18% (was 30%: refusing became the default on unfamiliar tools)


def tool_eval(rng: random.Random, split: Split = "val") -> dict[str, Any]:
    """A prompt with the expected single call (or null when no tool should be called): held out by default,
    train-split ones feed RLHF with the `tool` reward."""
    if rng.random() < 0.15:
        tools = no_fit_tools(rng, split)
        question, _ = no_fit_exchange(rng, split, tools)
        return {"messages": [user(question)], "tools": tools, "expected": None}
    scenario = builtin_or_synthetic(rng, split)[0]
    tools = offered_tools(rng, split, [scenario.tool], _tool_count(rng))
    return {
        "messages": [user(scenario.request)],
        "tools": tools,
        "expected": {"name": scenario.name, "arguments": scenario.arguments},
    }
