"""Small word problems, and the SFT / eval records built from every arithmetic problem kind.

What it is: template word problems (English and Chinese, add / subtract / multiply / divide / two steps) and the
dialogue builders: `math_conversation` (think mode with `reasoning_content`, or off mode with the direct answer)
and `math_eval` (held-out prompt + expected answer for `minigpt-eval think`).
What it is not: the bare-arithmetic problem builders (arithmetic.py).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from training.datagen import arithmetic as ar
from training.datagen.base import (
    Conversation,
    Split,
    assistant,
    is_zh,
    maybe_system,
    register_templates,
    split_pool,
    user,
)


@dataclass(frozen=True)
class WordTemplate:
    op: str  # add | sub | mul | div | two
    question: str
    reasoning: str
    final: str


W = WordTemplate
WORD_TEMPLATES: dict[Split, tuple[WordTemplate, ...]] = {
    "train": (
        W(
            "add",
            "{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?",
            "{name} starts with {a} and gets {b} more: {a} + {b} = {r}.",
            "{name} has {r} {item} now.",
        ),
        W(
            "add",
            "There are {a} {item} in a bag and {b} {item} on the table. How many {item} are there in total?",
            "Put the two groups together: {a} + {b} = {r}.",
            "There are {r} {item} in total.",
        ),
        W(
            "sub",
            "{name} had {a} {item} and gave away {b}. How many {item} are left?",
            "Take away what was given: {a} - {b} = {r}.",
            "{name} has {r} {item} left.",
        ),
        W(
            "mul",
            "A box holds {a} {item}. How many {item} are in {b} boxes?",
            "Each box has {a}, and there are {b} boxes: {a} × {b} = {r}.",
            "{b} boxes hold {r} {item}.",
        ),
        W(
            "div",
            "{a} {item} are shared equally among {b} friends. How many does each friend get?",
            "Share equally: {a} ÷ {b} = {r}.",
            "Each friend gets {r} {item}.",
        ),
        W(
            "two",
            "{name} buys {a} packs with {b} {item} each and gives away {c}. How many {item} are left?",
            "First {a} × {b} = {p}. Then {p} - {c} = {r}.",
            "{name} has {r} {item} left.",
        ),
        W(
            "add",
            "{name}有 {a} {m}{item_zh}，又买了 {b} {m}，现在一共有几{m}？",
            "原来有 {a} {m}，又买了 {b} {m}：{a} + {b} = {r}。",
            "{name}现在有 {r} {m}{item_zh}。",
        ),
        W(
            "sub",
            "{name}有 {a} {m}{item_zh}，送给同学 {b} {m}，还剩几{m}？",
            "{a} - {b} = {r}。",
            "{name}还剩 {r} {m}{item_zh}。",
        ),
        W("mul", "每盒有 {a} {m}{item_zh}，{b} 盒一共有多少{m}？", "{a} × {b} = {r}。", "一共有 {r} {m}{item_zh}。"),
        W(
            "div",
            "{a} {m}{item_zh}平均分给 {b} 个小朋友，每人分到几{m}？",
            "{a} ÷ {b} = {r}。",
            "每人分到 {r} {m}{item_zh}。",
        ),
        W(
            "add",
            "{name} read {a} pages on Monday and {b} pages on Tuesday. How many pages in all?",
            "Monday and Tuesday together: {a} + {b} = {r}.",
            "{name} read {r} pages in all.",
        ),
        W(
            "add",
            "A farm has {a} {item}. Then {b} more {item} arrive. How many {item} does the farm have?",
            "{a} + {b} = {r}.",
            "The farm has {r} {item}.",
        ),
        W(
            "add",
            "{name} saved {a} dollars and then earned {b} dollars. How much money does {name} have?",
            "Saved plus earned: {a} + {b} = {r}.",
            "{name} has {r} dollars.",
        ),
        W(
            "sub",
            "There were {a} {item} on a shelf. {b} fell off. How many {item} are still on the shelf?",
            "{a} - {b} = {r}.",
            "{r} {item} are still on the shelf.",
        ),
        W(
            "sub",
            "{name} needs {a} {item} but only has {b}. How many more {item} does {name} need?",
            "The gap is {a} - {b} = {r}.",
            "{name} needs {r} more {item}.",
        ),
        W(
            "sub",
            "A train carries {a} people. At the station {b} get off. How many people are left on the train?",
            "{a} - {b} = {r}.",
            "{r} people are left on the train.",
        ),
        W(
            "mul",
            "{name} walks {a} km every day for {b} days. How many km is that?",
            "{a} km a day for {b} days: {a} × {b} = {r}.",
            "That is {r} km.",
        ),
        W(
            "mul",
            "One ticket costs {a} dollars. What do {b} tickets cost?",
            "{b} tickets at {a} each: {a} × {b} = {r}.",
            "{b} tickets cost {r} dollars.",
        ),
        W(
            "div",
            "{name} has {a} {item} and puts them into {b} equal groups. How many {item} are in each group?",
            "{a} ÷ {b} = {r}.",
            "Each group has {r} {item}.",
        ),
        W(
            "div",
            "A rope of {a} meters is cut into {b} equal pieces. How long is each piece?",
            "{a} ÷ {b} = {r}.",
            "Each piece is {r} meters long.",
        ),
        W(
            "two",
            "A class has {a} tables with {b} chairs each, and {c} chairs are broken. How many chairs work?",
            "First {a} × {b} = {p}. Then {p} - {c} = {r}.",
            "{r} chairs work.",
        ),
        W(
            "two",
            "{name} bakes {a} trays of {b} {item} and sells {c}. How many {item} are left?",
            "{a} × {b} = {p}, and {p} - {c} = {r}.",
            "{r} {item} are left.",
        ),
    ),
    "val": (
        W(
            "add",
            "{name} picked {a} {item} in the morning and {b} in the afternoon. How many {item} were picked?",
            "Morning plus afternoon: {a} + {b} = {r}.",
            "{name} picked {r} {item}.",
        ),
        W(
            "sub",
            "A shop had {a} {item}. It sold {b}. How many {item} remain?",
            "{a} - {b} = {r}.",
            "The shop has {r} {item} left.",
        ),
        W(
            "mul",
            "There are {b} rows with {a} {item} in each row. How many {item} are there?",
            "{b} rows of {a}: {a} × {b} = {r}.",
            "There are {r} {item}.",
        ),
        W(
            "two",
            "{name} has {a} bags of {b} {item} and loses {c}. How many {item} does {name} have?",
            "{a} × {b} = {p}. Then {p} - {c} = {r}.",
            "{name} has {r} {item}.",
        ),
        W(
            "add",
            "桌上有 {a} {m}{item_zh}，{name}又放了 {b} {m}，桌上现在有多少{m}？",
            "{a} + {b} = {r}。",
            "桌上现在有 {r} {m}{item_zh}。",
        ),
        W(
            "two",
            "{name}买了 {a} 包{item_zh}，每包 {b} {m}，吃掉了 {c} {m}，还剩多少{m}？",
            "{a} × {b} = {p}，{p} - {c} = {r}。",
            "还剩 {r} {m}{item_zh}。",
        ),
    ),
}
register_templates("math.word", {s: tuple(t.question for t in WORD_TEMPLATES[s]) for s in ("train", "val")})

NAMES_EN = (
    "Tom",
    "Anna",
    "Ben",
    "Lily",
    "Sam",
    "Mia",
    "Leo",
    "Emma",
    "Jack",
    "Lucy",
    "Max",
    "Zoe",
    "Noah",
    "Ella",
    "Omar",
    "Nina",
    "Ravi",
    "Kate",
    "Hugo",
    "Iris",
)
NAMES_ZH = ("小明", "小红", "小刚", "小丽", "小华", "小军", "小芳", "小强", "小林", "小雪")
ITEMS_EN = (
    "apples",
    "pencils",
    "cookies",
    "stickers",
    "marbles",
    "books",
    "eggs",
    "cards",
    "balloons",
    "candies",
    "shells",
    "coins",
    "flowers",
    "toy cars",
)
ITEMS_ZH = (
    ("苹果", "个"),
    ("铅笔", "支"),
    ("饼干", "块"),
    ("贴纸", "张"),
    ("气球", "个"),
    ("糖果", "颗"),
    ("书", "本"),
    ("橘子", "个"),
)


def _word_values(rng: random.Random, op: str) -> tuple[int, int, int]:
    if op == "add":
        return rng.randint(2, 60), rng.randint(2, 40), 0
    if op == "sub":
        a = rng.randint(10, 99)
        return a, rng.randint(1, a - 1), 0
    if op == "mul":
        return rng.randint(2, 12), rng.randint(2, 9), 0
    if op == "div":
        return rng.randint(2, 12), rng.randint(2, 9), 0  # (quotient, divisor) -> a = q * b below
    a, b = rng.randint(2, 6), rng.randint(2, 12)
    return a, b, rng.randint(1, a * b - 1)


def word_problem(rng: random.Random, split: Split) -> ar.Problem:
    template = rng.choice(WORD_TEMPLATES[split])
    a, b, c = ar.pick(rng, split, "word", lambda: (template.op, *_word_values(rng, template.op)))[1:]
    p, r = 0, 0
    if template.op == "add":
        r = a + b
    elif template.op == "sub":
        r = a - b
    elif template.op == "mul":
        r = a * b
    elif template.op == "div":
        a, r = a * b, a
    else:
        p = a * b
        r = p - c
    item_zh, measure = rng.choice(split_pool(ITEMS_ZH, split))
    zh = is_zh(template.question)
    name = rng.choice(split_pool(NAMES_ZH if zh else NAMES_EN, split))
    values = {
        "name": name,
        "a": a,
        "b": b,
        "c": c,
        "p": p,
        "r": r,
        "m": measure,
        "item_zh": item_zh,
        "item": rng.choice(split_pool(ITEMS_EN, split)),
    }
    return ar.Problem(
        template.question.format(**values),
        template.reasoning.format(**values),
        template.final.format(**values),
        r,
        "zh" if zh else "en",
    )


PROBLEM_KINDS = {
    "add": ar.add_problem,
    "sub": ar.sub_problem,
    "mul": ar.mul_problem,
    "div": ar.div_problem,
    "mixed": ar.mixed_problem,
    "compare": ar.compare_problem,
    "unit": ar.unit_problem,
    "word": word_problem,
}
KIND_WEIGHTS = {"add": 2, "sub": 2, "mul": 2, "div": 1, "mixed": 2, "compare": 1, "unit": 2, "word": 3}


def sample_problem(rng: random.Random, split: Split) -> ar.Problem:
    kind = rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
    return PROBLEM_KINDS[kind](rng, split)


_SENTENCE_END = re.compile(r"(?<=[.。!?！？])\s*")


def budget_cut(rng: random.Random, reasoning: str, final: str) -> tuple[str, str]:
    """The thought cut off mid-way, as `max_thinking_tokens` cuts it, and an answer that goes on from the cut:
    the interrupted step said again in full, the steps after it, then the final sentence. A model trained only on
    finished thoughts drifted after a cut ("12 × 3 = 36. Then 36 + 36 = 72 ... 12 × 3 = 72.", issue 18)."""
    sentences = [s for s in _SENTENCE_END.split(reasoning) if s]
    index = rng.randrange(len(sentences))
    current = sentences[index]
    zh = is_zh(current)
    pieces = re.findall(r"\d+|.", current) if zh else current.split(" ")  # never cut inside a number
    partial = ("" if zh else " ").join(pieces[: rng.randrange(len(pieces))])  # may be empty: cut between steps
    done = ("" if zh else " ").join(sentences[:index])
    cut = (done + ("" if zh or not done or not partial else " ") + partial).strip()
    rest = ("" if zh else " ").join(sentences[index:])
    return cut, rest + ("" if zh else " ") + final


def math_conversation(rng: random.Random, split: Split, think: bool, cut_share: float = 0.12) -> Conversation:
    """One problem answered with reasoning (think mode) or directly (off mode); same final sentence. In think mode
    a `cut_share` of the thoughts are cut off (budget_cut), training only."""
    problem = sample_problem(rng, split)
    messages = maybe_system(rng, split, probability=0.3)
    messages.append(user(problem.question))
    if think and split == "train" and rng.random() < cut_share:
        reasoning, answer = budget_cut(rng, problem.reasoning, problem.final)
        messages.append(assistant(answer, reasoning))
    else:
        messages.append(assistant(problem.final, problem.reasoning if think else None))
    return messages


def math_eval(rng: random.Random) -> dict[str, object]:
    """A held-out problem for `minigpt-eval think`: the answer is the last number of a correct reply."""
    problem = sample_problem(rng, "val")
    return {"messages": [user(problem.question)], "answer": str(problem.answer)}
