"""Composed tools: BFCL-like schemas built from word lists, so every dialogue offers tools never seen before.

What it is: `make_tool` composes a function from a domain of composed_words.py — a verb, a quantity and an object
give its name (in one of several styles), a one- or two-sentence description, and 1-6 parameters (numbers with
units, free texts, enumerations, booleans, lists of numbers) with their own descriptions, a few required and the
others optional with a stated default. `composed_conversation` builds one SFT dialogue from such tools: a single
call among 1-4 offered tools (distractors share the object or the quantity), parallel calls (one tool for several
values, or two tools), and requests no offered tool serves (a generic refusal, or one that names the offered tools
by the names the schema gives; never a description recalled from training). Every number a request states is
distinct within the call, so the arguments can only be filled by copying each value from its phrase.
Names are split by `value_split` (held-out names never reach training), as are the request templates.
What it is not: the fixed realistic API catalogue (api_tools.py) or the verb_noun generator (synthetic_tools.py).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Any

from training.datagen import persona, smalltalk, values
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
    value_split,
)
from training.datagen.composed_words import (
    DESCRIPTION_EXTRAS,
    DOMAINS,
    NAME_QUALIFIERS,
    NAME_VERBS,
    VERBS,
    Choice,
    Domain,
    Number,
    Text,
)


@dataclass
class Param:
    name: str
    label: str
    kind: Number | Text | Choice | str  # "flag" (boolean) or "list" (array of numbers) for the generic ones
    required: bool
    default: Any = None


@dataclass
class ComposedTool:
    tool: dict[str, Any]
    domain: str
    obj: str
    quantity: str
    verb: str  # the request's verb ("work out")
    params: list[Param] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.tool["function"]["name"])


def _slug(words: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", words.lower()).strip("_")


def _camel(words: str, upper_first: bool = False) -> str:
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", words) if p]
    text = parts[0].lower() + "".join(p.capitalize() for p in parts[1:])
    return text[0].upper() + text[1:] if upper_first else text


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _tool_name(rng: random.Random, domain: str, obj: str, quantity: str) -> str:
    verb = rng.choice(NAME_VERBS)
    q = f"{rng.choice(NAME_QUALIFIERS)} {quantity}" if rng.random() < 0.25 else quantity
    style = rng.random()
    if style < 0.3:
        name = _slug(f"{verb} {q} {obj}")
    elif style < 0.5:
        name = _camel(f"{verb} {q} {obj}")
    elif style < 0.65:
        name = _slug(f"{obj} {q}")
    elif style < 0.8:
        name = _slug(f"{domain} {obj} {q}")  # a module path with its dots replaced, as clients send them
    elif style < 0.9:
        name = _slug(f"{obj} {q} {verb}")
    else:
        name = _camel(f"{obj} {q}", upper_first=True) + "_" + _camel(verb)
    return name[:64]


def _param_name(rng: random.Random, label: str, unit: str) -> str:
    roll = rng.random()
    base = _camel(label) if roll < 0.25 else _slug(label)
    if unit and rng.random() < 0.2 and len(unit) <= 5 and unit.isalpha():
        base += "_" + unit.lower() if "_" in base or base.islower() else unit.capitalize()
    return base


def _default(rng: random.Random, kind: Number | Text | Choice | str) -> Any:
    if isinstance(kind, Number):
        return int(kind.low) if kind.integer else round(kind.low + 0.5, 1)
    if isinstance(kind, Choice):
        return kind.options[0]
    if kind == "flag":
        return rng.random() < 0.5
    return None


def _param_schema(rng: random.Random, p: Param, obj: str) -> dict[str, Any]:
    kind = p.kind
    if isinstance(kind, Number):
        unit = f" in {kind.unit}" if kind.unit else ""
        text = rng.choice(
            (
                f"The {p.label} of the {obj}{unit}.",
                f"{p.label.capitalize()}{unit}.",
                f"{p.label.capitalize()} of the {obj}, a {'whole ' if kind.integer else ''}number{unit}.",
            )
        )
        schema: dict[str, Any] = {"type": "integer" if kind.integer else "number", "description": text}
    elif isinstance(kind, Text):
        schema = {
            "type": "string",
            "description": rng.choice(
                (
                    f"The {p.label}.",
                    f"Name of the {p.label}." if not p.label.endswith("name") else f"The {p.label}.",
                    f"{p.label.capitalize()} to use.",
                )
            ),
        }
    elif isinstance(kind, Choice):
        listed = ", ".join(kind.options)
        schema = {"type": "string", "description": f"The {p.label}, one of: {listed}."}
        if rng.random() < 0.7:
            schema["enum"] = list(kind.options)
    elif kind == "flag":
        schema = {"type": "boolean", "description": f"Whether to {p.label}."}
    else:
        schema = {"type": "array", "items": {"type": "number"}, "description": f"The {p.label} to use."}
    if not p.required and p.default is not None:
        shown = json.dumps(p.default) if not isinstance(p.default, str) else p.default
        schema["description"] += rng.choice(
            (f" Default is {shown}.", f" Optional, defaults to {shown}.", f" Defaults to {shown} if not given.")
        )
    elif not p.required:
        schema["description"] += " Optional."
    return schema


FLAGS = ("round the result", "include details", "show the steps", "use a cache", "return units")


def make_tool(
    rng: random.Random,
    split: Split,
    domain: str | None = None,
    obj: str | None = None,
    quantity: str | None = None,
) -> ComposedTool:
    """One composed tool whose name belongs to `split`; `domain`/`obj`/`quantity` pin parts of it (distractors)."""
    for _ in range(200):
        tool = _draw_tool(rng, split, domain or rng.choice(sorted(DOMAINS)), obj, quantity)
        if value_split("composed", tool.name) == split:
            return tool
    raise RuntimeError("no composed tool name of this split in 200 draws")


def _draw_tool(rng: random.Random, split: Split, domain: str, obj: str | None, quantity: str | None) -> ComposedTool:
    d: Domain = DOMAINS[domain]
    if obj is None:  # now and then an object no list holds: the request's words must be matched, not recalled
        obj = values.made_up_word(rng, split) if rng.random() < 0.12 else rng.choice(d.objects)
    quantity = quantity or rng.choice(d.quantities)
    verb, verb3 = rng.choice(VERBS)
    pool: list[Number | Text | Choice | str] = [*d.numbers, *d.texts, *d.choices]
    count = min(len(pool), rng.choices((1, 2, 3, 4, 5, 6), weights=(3, 5, 4, 2, 1, 0.5))[0])
    kinds = rng.sample(pool, count)
    if rng.random() < 0.15:
        kinds.append("flag")
    if rng.random() < 0.1:
        kinds.insert(0, "list")
    n_required = max(1, min(len(kinds), rng.choices((1, 2, 3, 4), weights=(3, 4, 2, 1))[0]))
    params: list[Param] = []
    names: set[str] = set()
    for i, kind in enumerate(kinds):
        if kind == "flag":
            label, unit = rng.choice(FLAGS), ""
        elif kind == "list":
            label, unit = rng.choice(("values", "measurements", "data points", "numbers")), ""
        else:
            label, unit = kind.label, getattr(kind, "unit", "")  # type: ignore[union-attr]
        pname = _param_name(rng, label, unit)
        if pname in names:
            continue
        names.add(pname)
        required = i < n_required and kind != "flag"
        params.append(Param(pname, label, kind, required, None if required else _default(rng, kind)))
    rng.shuffle(params)
    name = _tool_name(rng, domain, obj, quantity)
    given = [p.label for p in params if p.required and isinstance(p.kind, Number)][:2]
    tail = f" given its {' and '.join(given)}" if given and rng.random() < 0.6 else ""
    description = rng.choice(
        (
            f"{verb3} the {quantity} of {article(obj)} {obj}{tail}.",
            f"{quantity.capitalize()} of {article(obj)} {obj}{tail}.",
            f"Use this to {verb} the {quantity} of {article(obj)} {obj}{tail}.",
        )
    ) + rng.choice(DESCRIPTION_EXTRAS)
    properties = {p.name: _param_schema(rng, p, obj) for p in params}
    function = {
        "name": name,
        "description": description,
        "parameters": {
            "type": "object",
            "properties": properties,
            "required": [p.name for p in params if p.required],
        },
    }
    return ComposedTool({"type": "function", "function": function}, domain, obj, quantity, verb, params)


def _number(rng: random.Random, kind: Number, taken: set[float]) -> float | int:
    """A value of `kind`'s range not yet used in this call (small values as often as large ones)."""
    for _ in range(50):
        high = kind.high if rng.random() < 0.5 else min(kind.high, kind.low + 20)
        if kind.integer:
            value: float | int = rng.randint(int(kind.low), int(high))
        else:
            value = round(rng.uniform(kind.low, high), rng.choice((1, 1, 2)))
        if value not in taken:
            taken.add(value)
            return value
    return value


def _text(rng: random.Random, split: Split, maker: str) -> str:
    if maker == "name":
        return values.proper_name(rng, split)
    if maker == "place":
        return values.proper_name(rng, split) if rng.random() < 0.5 else values.made_up_word(rng, split).title()
    if maker == "phrase":
        return values.phrase(rng, split)
    if maker == "code":
        return values.letter_word(rng, split)
    if maker == "date":
        return f"{rng.randint(2020, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if maker == "formula":
        return rng.choice(("x^2 + 3x", "2x - 7", "NaCl", "H2O", "C6H12O6", "3y + 1", "x^3 - x", "CO2", "sin(x)"))
    return values.word(rng, split)


def draw_value(rng: random.Random, split: Split, p: Param, taken: set[float]) -> Any:
    kind = p.kind
    if isinstance(kind, Number):
        return _number(rng, kind, taken)
    if isinstance(kind, Text):
        return _text(rng, split, kind.maker)
    if isinstance(kind, Choice):
        return rng.choice(kind.options)
    if kind == "flag":
        return not p.default if p.default is not None else rng.random() < 0.5
    return [_number(rng, Number("", "", 1, 99), taken) for _ in range(rng.randint(2, 5))]


def say_value(rng: random.Random, p: Param, value: Any) -> str:
    """How a request states one argument: by its label, with the unit where there is one."""
    kind = p.kind
    if isinstance(kind, Number):
        unit = f" {kind.unit}" if kind.unit else ""
        return rng.choice(
            (
                f"{'' if p.label.endswith('s') else article(p.label) + ' '}{p.label} of {value}{unit}",
                f"{p.label} {value}{unit}",
                f"{p.label} = {value}",
                f"{p.label} is {value}{unit}",
                f"{p.label}: {value}",
            )
        )
    if isinstance(kind, Text):
        return rng.choice((f'{p.label} "{value}"', f"{p.label} {value}", f"the {p.label} {value}"))
    if isinstance(kind, Choice):
        return rng.choice((f"{p.label} {value}", f"{p.label} set to {value}", f"using {value} {p.label}"))
    if kind == "flag":
        return f"and {p.label}" if value else f"without the option to {p.label}"
    items = [str(v) for v in value]
    return f"{p.label} " + ", ".join(items[:-1]) + " and " + items[-1]


def arguments(rng: random.Random, split: Split, tool: ComposedTool) -> tuple[dict[str, Any], list[str]]:
    """Values for the required and some optional parameters, and the phrases stating them."""
    taken: set[float] = set()
    args: dict[str, Any] = {}
    phrases: list[str] = []
    mentioned = [p for p in tool.params if p.required or rng.random() >= 0.55]  # the rest: left out of the call
    units = [p.kind.unit for p in mentioned if isinstance(p.kind, Number) and p.kind.unit]
    for p in mentioned:
        args[p.name] = draw_value(rng, split, p, taken)
        if isinstance(p.kind, Number) and p.kind.unit and units.count(p.kind.unit) == 1 and rng.random() < 0.2:
            phrases.append(f"{args[p.name]} {p.kind.unit}")  # the unit alone tells which parameter it fills
        else:
            phrases.append(say_value(rng, p, args[p.name]))
    return args, phrases


def _join(phrases: list[str]) -> str:
    flags = [p for p in phrases if p.startswith(("and ", "without "))]
    rest = [p for p in phrases if p not in flags]
    text = rest[0] if len(rest) == 1 else ", ".join(rest[:-1]) + " and " + rest[-1] if rest else ""
    return " ".join([text, *flags]).strip()


REQUESTS = register_templates(
    "composed.request",
    {
        "train": (
            "{Verb} the {quantity} of {a} {obj} with {args}.",
            "What is the {quantity} of {a} {obj} with {args}?",
            "I need the {quantity} for {a} {obj}: {args}.",
            "Can you {verb} the {quantity} of my {obj}? It has {args}.",
            "{Args} - {verb} the {quantity} of the {obj}.",
            "Please {verb} the {quantity} of {a} {obj} given {args}.",
            "Help me {verb} the {quantity} of this {obj} ({args}).",
            "For {a} {obj} with {args}, what would the {quantity} be?",
            "{Verb} {obj} {quantity}: {args}.",
            "I have {a} {obj} with {args}. {Verb} its {quantity}.",
            "Tell me the {quantity} of {a} {obj} where {args}.",
            "Quick one: {quantity} of {a} {obj}, {args}?",
        ),
        "val": (
            "Could you {verb} the {quantity} for {a} {obj} that has {args}?",
            "Given {args}, find the {quantity} of the {obj}.",
        ),
    },
)


def request_text(rng: random.Random, split: Split, tool: ComposedTool, phrases: list[str]) -> str:
    templates = REQUESTS[split]
    if not phrases:  # nothing to state: the plain ask
        return f"{tool.verb.capitalize()} the {tool.quantity} of {article(tool.obj)} {tool.obj}."
    joined = _join(phrases)
    return rng.choice(templates).format(
        Verb=tool.verb.capitalize(),
        verb=tool.verb,
        quantity=tool.quantity,
        a=article(tool.obj),
        obj=tool.obj,
        args=joined,
        Args=joined[0].upper() + joined[1:],
    )


def _result(rng: random.Random, tool: ComposedTool) -> tuple[str, Any]:
    value: Any = rng.choice((rng.randint(2, 99999), round(rng.uniform(0.01, 9999), 2)))
    return rng.choice(("result", "value", "output")), value


def _answer(rng: random.Random, tool: ComposedTool, value: Any) -> str:
    return rng.choice(
        (
            f"The {tool.quantity} of the {tool.obj} is {value}.",
            f"It comes to {value}: that is the {tool.quantity} of the {tool.obj}.",
            f"{tool.quantity.capitalize()}: {value}.",
        )
    )


def distractors(rng: random.Random, split: Split, target: ComposedTool, count: int) -> list[ComposedTool]:
    """Other tools sharing the target's object or quantity (so both words must be read), or its domain."""
    out: list[ComposedTool] = []
    seen = {target.name, (target.obj, target.quantity)}
    for _ in range(count * 20):
        if len(out) == count:
            break
        roll = rng.random()
        d = DOMAINS[target.domain]
        if roll < 0.35:
            other = make_tool(rng, split, target.domain, obj=target.obj, quantity=rng.choice(d.quantities))
        elif roll < 0.6:
            other = make_tool(rng, split, target.domain, obj=rng.choice(d.objects), quantity=target.quantity)
        elif roll < 0.8:
            other = make_tool(rng, split, target.domain)
        else:
            other = make_tool(rng, split)
        if other.name in seen or (other.obj, other.quantity) in seen:
            continue
        seen |= {other.name, (other.obj, other.quantity)}
        out.append(other)
    return out


def _offered(rng: random.Random, tools: list[ComposedTool]) -> list[dict[str, Any]]:
    offered = [t.tool for t in tools]
    rng.shuffle(offered)
    return offered


def single_call(rng: random.Random, split: Split) -> Conversation:
    target = make_tool(rng, split)
    others = distractors(rng, split, target, rng.choices((0, 1, 2, 3), weights=(4, 4, 3, 1))[0])
    args, phrases = arguments(rng, split, target)
    call = tool_call(rng, target.name, args)
    field_, value = _result(rng, target)
    return [
        system_message(rng, split, _offered(rng, [target, *others])),
        user(request_text(rng, split, target, phrases)),
        assistant_calls([call]),
        tool_result(call, json.dumps({field_: value})),
        assistant(_answer(rng, target, value)),
    ]


def parallel_calls(rng: random.Random, split: Split) -> Conversation:
    """One tool for several values of one parameter, or two tools for two requests: every call in one turn."""
    target = make_tool(rng, split)
    numeric = [p for p in target.params if isinstance(p.kind, Number)]
    if numeric and rng.random() < 0.6:
        varied = rng.choice(numeric)
        base, phrases = arguments(rng, split, target)
        taken = {v for v in base.values() if isinstance(v, int | float)}
        options = [_number(rng, varied.kind, taken) for _ in range(rng.randint(2, 3))]  # type: ignore[arg-type]
        others = [
            ph
            for p, ph in zip([p for p in target.params if p.name in base], phrases, strict=True)
            if p.name != varied.name
        ]
        listed = ", ".join(str(v) for v in options[:-1]) + f" and {options[-1]}"
        unit = f" {varied.kind.unit}" if isinstance(varied.kind, Number) and varied.kind.unit else ""
        stated = [f"{varied.label} {listed}{unit}", *others]
        request = request_text(rng, split, target, stated)
        request = request.rstrip(".?") + rng.choice((" - one result for each.", ", each one separately.", "."))
        calls = [tool_call(rng, target.name, {**base, varied.name: v}) for v in options]
        tools = [target, *distractors(rng, split, target, rng.randint(0, 1))]
        pairs = [(target, c) for c in calls]
    else:
        second = make_tool(rng, split)
        tools = [target, second]
        parts, calls, pairs = [], [], []
        for tool in tools:
            args, phrases = arguments(rng, split, tool)
            parts.append(request_text(rng, split, tool, phrases))
            call = tool_call(rng, tool.name, args)
            calls.append(call)
            pairs.append((tool, call))
        request = parts[0] + rng.choice((" Also, ", " And ", " Then ")) + parts[1][0].lower() + parts[1][1:]
    results = [_result(rng, t) for t, _ in pairs]
    answer = " ".join(_answer(rng, t, v) for (t, _), (_, v) in zip(pairs, results, strict=True))
    return [
        system_message(rng, split, _offered(rng, tools)),
        user(request),
        assistant_calls(calls),
        *[tool_result(c, json.dumps({f: v})) for (_, c), (f, v) in zip(pairs, results, strict=True)],
        assistant(answer),
    ]


GENERIC_REFUSALS = (
    "None of the offered functions can do this, so I can't answer it with a tool.",
    "I can't do that with the tools I have.",
    "No available tool fits this request.",
    "The tools I was given don't cover this request.",
    "Sorry, none of these functions can help with that.",
)


def refusal(rng: random.Random, offered: list[ComposedTool], wanted: ComposedTool | None) -> str:
    """A refusal made only of the request (what was asked) and the offered schemas (their names), or generic."""
    roll = rng.random()
    if wanted is not None and roll < 0.35:
        names = ", ".join(t.name for t in offered)
        return (
            f"The offered tools ({names}) cannot {wanted.verb} the {wanted.quantity} of "
            f"{article(wanted.obj)} {wanted.obj}, so I can't do it."
        )
    if wanted is not None and roll < 0.6:
        return f"None of the offered functions gives the {wanted.quantity} of {article(wanted.obj)} {wanted.obj}."
    return rng.choice(GENERIC_REFUSALS)


def no_fitting_tool(rng: random.Random, split: Split) -> Conversation:
    """A request whose object and quantity no offered tool has (the offered ones may share one of the two words),
    or small talk with tools offered: a plain answer, no call."""
    wanted = make_tool(rng, split)
    offered: list[ComposedTool] = []
    count = rng.randint(1, 3)
    for _ in range(40):
        if len(offered) == count:
            break
        roll = rng.random()
        if roll < 0.3:
            other = make_tool(rng, split, wanted.domain, obj=wanted.obj)
        elif roll < 0.55:
            other = make_tool(rng, split, wanted.domain, quantity=wanted.quantity)
        else:
            other = make_tool(rng, split)
        if other.obj != wanted.obj or other.quantity != wanted.quantity:
            offered.append(other)
    offered = offered or [make_tool(rng, split, obj=wanted.obj + " case")]
    if rng.random() < 0.3:  # small talk or a world question with tools offered: answered, no call
        question, answer = (
            smalltalk.sample_chat(rng, split) if rng.random() < 0.5 else persona.world_question(rng, split)[:2]
        )
        return [system_message(rng, split, _offered(rng, offered)), user(question), assistant(answer)]
    _, phrases = arguments(rng, split, wanted)
    request = request_text(rng, split, wanted, phrases)
    return [system_message(rng, split, _offered(rng, offered)), user(request), assistant(refusal(rng, offered, wanted))]


def composed_conversation(rng: random.Random, split: Split) -> Conversation:
    """One dialogue: mostly one call among 1-4 tools, some parallel calls, some with no fitting tool (15%)."""
    roll = rng.random()
    if roll < 0.63:
        return single_call(rng, split)
    if roll < 0.85:
        return parallel_calls(rng, split)
    return no_fitting_tool(rng, split)
