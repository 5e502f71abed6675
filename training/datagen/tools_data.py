"""Tool-use scenarios for the six built-in tools: a request, the call's arguments, a tool result, the answer.

What it is: per-tool scenario builders (`ToolScenario`) with split-disjoint phrasings and values. Schemas and
results come from the real tools (`tools.registry.default_registry()`), so the model learns the true formats;
only `current_time`, whose real result depends on the clock, and `search_docs`, whose result depends on a folder,
answer through the deterministic stand-ins of stand_ins.py.
What it is not: the conversation assembly (tool_dialogues.py) or the synthetic schemas (synthetic_tools.py).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tools.registry import ToolRegistry, default_registry
from training.datagen import values
from training.datagen.base import Split, compose_templates, is_zh, register_templates, split_pool, value_split
from training.datagen.stand_ins import TIMEZONES, current_time_result, search_result


@dataclass
class ToolScenario:
    tool: dict[str, Any]  # OpenAI tool dict
    request: str
    arguments: dict[str, Any]
    result: str
    answer: str
    reasoning: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.tool["function"]["name"])


@functools.lru_cache(maxsize=1)
def _registry() -> ToolRegistry:
    return default_registry()


def builtin_schema(name: str) -> dict[str, Any]:
    """The OpenAI schema of a built-in tool, as the registry publishes it."""
    (schema,) = _registry().schemas([name])
    return dict(schema)


def run_tool(name: str, arguments: dict[str, Any]) -> str:
    """The real tool's result (a ToolError here means the generator drew a value the tool refuses: a bug)."""
    return _registry().call(name, arguments)


def _lang(text: str) -> str:
    return "zh" if is_zh(text) else "en"


CALC = register_templates(
    "tools.calculator",
    {
        "train": (
            "Use the calculator to compute {expr}.",
            "What is {expr}? Please use a tool.",
            "Calculate {expr} for me.",
            "Compute {expr}.",
            "{expr} 等于多少？请用计算器。",
            "用计算器算一下 {expr}。",
            "{expr} = ? Use the calculator.",
            "Quick math: {expr}",
            "Evaluate {expr} exactly.",
            "I'd like the result of {expr}.",
            "Please find {expr} with the calculator tool.",
            "What does {expr} come to?",
            "Solve {expr} for me, please.",
            "Hey, what's {expr}?",
            "Run {expr} through the calculator.",
            "Result of {expr}?",
            "请计算 {expr} 的结果。",
            "{expr} 是多少？",
        ),
        "val": ("Can you work out {expr} with the calculator?", "I need the value of {expr}.", "帮我算一下 {expr}。"),
    },
)
UNIT = register_templates(
    "tools.unit_convert",
    {
        "train": (
            "Convert {v} {frm} to {to}.",
            "How many {to} is {v} {frm}?",
            "Please convert {v} {frm} into {to}.",
            "把 {v} {frm} 换算成 {to}。",
            "{v} {frm} to {to}, please.",
            "Turn {v} {frm} into {to}.",
            "How much is {v} {frm} in {to}?",
            "Change {v} {frm} to {to}.",
            "I need {v} {frm} in {to}.",
            "What's {v} {frm} when converted to {to}?",
            "Give me {v} {frm} as {to}.",
            "In {to}, how much is {v} {frm}?",
            "Convert this: {v} {frm} -> {to}.",
            "{v} {frm} 是多少 {to}？",
            "请把 {v} {frm} 转换为 {to}。",
        ),
        "val": (
            "What is {v} {frm} expressed in {to}?",
            "I have {v} {frm}. How much is that in {to}?",
            "{v} {frm} 等于多少 {to}？",
        ),
    },
)
TIME = register_templates(
    "tools.current_time",
    {
        "train": (
            "What time is it in {tz}?",
            "Tell me the current time in {tz}.",
            "What is the date today in {tz}?",
            "现在 {tz} 几点了？",
            "Current time in {tz}?",
            "{tz}: what time is it now?",
            "Can you tell me the time in {tz}?",
            "What's the time over in {tz}?",
            "I need the current date and time for {tz}.",
            "Look up the time in the {tz} time zone.",
            "Time check for {tz}, please.",
            "What day and time is it in {tz} at the moment?",
            "请告诉我 {tz} 的当前时间。",
            "{tz} 时区现在几点？",
            "{tz} 现在几点？",
            "查一下 {tz} 的时间。",
            "What time does the clock show in {tz}?",
            "Tell me the local time for {tz}.",
            "Is it morning or evening in {tz} now?",
            "Show me the time in {tz} right now.",
            "Hi, I'm calling someone in {tz}. What time is it there?",
            "{tz} - current time?",
            "Which hour is it now in {tz}?",
            "Give me today's date and the hour for {tz}.",
            "请查询 {tz} 当前的日期和时间。",
            "{tz} 那边几点了？",
            "{tz} 今天几号，几点？",
            "我想知道 {tz} 的时间。",
        ),
        "val": ("What's the local time in {tz} right now?", "Check the clock in {tz} for me.", "{tz} 现在是什么时间？"),
    },
)
DATE = register_templates(
    "tools.date_add",
    {
        "train": (
            "What date is {days} days after {date}?",
            "Add {days} days to {date}.",
            "If I start on {date}, which date is {days} days later?",
            "{date} 之后 {days} 天是哪一天？",
            "From {date}, count {days} days forward. Which date is it?",
            "{days} days from {date} is which date?",
            "Take {date} and add {days} days.",
            "My trip starts {date} and lasts {days} days. When does it end?",
            "What's the date {days} days after {date}?",
            "Date math: {date} plus {days} days.",
            "Which date is {date} + {days} days?",
            "In {days} days from {date}, what's the date?",
            "Shift {date} by {days} days.",
            "{date} 加上 {days} 天是几号？",
            "请算 {date} 往后 {days} 天的日期。",
        ),
        "val": (
            "Starting from {date}, what is the date in {days} days?",
            "Which day comes {days} days past {date}?",
            "从 {date} 起再过 {days} 天是几号？",
        ),
    },
)
STATS = register_templates(
    "tools.text_stats",
    {
        "train": (
            'How many words are in this text: "{text}"?',
            'Count the words and characters in "{text}".',
            'Give me text statistics for: "{text}"',
            '统计一下这段文字："{text}"',
            'Word count for "{text}"?',
            'Text: "{text}" How many words and characters?',
            'Please analyse this text: "{text}"',
            'How long is "{text}" in words?',
            '"{text}" - count the words, please.',
            'Run text stats on "{text}".',
            'Can you measure "{text}" for me?',
            'I wrote "{text}". How many characters is that?',
            '请统计 "{text}" 的字数。',
            '"{text}" 有几个词？',
            'Count the words: "{text}"',
            'Stats for this sentence: "{text}"',
            'How many characters does "{text}" have?',
            'Check the length of "{text}".',
            'Please count words and sentences in "{text}".',
            '统计这句话的字数："{text}"',
            'Tell me how many words "{text}" has.',
            'How many letters and spaces are in "{text}"?',
            'I need word and sentence counts for "{text}".',
            'Measure this text: "{text}"',
            '"{text}" 这段话有多少个字符？',
            '帮我数一下 "{text}" 的词数。',
        ),
        "val": (
            'Analyse the length of "{text}".',
            'What are the word and character counts of "{text}"?',
            '这句话有多少个词："{text}"？',
        ),
    },
)
SEARCH_ACTIONS = (
    "search the docs for ",
    "look up ",
    "look in the docs for ",
    "find docs on ",
    "search the handbook for ",
    "check the guide about ",
    "consult the docs on ",
    "browse the documentation for ",
    "find notes about ",
    "dig up docs about ",
    "read the docs on ",
    "search our notes for ",
    "look through the reference for ",
    "query the knowledge base for ",
    "check the documentation on ",
    "see what the docs say about ",
    "pull up notes on ",
    "search for ",
    "find information on ",
)
SEARCH_OPENERS = ("", "Please ", "Can you ", "Could we ", "Now ", "I'd like you to ", "Hey, ", "OK, ", "Quickly ")
HELD_OUT_SEARCH = (
    "Find documentation about {query}.",
    "Check the manual regarding {query}.",
    "帮我搜索文档：{query}。",
)
SEARCH = register_templates(
    "tools.search_docs",
    {
        "train": (
            "Search the docs for {query}.",
            "Look up {query} in the documentation.",
            "What do the docs say about {query}?",
            "在文档里查一下 {query}。",
            "Search for {query}.",
            "Docs lookup: {query}",
            "I need information on {query} from the docs.",
            "Find notes on {query}.",
            "Can you search the documentation for {query}?",
            "Look for {query} in the notes.",
            "Any docs about {query}?",
            "Please search: {query}",
            "What do we have on {query}?",
            "Query the docs with {query}.",
            "查找关于 {query} 的文档。",
            "搜索一下 {query}。",
            "Look up: {query}.",
            "Search the notes about {query}, please.",
            "Is there anything in the docs on {query}?",
            "I'm looking for {query}. Can you search?",
            "Get me the passages about {query}.",
            "Documentation search for {query}.",
            "Pull up what the docs say on {query}.",
            "Search docs: {query}",
            "文档里有没有关于 {query} 的内容？",
            "查一下文档中的 {query}。",
            "Consult the handbook on {query}.",
            "{query} - what does the documentation say?",
            "Look through the docs concerning {query}.",
            "Search the guide for: {query}",
            "Please find docs on {query}.",
            "Find me something about {query} in the docs.",
            "文档搜索：{query}",
            "请在文档中搜索 {query}。",
            "帮我在文档里找 {query}。",
        ),
        "val": HELD_OUT_SEARCH,
    },
)
# a small grammar of English requests beside the hand-written ones (half of the training requests)
SEARCH_COMPOSED = compose_templates(SEARCH_OPENERS, SEARCH_ACTIONS, ("{query}",), (".", "?", ""), avoid=HELD_OUT_SEARCH)

UNIT_PAIRS = (
    ("km", "mi"),
    ("mi", "km"),
    ("kg", "lb"),
    ("lb", "kg"),
    ("miles", "kilometers"),
    ("feet", "meters"),
    ("meters", "feet"),
    ("celsius", "fahrenheit"),
    ("fahrenheit", "celsius"),
    ("liters", "gallons"),
    ("gallons", "liters"),
    ("hours", "minutes"),
    ("GB", "MB"),
    ("inches", "cm"),
    ("ounces", "grams"),
    ("km/h", "mph"),
    ("mph", "km/h"),
    ("pounds", "kilograms"),
    ("cups", "ml"),
    ("yards", "meters"),
)
TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "I like green tea.",
    "MiniGPT is a small model.",
    "It rained all day, so we stayed home.",
    "Hello world!",
    "Cats sleep a lot. Dogs do too.",
    "We will meet at noon.",
    "Small models can learn simple patterns.",
    "Please close the door.",
    "The train leaves at nine.",
    "Music makes people happy.",
    "Books are full of stories.",
    "Today is a good day to learn.",
    "Water boils at one hundred degrees.",
    "She plays the piano every day.",
)
QUERIES = (
    "tokenizer training",
    "the chat template",
    "tool calling",
    "think mode",
    "the KV cache",
    "starting the server",
    "checkpoint format",
    "learning rate",
    "DPO training",
    "streaming responses",
    "batch size",
    "special tokens",
    "the demo model",
    "resume training",
    "sampling temperature",
)


def _pick_values(rng: random.Random, split: Split, kind: str, make: Callable[[], tuple[Any, ...]]) -> tuple[Any, ...]:
    while True:
        values = make()
        if value_split(kind, *values) == split:
            return values


def _expression(rng: random.Random) -> str:
    a, b, c = rng.randint(11, 999), rng.randint(2, 99), rng.randint(1, 50)
    return rng.choice(
        (
            f"{a} * {b}",
            f"{a} + {b} * {c}",
            f"({a} - {b}) * {c}",
            f"{a} / {b}",
            f"{b} ** 2",
            f"{a} * {b} - {c}",
            f"{a} % {b}",
            f"{a} + {b} + {c}",
        )
    )


def calculator_scenario(rng: random.Random, split: Split) -> ToolScenario:
    (expr,) = _pick_values(rng, split, "calc", lambda: (_expression(rng),))
    request = rng.choice(CALC[split]).format(expr=expr)
    result = run_tool("calculator", {"expression": expr})
    lang = _lang(request)
    answer = f"{expr} = {result}。" if lang == "zh" else rng.choice((f"{expr} = {result}.", f"The result is {result}."))
    return ToolScenario(
        builtin_schema("calculator"),
        request,
        {"expression": expr},
        result,
        answer,
        "计算需要精确结果，用计算器。" if lang == "zh" else "This needs an exact result, so I use the calculator.",
    )


def unit_scenario(rng: random.Random, split: Split) -> ToolScenario:
    frm, to, v = _pick_values(
        rng, split, "unit", lambda: (*rng.choice(UNIT_PAIRS), rng.choice((rng.randint(1, 200), rng.randint(1, 99) / 2)))
    )
    request = rng.choice(UNIT[split]).format(v=v, frm=frm, to=to)
    arguments = {"value": v, "from_unit": frm, "to_unit": to}
    result = run_tool("unit_convert", arguments)
    match = re.search(r"=\s*(.+)$", result)
    converted = match.group(1) if match else result
    answer = f"{v} {frm} 等于 {converted}。" if _lang(request) == "zh" else f"{v} {frm} is {converted}."
    return ToolScenario(
        builtin_schema("unit_convert"),
        request,
        arguments,
        result,
        answer,
        f"The user wants {frm} converted to {to}; unit_convert does that.",
    )


def time_scenario(rng: random.Random, split: Split) -> ToolScenario:
    tz = rng.choice(split_pool(tuple(TIMEZONES), split))
    base = dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=rng.randint(0, 700 * 24 * 60))
    request = rng.choice(TIME[split]).format(tz=tz)
    arguments = {"timezone": tz}
    result = current_time_result(tz, base)
    data = json.loads(result)
    if _lang(request) == "zh":
        answer = f"{tz} 现在是 {data['date']} {data['time'][:5]}，{data['weekday']}。"
    else:
        answer = f"In {tz} it is {data['time'][:5]} on {data['weekday']}, {data['date']}."
    return ToolScenario(
        builtin_schema("current_time"),
        request,
        arguments,
        result,
        answer,
        "I cannot know the time myself, so I call current_time.",
    )


def date_scenario(rng: random.Random, split: Split) -> ToolScenario:
    offset, days = _pick_values(rng, split, "date", lambda: (rng.randint(0, 1500), rng.randint(1, 120)))
    date = (dt.date(2023, 1, 1) + dt.timedelta(days=offset)).isoformat()
    request = rng.choice(DATE[split]).format(date=date, days=days)
    arguments = {"date": date, "days": days}
    result = run_tool("date_add", arguments)
    data = json.loads(result)
    if _lang(request) == "zh":
        answer = f"{date} 之后 {days} 天是 {data['date']}（{data['weekday']}）。"
    else:
        answer = f"{days} days after {date} is {data['date']}, a {data['weekday']}."
    return ToolScenario(
        builtin_schema("date_add"),
        request,
        arguments,
        result,
        answer,
        "Date arithmetic is easy to get wrong; date_add does it exactly.",
    )


def stats_scenario(rng: random.Random, split: Split) -> ToolScenario:
    text = rng.choice(split_pool(TEXTS, split)) if rng.random() < 0.3 else values.sentence(rng, split)
    request = rng.choice(STATS[split]).format(text=text)
    result = run_tool("text_stats", {"text": text})
    try:
        data = json.loads(result)
        words, chars = data.get("words"), data.get("characters", data.get("chars"))
    except (json.JSONDecodeError, AttributeError):
        words, chars = None, None
    if words is None or chars is None:
        answer = f"The statistics are: {result}"
    elif _lang(request) == "zh":
        answer = f"这段文字有 {words} 个词，{chars} 个字符。"
    else:
        answer = f"The text has {words} words and {chars} characters."
    return ToolScenario(
        builtin_schema("text_stats"),
        request,
        {"text": text},
        result,
        answer,
        "Counting exactly is a job for text_stats.",
    )


_HELD_OUT_QUERIES = frozenset(split_pool(QUERIES, "val"))


def search_scenario(rng: random.Random, split: Split) -> ToolScenario:
    query = rng.choice(split_pool(QUERIES, split)) if rng.random() < 0.5 else values.query(rng, split)
    while split == "train" and query in _HELD_OUT_QUERIES:  # a vocabulary topic may spell a held-out one
        query = values.query(rng, split)
    templates = SEARCH_COMPOSED if split == "train" and rng.random() < 0.5 else SEARCH[split]
    request = rng.choice(templates).format(query=query)
    arguments: dict[str, Any] = {"query": query}
    if rng.random() < 0.3:
        arguments["top_k"] = rng.randint(1, 5)
        request += (
            f" Show me {arguments['top_k']} results." if _lang(request) == "en" else f" 返回 {arguments['top_k']} 条。"
        )
    result = search_result(query, int(arguments.get("top_k", 3)))
    top = json.loads(result)[0]
    answer = f"According to {top['source']}: {top['text']}"
    return ToolScenario(
        builtin_schema("search_docs"),
        request,
        arguments,
        result,
        answer,
        "The answer is in the project docs, so I search them.",
    )


BUILTIN_SCENARIOS: dict[str, Callable[[random.Random, Split], ToolScenario]] = {
    "calculator": calculator_scenario,
    "unit_convert": unit_scenario,
    "current_time": time_scenario,
    "date_add": date_scenario,
    "text_stats": stats_scenario,
    "search_docs": search_scenario,
}
BUILTIN_NAMES = tuple(BUILTIN_SCENARIOS)
