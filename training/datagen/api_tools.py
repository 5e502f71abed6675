"""Realistic API tools and dialogues that teach reading the offered schemas (issue 18).

What it is: the tools of `api_specs.SPECS` (the kinds real APIs have: weather, travel, money, calendar, mail,
shopping, ...), each declared under a varying name style (`get_forecast`, `getForecast`, `weather_get_forecast`)
with parameters from `api_params.PARAMS` in random order, some optional with a default. `api_conversation` builds
one SFT dialogue:
1-5 tools offered in random order, distractors sharing a word with the right one; the request states the
values in words (units, dates, lists, quotes; English or Chinese); then the call with the values in the schema's
form, the tool's result, and an answer that uses the result. Also: several calls in one turn, requests that no
offered tool serves (a plain answer, no call), and multi-digit multiplication and division through the calculator.
Held-out (val) tools, phrasings and values never reach training.
What it is not: the simpler verb_noun generator (synthetic_tools.py) or the built-in tools (tools_data.py).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from training.datagen.api_params import PARAMS, ParamKind
from training.datagen.api_specs import Spec, specs_of
from training.datagen.base import (
    Conversation,
    Split,
    assistant,
    assistant_calls,
    register_templates,
    system_message,
    tool_call,
    tool_result,
    user,
)
from training.datagen.tools_data import builtin_schema, run_tool

RESULT_WORDS = {
    "condition": ("sunny", "cloudy", "light rain", "snow showers", "windy"),
    "sunrise": ("06:12", "05:48", "07:31"),
    "open": ("true", "false"),
    "recipe": ("lentil soup", "fried rice", "vegetable curry", "omelette"),
    "translation": ("done",),
}
ASK_OPENERS = register_templates(
    "api_tools.openers",
    {"train": ("", "", "Hi, ", "Please: ", "Quick one - ", "Could you help? ", "OK, "), "val": ("Hello there! ",)},
)
ANSWERS = register_templates(
    "api_tools.answers",
    {
        "train": (
            "Done - {noun}: {field} is {value}.",
            "Here you go: the {field} is {value}.",
            "The result for {noun}: {field} = {value}.",
            "{value} ({field}), according to {name}.",
        ),
        "val": ("Result: {value} for {field}.",),
    },
)
# Refusals are made of the offered tools' names (read from the schema in context) or nothing at all: refusals
# that restated a description (the catalogue has a few dozen) were learned by heart and recited for tools never
# offered ("they add a product to the shopping cart"), issue 18.
NO_TOOL_ANSWERS = (
    "None of the offered tools ({names}) can do that.",
    "I can't help with that using {names}.",
    "No available tool fits this request.",
    "Sorry, none of my tools can do this.",
)
NO_TOOL_ANSWERS_ZH = ("现有的工具（{names}）都做不了这件事。", "抱歉，没有合适的工具能完成这个请求。")


def tool_name(rng: random.Random, spec: Spec) -> str:
    words = [spec.verb, *spec.noun.split("_")]
    roll = rng.random()
    if roll < 0.55:
        return "_".join(words)
    if roll < 0.8:
        return words[0] + "".join(w.capitalize() for w in words[1:])
    return f"{spec.domain}_{'_'.join(words)}"


@dataclass
class Offered:
    spec: Spec
    tool: dict[str, Any]
    names: dict[str, str]  # kind key -> parameter name in this schema


def declare(rng: random.Random, spec: Spec) -> Offered:
    """The tool dict of `spec` with names, order and which optional parameters appear drawn at random."""
    keys = list(spec.required) + [k for k in spec.optional if rng.random() < 0.75]
    rng.shuffle(keys)
    names = {k: rng.choice(PARAMS[k].names) for k in keys}
    if len(set(names.values())) < len(names):  # two kinds took one name: use each kind's first, distinct name
        names = {k: f"{PARAMS[k].names[0]}" if list(names.values()).count(v) > 1 else v for k, v in names.items()}
    properties = {names[k]: PARAMS[k].declare(names[k], _describe(names[k], k)) for k in keys}
    function = {
        "name": tool_name(rng, spec),
        "description": _description(rng, spec),
        "parameters": {
            "type": "object",
            "properties": properties,
            "required": [names[k] for k in keys if k in spec.required],
        },
    }
    return Offered(spec, {"type": "function", "function": function}, names)


DESCRIPTION_LEADS = ("", "", "", "Use this to ", "This tool will ", "Call to ")
DESCRIPTION_TAILS = ("", "", " Returns JSON.", " Requires network access.", " Results may be cached.",
                     " Fails with an error on invalid input.", " Rate limited to 60 calls a minute.")  # fmt: skip


def _description(rng: random.Random, spec: Spec) -> str:
    """`spec.does` with a varying lead-in and tail: a catalogue's few descriptions, each seen thousands of times in
    one wording, were memorised and recited (issue 18)."""
    lead = rng.choice(DESCRIPTION_LEADS)
    body = spec.does[0].lower() + spec.does[1:] if lead else spec.does
    return lead + body + rng.choice(DESCRIPTION_TAILS)


def _describe(name: str, key: str) -> str:
    kind = PARAMS[key]
    hints = {
        "date": " (YYYY-MM-DD).",
        "start_time": " (HH:MM, 24-hour).",
        "duration": " in minutes.",
        "since": " in minutes.",
    }
    return (
        f"The {name.replace('_', ' ')}" + hints.get(key, ".")
        if kind.schema.get("type") != "boolean"
        else (f"Whether to use {name.replace('_', ' ')}.")
    )


def arguments_and_request(
    rng: random.Random, split: Split, offered: Offered, zh: bool, ask: str
) -> tuple[dict[str, Any], str]:
    """Values for the required and some optional parameters, and a request stating them in words."""
    args: dict[str, Any] = {}
    phrases: list[str] = []
    for key, name in offered.names.items():
        kind: ParamKind = PARAMS[key]
        if key not in offered.spec.required and rng.random() < 0.5:
            continue  # an optional parameter the user does not mention: the call leaves it out
        value = kind.draw(rng, split)
        args[name] = value
        if not zh and not isinstance(value, dict | list | bool) and rng.random() < 0.2:
            shown = f'"{value}"' if isinstance(value, str) and "enum" not in kind.schema else str(value)
            phrases.append(f"{rng.choice(('with ', '', 'and '))}{name.replace('_', ' ')} {shown}")  # by the name
        else:
            phrases.append(kind.say(rng, value, zh))
    if offered.spec.domain != "money":  # "250 USD into SEK" only reads in that order
        rng.shuffle(phrases)
    joined = ("，" if zh else " ").join(p for p in phrases if p)
    return args, ask.format(args=joined).replace("  ", " ").replace(" .", ".").replace(" ?", "?")


def _result(rng: random.Random, spec: Spec, args: dict[str, Any]) -> tuple[str, Any]:
    field, kind = spec.result.split(":")
    if kind == "num":
        value: Any = rng.choice((rng.randint(2, 980), round(rng.uniform(1, 500), 2)))
    elif kind == "id":
        value = f"{spec.noun[:3].upper()}-{rng.randint(10000, 99999)}"
    else:
        value = rng.choice(RESULT_WORDS.get(field, ("done", "ok", "queued", "in transit", "delivered")))
    return field, value


def _offer(rng: random.Random, split: Split, needed: list[Spec], total: int) -> list[Offered]:
    """`needed` plus distractors (first those that share the domain, verb or a noun word) up to `total`, shuffled."""
    pool = [s for s in specs_of(split) if s not in needed]
    near = [s for s in pool if any(s.domain == n.domain or s.verb == n.verb or s.noun == n.noun for n in needed)]
    chosen = list(needed)
    while len(chosen) < total and pool:
        source = near if near and rng.random() < 0.7 else pool
        pick = rng.choice(source)
        for group in (pool, near):
            if pick in group:
                group.remove(pick)
        chosen.append(pick)
    offered = [declare(rng, s) for s in chosen]
    names = [o.tool["function"]["name"] for o in offered]
    for i, o in enumerate(offered):  # two specs may render one name: keep names unique
        if names.count(o.tool["function"]["name"]) > 1:
            o.tool["function"]["name"] = f"{o.spec.domain}_{o.tool['function']['name']}_{i}"
            names[i] = o.tool["function"]["name"]
    rng.shuffle(offered)
    return offered


def _ask(rng: random.Random, spec: Spec, split: Split) -> tuple[str, bool]:
    zh = bool(spec.asks_zh) and rng.random() < 0.2
    ask = rng.choice(spec.asks_zh if zh else spec.asks)
    return rng.choice(ASK_OPENERS[split]) + ask if not zh else ask, zh


def _answer(rng: random.Random, split: Split, offered: Offered, field: str, value: Any) -> str:
    name = offered.tool["function"]["name"]
    return rng.choice(ANSWERS[split]).format(
        noun=offered.spec.noun.replace("_", " "), field=field, value=value, name=name
    )


def single_call(rng: random.Random, split: Split) -> Conversation:
    spec = rng.choice(specs_of(split))
    offered = _offer(rng, split, [spec], rng.choices((1, 2, 3, 4, 5), weights=(3, 4, 3, 2, 1))[0])
    target = next(o for o in offered if o.spec == spec)
    ask, zh = _ask(rng, spec, split)
    args, request = arguments_and_request(rng, split, target, zh, ask)
    call = tool_call(rng, target.tool["function"]["name"], args)
    field, value = _result(rng, spec, args)
    return [
        system_message(rng, split, [o.tool for o in offered]),
        user(request),
        assistant_calls([call]),
        tool_result(call, json.dumps({field: value}, ensure_ascii=False)),
        assistant(_answer(rng, split, target, field, value)),
    ]


def parallel_calls(rng: random.Random, split: Split) -> Conversation:
    """Two or three requests in one message (one tool twice, or two tools): all calls in one turn."""
    first = rng.choice(specs_of(split))
    second = first if rng.random() < 0.5 else rng.choice(specs_of(split))
    offered = _offer(rng, split, list(dict.fromkeys((first, second))), rng.randint(2, 4))
    targets = [next(o for o in offered if o.spec == s) for s in (first, second)]
    if first == second and rng.random() < 0.5:
        targets.append(targets[0])
    zh = rng.random() < 0.15 and all(t.spec.asks_zh for t in targets)
    calls, parts, results = [], [], []
    for target in targets:
        args, request = arguments_and_request(
            rng, split, target, zh, rng.choice(target.spec.asks_zh if zh else target.spec.asks)
        )
        calls.append(tool_call(rng, target.tool["function"]["name"], args))
        parts.append(request)
        results.append(_result(rng, target.spec, args))
    glue = "另外，" if zh else rng.choice((" Also: ", " And ", " Then "))
    request = parts[0] + "".join(glue + (p if zh else p[0].lower() + p[1:]) for p in parts[1:])
    answer = " ".join(_answer(rng, split, t, f, v) for t, (f, v) in zip(targets, results, strict=True))
    return [
        system_message(rng, split, [o.tool for o in offered]),
        user(request),
        assistant_calls(calls),
        *[tool_result(c, json.dumps({f: v}, ensure_ascii=False)) for c, (f, v) in zip(calls, results, strict=True)],
        assistant(answer),
    ]


def no_fitting_tool(rng: random.Random, split: Split) -> Conversation:
    """A request for a tool that is not offered; the offered ones share words with it but cannot do it."""
    wanted = rng.choice(specs_of(split))
    others = [s for s in specs_of(split) if s.domain != wanted.domain and s.noun != wanted.noun]
    near = [s for s in others if s.verb == wanted.verb or set(s.noun.split("_")) & set(wanted.noun.split("_"))]
    count = rng.randint(1, 4)
    chosen = rng.sample(near, min(len(near), rng.randint(0, count))) if near else []
    rest = [s for s in others if s not in chosen]
    chosen += rng.sample(rest, max(0, min(len(rest), count - len(chosen))))
    offered = [declare(rng, s) for s in chosen]
    rng.shuffle(offered)
    ask, zh = _ask(rng, wanted, split)
    _, request = arguments_and_request(rng, split, declare(rng, wanted), zh, ask)
    names = ("、" if zh else ", ").join(o.tool["function"]["name"] for o in offered)
    answer = rng.choice(NO_TOOL_ANSWERS_ZH if zh else NO_TOOL_ANSWERS).format(names=names)
    return [system_message(rng, split, [o.tool for o in offered]), user(request), assistant(answer)]


CALC_ASKS = register_templates(
    "api_tools.calculator",
    {
        "train": (
            "What is {a} * {b}?",
            "What's {a} times {b}?",
            "Multiply {a} by {b}.",
            "{a} x {b} = ?",
            "What is {a} × {b}?",
            "Calculate {a}*{b}.",
            "What is {c} / {a}?",
            "Divide {c} by {a}.",
            "What's {c} divided by {a}?",
            "{a}乘以{b}等于多少？",
            "{c}除以{a}是多少？",
        ),
        "val": ("How much is {a} multiplied by {b}?", "Work out {c} over {a}."),
    },
)


def calculator_call(rng: random.Random, split: Split) -> Conversation:
    """Arithmetic too long to do in one's head (2-4 digit products and quotients): the calculator, not a guess."""
    a, b = rng.randint(12, 999), rng.randint(12, 99)
    c = a * rng.randint(2, 99) if rng.random() < 0.7 else rng.randint(100, 99999)
    ask = rng.choice(CALC_ASKS[split])
    expression = f"{c} / {a}" if "{c}" in ask else f"{a} * {b}"
    request = ask.format(a=a, b=b, c=c)
    calculator = builtin_schema("calculator")
    others = [declare(rng, s).tool for s in rng.sample(specs_of(split), rng.randint(0, 3))]
    tools = [calculator, *others]
    rng.shuffle(tools)
    call = tool_call(rng, "calculator", {"expression": expression})
    result = run_tool("calculator", {"expression": expression})
    shown = expression.replace("*", "×").replace("/", "÷")
    sign = "=" if result.lstrip("-").isdigit() else "≈"  # an inexact quotient is rounded by the tool
    answer = f"{shown} {sign} {result}" + ("。" if "等于" in request or "是多少" in request else ".")
    return [
        system_message(rng, split, tools),
        user(request),
        assistant_calls([call]),
        tool_result(call, result),
        assistant(answer),
    ]


def api_conversation(rng: random.Random, split: Split) -> Conversation:
    """One dialogue: mostly one call, some parallel calls, some with no fitting tool, some calculator arithmetic."""
    roll = rng.random()
    if roll < 0.55:
        return single_call(rng, split)
    if roll < 0.72:
        return parallel_calls(rng, split)
    if roll < 0.85:  # 13%: refusals were a fifth of these dialogues and became the model's default (issue 18)
        return no_fitting_tool(rng, split)
    return calculator_call(rng, split)
