"""Arithmetic, unit and comparison problems with short step-by-step reasoning (English and Chinese).

What it is: problem builders that return a `Problem` (question, useful reasoning, final sentence, answer). Every
equation written in reasoning has the form `a op b = c` with a correct result, so tests can recompute them.
What it is not: the word problems or the SFT/eval records built from the problems (a think-mode dialogue and the
same question answered directly): both live in math_dialogues.py. Nor tool calling (the calculator dialogues are in
tools_data.py) or a general math solver.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from training.datagen.base import Split, is_zh, register_templates, value_split


@dataclass(frozen=True)
class Problem:
    question: str
    reasoning: str
    final: str  # a sentence whose last number is the answer
    answer: int
    lang: str


ADD = register_templates(
    "arithmetic.add",
    {
        "train": (
            "What is {a} + {b}?",
            "Calculate {a} + {b}.",
            "{a} + {b} = ?",
            "What do you get if you add {a} and {b}?",
            "Add {a} and {b}.",
            "{a} 加 {b} 等于多少？",
            "计算 {a} + {b}。",
        ),
        "val": ("Compute the sum of {a} and {b}.", "How much is {a} plus {b}?", "求 {a} 与 {b} 的和。"),
    },
)
SUB = register_templates(
    "arithmetic.sub",
    {
        "train": (
            "What is {a} - {b}?",
            "Calculate {a} - {b}.",
            "{a} - {b} = ?",
            "Subtract {b} from {a}.",
            "{a} 减 {b} 等于多少？",
            "计算 {a} - {b}。",
        ),
        "val": ("How much is {a} minus {b}?", "What is the difference between {a} and {b}?", "{a} 减去 {b} 是多少？"),
    },
)
MUL = register_templates(
    "arithmetic.mul",
    {
        "train": (
            "What is {a} × {b}?",
            "What is {a} * {b}?",
            "Calculate {a} times {b}.",
            "Multiply {a} by {b}.",
            "{a} 乘以 {b} 等于多少？",
            "计算 {a} × {b}。",
        ),
        "val": ("What is the product of {a} and {b}?", "How much is {a} multiplied by {b}?", "求 {a} 和 {b} 的积。"),
    },
)
DIV = register_templates(
    "arithmetic.div",
    {
        "train": ("What is {a} ÷ {b}?", "What is {a} / {b}?", "Divide {a} by {b}.", "{a} 除以 {b} 等于多少？"),
        "val": ("How many times does {b} go into {a}?", "Compute {a} divided by {b}.", "{a} 除以 {b} 的商是多少？"),
    },
)
MIXED = register_templates(
    "arithmetic.mixed",
    {
        "train": ("What is {expr}?", "Calculate {expr}.", "Work out {expr}.", "计算 {expr}。", "{expr} 等于多少？"),
        "val": ("Evaluate {expr}.", "What does {expr} equal?", "请算出 {expr} 的值。"),
    },
)
COMPARE = register_templates(
    "arithmetic.compare",
    {
        "train": (
            "Which is larger, {a} or {b}?",
            "Which number is bigger: {a} or {b}?",
            "Which is greater, {a} or {b}?",
            "{a} 和 {b} 哪个大？",
        ),
        "val": (
            "Of {a} and {b}, which is more?",
            "Tell me the larger number: {a} or {b}.",
            "{a} 与 {b} 相比，哪个更大？",
        ),
    },
)
UNIT = register_templates(
    "arithmetic.unit",
    {
        "train": (
            "How many {to} are in {v} {frm}?",
            "Convert {v} {frm} to {to}.",
            "What is {v} {frm} in {to}?",
            "{v} {frm_zh} 是多少{to_zh}？",
        ),
        "val": ("Express {v} {frm} in {to}.", "{v} {frm} equals how many {to}?", "{v} {frm_zh} 等于几{to_zh}？"),
    },
)

# (big unit singular, plural, zh), (small unit singular, plural, zh), factor
UNITS = (
    (("meter", "meters", "米"), ("centimeter", "centimeters", "厘米"), 100),
    (("kilometer", "kilometers", "千米"), ("meter", "meters", "米"), 1000),
    (("kilogram", "kilograms", "千克"), ("gram", "grams", "克"), 1000),
    (("hour", "hours", "小时"), ("minute", "minutes", "分钟"), 60),
    (("minute", "minutes", "分钟"), ("second", "seconds", "秒"), 60),
    (("day", "days", "天"), ("hour", "hours", "小时"), 24),
    (("week", "weeks", "周"), ("day", "days", "天"), 7),
    (("liter", "liters", "升"), ("milliliter", "milliliters", "毫升"), 1000),
    (("dozen", "dozens", "打"), ("item", "items", "个"), 12),
)


def small_number(rng: random.Random, low: int = 1) -> int:
    """Mostly one or two digits, sometimes three: what a 2M-parameter model can learn to add."""
    digits = rng.choices((1, 2, 3), weights=(3, 5, 2))[0]
    return rng.randint(max(low, 10 ** (digits - 1)), 10**digits - 1)


def pick(rng: random.Random, split: Split, kind: str, make: Callable[[], tuple[Any, ...]]) -> tuple[Any, ...]:
    """Draw value tuples until one falls into `split`'s side of the value partition."""
    while True:
        values = make()
        if value_split(kind, *values) == split:
            return values


def _steps_add(a: int, b: int, zh: bool) -> str:
    tens, ones = b - b % 10, b % 10
    if tens == 0 or ones == 0:
        return f"{a} + {b} = {a + b}。" if zh else f"Add directly: {a} + {b} = {a + b}."
    if zh:
        return f"把 {b} 拆成 {tens} 和 {ones}。{a} + {tens} = {a + tens}，{a + tens} + {ones} = {a + b}。"
    return f"Split {b} into {tens} and {ones}. {a} + {tens} = {a + tens}. Then {a + tens} + {ones} = {a + b}."


def _steps_sub(a: int, b: int, zh: bool) -> str:
    tens, ones = b - b % 10, b % 10
    if tens == 0 or ones == 0:
        return f"{a} - {b} = {a - b}。" if zh else f"Subtract directly: {a} - {b} = {a - b}."
    if zh:
        return f"把 {b} 拆成 {tens} 和 {ones}。{a} - {tens} = {a - tens}，{a - tens} - {ones} = {a - b}。"
    return f"Split {b} into {tens} and {ones}. {a} - {tens} = {a - tens}. Then {a - tens} - {ones} = {a - b}."


def _steps_mul(a: int, b: int, zh: bool) -> str:
    tens, ones = a - a % 10, a % 10
    if tens == 0 or ones == 0:
        return f"{a} × {b} = {a * b}。" if zh else f"Multiply directly: {a} × {b} = {a * b}."
    p, q = tens * b, ones * b
    if zh:
        return f"把 {a} 拆成 {tens} 和 {ones}。{tens} × {b} = {p}，{ones} × {b} = {q}，{p} + {q} = {a * b}。"
    return f"Split {a} into {tens} and {ones}. {tens} × {b} = {p}. {ones} × {b} = {q}. {p} + {q} = {a * b}."


def add_problem(rng: random.Random, split: Split) -> Problem:
    a, b = pick(rng, split, "add", lambda: (small_number(rng), small_number(rng)))
    template = rng.choice(ADD[split])
    zh = is_zh(template)
    return Problem(
        template.format(a=a, b=b),
        _steps_add(a, b, zh),
        f"{a} + {b} = {a + b}" + ("。" if zh else "."),
        a + b,
        "zh" if zh else "en",
    )


def sub_problem(rng: random.Random, split: Split) -> Problem:
    a, b = pick(rng, split, "sub", lambda: tuple(sorted((small_number(rng), small_number(rng)), reverse=True)))
    template = rng.choice(SUB[split])
    zh = is_zh(template)
    return Problem(
        template.format(a=a, b=b),
        _steps_sub(a, b, zh),
        f"{a} - {b} = {a - b}" + ("。" if zh else "."),
        a - b,
        "zh" if zh else "en",
    )


def mul_problem(rng: random.Random, split: Split) -> Problem:
    a, b = pick(rng, split, "mul", lambda: (rng.randint(2, 99), rng.randint(2, 9)))
    template = rng.choice(MUL[split])
    zh = is_zh(template)
    return Problem(
        template.format(a=a, b=b),
        _steps_mul(a, b, zh),
        f"{a} × {b} = {a * b}" + ("。" if zh else "."),
        a * b,
        "zh" if zh else "en",
    )


def div_problem(rng: random.Random, split: Split) -> Problem:
    b, q = pick(rng, split, "div", lambda: (rng.randint(2, 12), rng.randint(2, 30)))
    a = b * q
    template = rng.choice(DIV[split])
    zh = is_zh(template)
    if zh:
        steps = f"因为 {b} × {q} = {a}，所以 {a} ÷ {b} = {q}。"
    else:
        steps = f"Find the number that times {b} gives {a}: {b} × {q} = {a}. So {a} ÷ {b} = {q}."
    return Problem(
        template.format(a=a, b=b), steps, f"{a} ÷ {b} = {q}" + ("。" if zh else "."), q, "zh" if zh else "en"
    )


def mixed_problem(rng: random.Random, split: Split) -> Problem:
    a, b, c, shape = pick(
        rng, split, "mixed", lambda: (rng.randint(1, 50), rng.randint(2, 12), rng.randint(2, 9), rng.randint(0, 2))
    )
    template = rng.choice(MIXED[split])
    zh = is_zh(template)
    if shape == 0:  # a + b × c
        expr, mid, answer = f"{a} + {b} × {c}", b * c, a + b * c
        en = f"Multiplication comes first: {b} × {c} = {mid}. Then {a} + {mid} = {answer}."
        cn = f"先算乘法：{b} × {c} = {mid}。再算 {a} + {mid} = {answer}。"
    elif shape == 1:  # (a + b) × c
        expr, mid, answer = f"({a} + {b}) × {c}", a + b, (a + b) * c
        en = f"Brackets first: {a} + {b} = {mid}. Then {mid} × {c} = {answer}."
        cn = f"先算括号：{a} + {b} = {mid}。再算 {mid} × {c} = {answer}。"
    else:  # b × c - a, kept non-negative
        a = min(a, b * c)
        expr, mid, answer = f"{b} × {c} - {a}", b * c, b * c - a
        en = f"First {b} × {c} = {mid}. Then {mid} - {a} = {answer}."
        cn = f"先算 {b} × {c} = {mid}。再算 {mid} - {a} = {answer}。"
    final = f"{expr} = {answer}" + ("。" if zh else ".")
    return Problem(template.format(expr=expr), cn if zh else en, final, answer, "zh" if zh else "en")


def _compare_steps(a: int, b: int, zh: bool) -> str:
    big = max(a, b)
    da, db = len(str(a)), len(str(b))
    if da != db:
        longer, shorter = (a, b) if da > db else (b, a)
        if zh:
            return f"{longer} 是 {len(str(longer))} 位数，{shorter} 是 {len(str(shorter))} 位数，所以 {big} 更大。"
        return f"{longer} has {len(str(longer))} digits and {shorter} has {len(str(shorter))}, so {big} is larger."
    i = next(k for k, (x, y) in enumerate(zip(str(a), str(b), strict=True)) if x != y)
    x, y = str(a)[i], str(b)[i]
    if zh:
        return f"位数相同。从左往右比，第 {i + 1} 位是 {x} 和 {y}，所以 {big} 更大。"
    return f"Both have {da} digits. From the left, digit {i + 1} is {x} in {a} and {y} in {b}, so {big} is larger."


def compare_problem(rng: random.Random, split: Split) -> Problem:
    a, b = pick(rng, split, "compare", lambda: (small_number(rng), small_number(rng)))
    if a == b:
        b = a + rng.randint(1, 9)
    template = rng.choice(COMPARE[split])
    zh = is_zh(template)
    big = max(a, b)
    final = f"{big} 更大。" if zh else f"The larger number is {big}."
    return Problem(template.format(a=a, b=b), _compare_steps(a, b, zh), final, big, "zh" if zh else "en")


def _unit_values(rng: random.Random) -> tuple[int, int, int]:
    """(unit pair index, direction, amount): amounts stay small so that answers keep at most 4 digits."""
    index = rng.randrange(len(UNITS))
    return index, rng.randint(0, 1), rng.randint(1, 12 if UNITS[index][2] < 1000 else 9)


def unit_problem(rng: random.Random, split: Split) -> Problem:
    index, down, v = pick(rng, split, "unit", lambda: _unit_values(rng))
    big, small, factor = UNITS[index]
    template = rng.choice(UNIT[split])
    zh = is_zh(template)
    if down:  # big -> small: multiply
        frm, to, value, answer = big, small, v, v * factor
        en = f"1 {big[0]} = {factor} {small[1]}. So {v} × {factor} = {answer}."
        cn = f"1 {big[2]} = {factor} {small[2]}，所以 {v} × {factor} = {answer}。"
    else:  # small -> big: divide an exact multiple
        frm, to, value, answer = small, big, v * factor, v
        en = f"1 {big[0]} = {factor} {small[1]}. So {value} ÷ {factor} = {answer}."
        cn = f"1 {big[2]} = {factor} {small[2]}，所以 {value} ÷ {factor} = {answer}。"
    frm_name = frm[0] if value == 1 else frm[1]
    to_name = to[0] if answer == 1 else to[1]
    question = template.format(v=value, frm=frm_name, to=to[1], frm_zh=frm[2], to_zh=to[2])
    final = f"{value} {frm[2]} = {answer} {to[2]}。" if zh else f"{value} {frm_name} = {answer} {to_name}."
    return Problem(question, cn if zh else en, final, answer, "zh" if zh else "en")
