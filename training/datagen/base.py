"""Shared plumbing of the synthetic data generator: splits, the template registry, message builders.

What it is: the few types and helpers every generator module uses — the `Split` literal, a deterministic
value partition (`value_split`) so that held-out values never appear in train, a registry that records which
phrasing templates belong to which split, and small constructors for minimind-format messages.
What it is not: a generator of any data itself, nor a chat-template renderer (minigpt_core owns that).
"""

from __future__ import annotations

import itertools
import json
import random
import zlib
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

Split = Literal["train", "val"]
SPLITS: tuple[Split, Split] = ("train", "val")
Message = dict[str, Any]
Conversation = list[Message]
T = TypeVar("T")

VAL_FRACTION_MOD = 5  # one value in five goes to the held-out split

SYSTEM_PROMPTS: dict[Split, tuple[str, ...]] = {
    "train": (
        "You are MiniGPT, a helpful assistant.",
        "You are a helpful assistant.",
        "You are MiniGPT. Answer briefly.",
        "你是 MiniGPT，一个乐于助人的助手。",
    ),
    "val": (
        "You are MiniGPT, a small and friendly assistant.",
        "Be helpful and concise.",
    ),
}

# Every phrasing family registers its templates here, keyed "module.family" -> split -> templates.
TEMPLATE_REGISTRY: dict[str, dict[Split, tuple[str, ...]]] = {}


def register_templates(family: str, templates: dict[Split, tuple[str, ...]]) -> dict[Split, tuple[str, ...]]:
    """Record `templates` under `family` after checking the two splits share no template; return them."""
    overlap = set(templates["train"]) & set(templates["val"])
    if overlap:
        raise ValueError(f"templates of {family} appear in both splits: {sorted(overlap)[:3]}")
    if not templates["train"] or not templates["val"]:
        raise ValueError(f"templates of {family} need at least one template per split")
    TEMPLATE_REGISTRY[family] = templates
    return templates


def compose_templates(*parts: tuple[str, ...], avoid: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Every concatenation of one piece from each part (pieces carry their own spaces), first letter upper-cased,
    minus the templates in `avoid` (the held-out ones): training phrasings as a small grammar, so a model learns
    where the action and the values sit in a request rather than a list of fixed sentences."""
    texts = ("".join(combo).strip() for combo in itertools.product(*parts))
    capitalised = (text[0].upper() + text[1:] for text in texts)
    return tuple(text for text in dict.fromkeys(capitalised) if text not in avoid)  # ordered, without repeats


def stable_hash(value: object) -> int:
    """A hash that does not change between processes (unlike `hash()` on str)."""
    return zlib.crc32(repr(value).encode("utf-8"))


def value_split(*values: object) -> Split:
    """The split a value tuple belongs to: a fixed partition, so train and val values never overlap."""
    return "val" if stable_hash(values) % VAL_FRACTION_MOD == 0 else "train"


def split_pool(pool: Sequence[T], split: Split) -> list[T]:
    """The items of `pool` that belong to `split` (disjoint across splits, never empty for pools of 3+)."""
    chosen = [item for item in pool if value_split(item) == split]
    if not chosen:  # a tiny pool might hash entirely into one side: fall back to an index partition
        chosen = [item for i, item in enumerate(pool) if (i % VAL_FRACTION_MOD == 0) == (split == "val")]
    return chosen


def make_rng(seed: int, *parts: object) -> random.Random:
    """A generator seeded from the corpus seed and a label, so each kind/split stream is independent."""
    return random.Random(":".join([str(seed), *map(str, parts)]))


def system_message(rng: random.Random, split: Split, tools: list[dict[str, Any]] | None = None) -> Message:
    """A system turn with one of the split's prompts, optionally carrying OpenAI tool dicts."""
    message: Message = {"role": "system", "content": rng.choice(SYSTEM_PROMPTS[split])}
    if tools:
        message["tools"] = tools
    return message


def maybe_system(rng: random.Random, split: Split, probability: float = 0.4) -> Conversation:
    """Zero or one system turn: most plain dialogues in the wild have none."""
    return [system_message(rng, split)] if rng.random() < probability else []


def user(content: str) -> Message:
    return {"role": "user", "content": content}


def assistant(content: str, reasoning: str | None = None) -> Message:
    message: Message = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return message


def call_id(rng: random.Random) -> str:
    """An OpenAI-style call id: `call_` and 16 random alphanumerics."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "call_" + "".join(rng.choice(alphabet) for _ in range(16))


def tool_call(rng: random.Random, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """One OpenAI tool call with `arguments` serialised as a JSON string."""
    return {
        "id": call_id(rng),
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def assistant_calls(calls: list[dict[str, Any]], reasoning: str | None = None) -> Message:
    message = assistant("", reasoning)
    message["tool_calls"] = calls
    return message


def tool_result(call: dict[str, Any], content: str) -> Message:
    return {"role": "tool", "tool_call_id": call["id"], "content": content}


PREFIXES = {
    "en": ("Hi! ", "Hello. ", "Quick question: ", "Please help. ", "Hey, ", "OK, ", "Good morning! ", "One thing: "),
    "zh": ("你好，", "请问，", "麻烦一下，"),
}
SUFFIXES = {"en": (" Thanks!", " Thank you.", " Please.", " Cheers.", " That's all."), "zh": ("谢谢！", "谢谢。")}


def is_zh(text: str) -> bool:
    """Whether `text` contains CJK ideographs (how the generators tell Chinese phrasings from English)."""
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def decorate(rng: random.Random, text: str, probability: float = 0.35) -> str:
    """`text` with a greeting before and/or thanks after it now and then (training requests only), so a model
    finds the request inside varied openings and endings instead of at fixed positions."""
    if rng.random() >= probability:
        return text
    lang = "zh" if is_zh(text) else "en"
    roll = rng.random()
    if roll < 0.45:
        return rng.choice(PREFIXES[lang]) + text
    if roll < 0.8:
        return text + rng.choice(SUFFIXES[lang])
    return rng.choice(PREFIXES[lang]) + text + rng.choice(SUFFIXES[lang])


def fill(template: str, **values: object) -> str:
    """`str.format` with a clearer error when a template names a missing field."""
    try:
        return template.format(**values)
    except KeyError as exc:
        raise ValueError(f"template {template!r} needs field {exc}") from exc
