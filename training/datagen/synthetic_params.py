"""The parameters of the synthetic verb_noun tools: their schemas, the values they take, how a request states them.

What it is: `PARAM_KINDS`, one `ParamKind` per JSON type (string, integer, number, boolean, enum, string and
integer arrays, a nested object): the names a parameter of that kind goes by, its schema, a value drawn from a
split-disjoint space (values.py; a few fixed pools such as `STRINGS` and `CITIES` now and then) and the phrase that
states the value in a request.
What it is not: the tools and their requests (synthetic_tools.py) or the realistic API parameters (api_params.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from training.datagen import values, vocabulary
from training.datagen.base import Split, split_pool

STRINGS = (
    "Paris",
    "Team lunch",
    "Berlin",
    "alice@example.com",
    "Blue sky",
    "Weekly sync",
    "bob",
    "Tokyo",
    "Hello there",
    "Quarterly report",
    "Oslo",
    "carol@mail.com",
    "Birthday party",
    "Madrid",
    "Green tea",
    "Project X",
    "Lisbon",
    "dave",
    "Morning run",
    "Cairo",
    "Budget plan",
    "Seoul",
    "eve@test.org",
    "Old town",
    "Lima",
)
CITIES = (
    "Paris",
    "Berlin",
    "Tokyo",
    "Oslo",
    "Madrid",
    "Lisbon",
    "Cairo",
    "Seoul",
    "Lima",
    "Rome",
    "Dublin",
    "Nairobi",
    "Hanoi",
    "Quito",
    "Vienna",
)
TAGS = ("work", "home", "urgent", "family", "travel", "music", "sport", "food", "school", "health", "ideas", "later")
ENUMS = {
    "priority": ("low", "medium", "high"),
    "status": ("open", "pending", "closed"),
    "size": ("small", "medium", "large"),
    "format": ("pdf", "csv", "json"),
    "currency": ("USD", "EUR", "CNY"),
    "mode": ("fast", "safe", "balanced"),
    "color": ("red", "green", "blue", "black"),
    "visibility": ("public", "private"),
}


@dataclass(frozen=True)
class ParamKind:
    """How one parameter is described in the schema, drawn as a value and mentioned in a request."""

    names: tuple[str, ...]
    schema: Callable[[str], dict[str, Any]]
    value: Callable[[random.Random, Split, str], Any]
    phrase: Callable[[random.Random, str, Any], str]


def _label(name: str) -> str:
    return name.replace("_", " ")


STRING_MAKERS: dict[str, Callable[[random.Random, Split], str]] = {
    "email": values.email,
    "username": values.username,
    "query": values.query,
    "city": values.proper_name,
    "destination": values.proper_name,
    "name": values.proper_name,
}


# Training may also name any world city of the vocabulary, except the held-out ones of CITIES and STRINGS.
_HELD_OUT_CITY_VALUES = frozenset(split_pool(CITIES, "val")) | frozenset(split_pool(STRINGS, "val"))
_TRAIN_WORLD_CITIES = tuple(city for city, _ in vocabulary.CITIES if city not in _HELD_OUT_CITY_VALUES)


def _city(rng: random.Random, split: Split) -> str:
    if split == "train" and rng.random() < 0.5:
        return rng.choice(_TRAIN_WORLD_CITIES)
    return rng.choice(split_pool(CITIES, split))


def _str_value(rng: random.Random, split: Split, name: str) -> str:
    """A value fitting the parameter's name, from a space too large to memorise (see values.py)."""
    if rng.random() < 0.1:
        return rng.choice(split_pool(STRINGS, split))
    return STRING_MAKERS.get(name, values.string_value)(rng, split)


def _num_value(rng: random.Random, split: Split, _name: str) -> float:
    return values.split_draw(rng, split, "number", lambda r: round(r.uniform(0.5, 500), r.choice((1, 2))))


def _tags_value(rng: random.Random, split: Split, _name: str) -> list[str]:
    """One to three distinct lower-case words (the old fixed tags now and then)."""
    out: list[str] = []
    for _ in range(rng.randint(1, 3)):
        tag = rng.choice(split_pool(TAGS, split)) if rng.random() < 0.2 else values.word(rng, split)
        if tag not in out:
            out.append(tag)
    return out


def _bool_phrase(rng: random.Random, name: str, value: Any) -> str:
    word = rng.choice((("true", "false"), ("yes", "no"), ("on", "off")))[0 if value else 1]
    return f"{_label(name)} {word}"


def _list_phrase(_rng: random.Random, name: str, value: Any) -> str:
    items = [f'"{v}"' if isinstance(v, str) else str(v) for v in value]
    joined = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return f"{_label(name)} {joined}"


def _object_phrase(_rng: random.Random, name: str, value: Any) -> str:
    inner = ", ".join(f'{_label(k)} "{v}"' if isinstance(v, str) else f"{_label(k)} {v}" for k, v in value.items())
    return f"{_label(name)} ({inner})"


PARAM_KINDS: tuple[ParamKind, ...] = (
    ParamKind(
        (
            "title",
            "name",
            "city",
            "email",
            "query",
            "label",
            "destination",
            "username",
            "subject",
            "note",
            "owner",
            "company",
            "author",
            "topic",
            "nickname",
        ),
        lambda n: {"type": "string", "description": f"The {_label(n)}"},
        _str_value,
        lambda _r, n, v: f'{_label(n)} "{v}"',
    ),
    ParamKind(
        (
            "quantity",
            "count",
            "seats",
            "duration_minutes",
            "limit",
            "pages",
            "guests",
            "year",
            "age",
            "level",
            "floor",
            "copies",
        ),
        lambda n: {"type": "integer", "description": f"The {_label(n)}"},
        lambda r, s, n: values.integer(r, s, 999),
        lambda _r, n, v: f"{_label(n)} {v}",
    ),
    ParamKind(
        ("amount", "price", "weight_kg", "rating", "distance_km", "budget", "discount", "score", "height_m"),
        lambda n: {"type": "number", "description": f"The {_label(n)}"},
        _num_value,
        lambda _r, n, v: f"{_label(n)} {v}",
    ),
    ParamKind(
        ("urgent", "notify", "is_public", "recurring", "include_archived", "dry_run", "overwrite", "verbose"),
        lambda n: {"type": "boolean", "description": f"Whether {_label(n)}"},
        lambda r, s, n: r.random() < 0.5,
        _bool_phrase,
    ),
    ParamKind(
        tuple(ENUMS),
        lambda n: {"type": "string", "enum": list(ENUMS[n]), "description": f"The {n}"},
        lambda r, s, n: r.choice(ENUMS[n]),
        lambda _r, n, v: f"{n} {v}",
    ),
    ParamKind(
        ("tags", "recipients", "keywords", "labels", "categories", "members"),
        lambda n: {"type": "array", "items": {"type": "string"}, "description": f"List of {_label(n)}"},
        _tags_value,
        _list_phrase,
    ),
    ParamKind(
        ("ids", "item_ids", "days", "user_ids", "ranks"),
        lambda n: {"type": "array", "items": {"type": "integer"}, "description": f"List of {_label(n)}"},
        lambda r, s, n: sorted({values.integer(r, s, 999) for _ in range(r.randint(1, 3))}),
        _list_phrase,
    ),
    ParamKind(
        ("location", "address"),
        lambda n: {
            "type": "object",
            "description": f"The {n}",
            "properties": {"city": {"type": "string"}, "zip": {"type": "integer"}},
            "required": ["city"],
        },
        lambda r, s, n: {
            "city": _city(r, s) if r.random() < 0.2 else values.proper_name(r, s),
            **({"zip": r.randint(10000, 99999)} if r.random() < 0.5 else {}),
        },
        _object_phrase,
    ),
)
