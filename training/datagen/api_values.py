"""The values of realistic API parameters: how each is drawn and how a user states it in a request.

What it is: value makers (a place, an ISO date, a clock time, an amount of money, e-mail lists, codes, ids, slugs;
split-disjoint where the value space allows, see base.value_split and values.split_draw) and sayers that state a
value the way people do: a date in several formats, a clock time as "3 pm", minutes as hours, quoted text, lists
with "and", enum values by synonyms (the `*_UNITS`/`CABINS`/... tables, `zh:` marking a Chinese synonym); `pick`
turns a few phrasings with `{v}` into a sayer.
What it is not: the parameter kinds built from them (api_params.py) or the tools (api_tools.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from training.datagen import values
from training.datagen.base import Split, split_pool

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")  # fmt: skip
PLACES = (
    "Oslo", "Lima", "Quito", "Hanoi", "Vienna", "Dublin", "Nairobi", "Cairo", "Porto", "Kyoto", "Perth", "Bergen",
    "Tallinn", "Krakow", "Seville", "Leeds", "Geneva", "Tucson", "Halifax", "Bilbao", "Lyon", "Graz", "Utrecht",
    "Cusco", "Accra", "Dakar", "Busan", "Osaka", "Taipei", "Chengdu", "Xiamen", "Hangzhou",
)  # fmt: skip
LANGUAGES = ("French", "German", "Spanish", "Italian", "Japanese", "Korean", "Dutch", "Polish", "Swedish", "Greek")


def join_items(items: list[str], zh: bool = False) -> str:
    if zh:
        return "、".join(items[:-1]) + ("和" if len(items) > 1 else "") + items[-1]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def place(rng: random.Random, split: Split) -> str:
    if rng.random() < 0.6:
        return rng.choice(split_pool(PLACES, split))
    return values.proper_name(rng, split)


def iso_date(rng: random.Random, split: Split) -> str:
    return values.split_draw(
        rng, split, "api_date", lambda r: f"{r.randint(2024, 2027)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
    )


def say_date(rng: random.Random, iso: str, zh: bool) -> str:
    """An ISO date as people write it (the call must carry the ISO form)."""
    year, month, day = (int(x) for x in iso.split("-"))
    if zh:
        return rng.choice((f"{year}年{month}月{day}日", iso))
    return rng.choice(
        (
            iso,
            f"{MONTHS[month - 1]} {day}, {year}",
            f"{day} {MONTHS[month - 1]} {year}",
            f"{MONTHS[month - 1][:3]} {day} {year}",
        )
    )


def clock(rng: random.Random, split: Split) -> str:
    return values.split_draw(
        rng, split, "api_time", lambda r: f"{r.randint(6, 21):02d}:{r.choice((0, 15, 30, 45)):02d}"
    )


def say_clock(rng: random.Random, hhmm: str, zh: bool) -> str:
    hour, minute = (int(x) for x in hhmm.split(":"))
    if zh:
        return f"{'下午' if hour >= 12 else '上午'}{hour - 12 if hour > 12 else hour}点" + (
            f"{minute}分" if minute else ""
        )
    if rng.random() < 0.5:
        return hhmm
    h12 = hour - 12 if hour > 12 else hour
    return f"{h12}:{minute:02d} {'pm' if hour >= 12 else 'am'}" if minute else f"{h12} {'pm' if hour >= 12 else 'am'}"


def quoted(rng: random.Random, text: str) -> str:
    return rng.choice((f'"{text}"', f"'{text}'", f"“{text}”", text))


def pick(options: tuple[str, ...]) -> Callable[[random.Random, Any, bool], str]:
    """Phrasings with `{v}` (English) or `{zh}`-marked ones (Chinese) filled with the value as text."""
    en = tuple(o for o in options if not o.startswith("zh:"))
    zh = tuple(o[3:] for o in options if o.startswith("zh:"))
    return lambda rng, v, is_zh: rng.choice(zh if is_zh and zh else en).format(v=v)


def say_minutes(rng: random.Random, minutes: int, zh: bool) -> str:
    if zh:
        return f"{minutes // 60}小时" if minutes % 60 == 0 and rng.random() < 0.6 else f"{minutes}分钟"
    if minutes % 60 == 0 and rng.random() < 0.6:
        hours = minutes // 60
        return f"{hours} hour{'s' if hours > 1 else ''}"
    return rng.choice((f"{minutes} minutes", f"{minutes} min"))


def say_emails(rng: random.Random, emails: list[str], zh: bool) -> str:
    return join_items(emails, zh)


def say_list(rng: random.Random, items: list[str], zh: bool) -> str:
    if not zh and rng.random() < 0.3:
        return ", ".join(f'"{i}"' for i in items)
    return join_items(items, zh)


def say_enum(words: Mapping[str, tuple[str, ...]]) -> Callable[[random.Random, Any, bool], str]:
    """Enum values stated by synonyms ("°F", "Fahrenheit" -> "fahrenheit"); `zh:` synonyms for Chinese."""

    def say(rng: random.Random, value: Any, zh: bool) -> str:
        options = words[value]
        zh_opts = tuple(o[3:] for o in options if o.startswith("zh:"))
        en_opts = tuple(o for o in options if not o.startswith("zh:"))
        return rng.choice(zh_opts if zh and zh_opts else en_opts)

    return say


def enum_schema(values_: tuple[str, ...]) -> dict[str, Any]:
    return {"type": "string", "enum": list(values_)}


def draw_money(rng: random.Random, split: Split) -> float:
    return values.split_draw(
        rng, split, "api_money", lambda r: r.choice((r.randint(5, 5000), round(r.uniform(1, 999), 2)))
    )


def draw_emails(rng: random.Random, split: Split) -> list[str]:
    return [values.email(rng, split) for _ in range(rng.randint(1, 3))]


def draw_words(rng: random.Random, split: Split) -> list[str]:
    return list(dict.fromkeys(values.word(rng, split) for _ in range(rng.randint(2, 4))))


def draw_code(rng: random.Random, split: Split) -> str:
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
    return values.split_draw(
        rng, split, "api_code", lambda r: "".join(r.choice(letters) for _ in range(r.randint(3, 4)))
    )


def draw_ident(prefix: str) -> Callable[[random.Random, Split], str]:
    return lambda rng, split: values.split_draw(rng, split, "api_id", lambda r: f"{prefix}-{r.randint(1000, 99999)}")


def draw_slug(rng: random.Random, split: Split) -> str:
    return "-".join(values.word(rng, split) for _ in range(rng.randint(1, 2)))


TEMP_UNITS = {
    "celsius": ("in Celsius", "in °C", "in degrees Celsius", "zh:用摄氏度"),
    "fahrenheit": ("in Fahrenheit", "in °F", "zh:用华氏度"),
}
CABINS = {"economy": ("economy", "economy class", "zh:经济舱"), "business": ("business class", "business", "zh:商务舱")}
MODES = {
    "driving": ("by car", "driving", "zh:开车"),
    "walking": ("on foot", "walking", "zh:步行"),
    "cycling": ("by bike", "cycling", "zh:骑车"),
    "transit": ("by public transport", "by bus or train", "zh:坐公交"),
}
LEVELS = {"error": ("error", "errors", "zh:错误"), "warning": ("warning", "warnings", "zh:警告"), "info": ("info",)}
ENVS = {
    "staging": ("staging", "the staging environment", "zh:预发环境"),
    "production": ("production", "prod", "zh:生产环境"),
}
ACTIVITIES = {"running": ("running", "a run", "zh:跑步"), "cycling": ("cycling", "a bike ride", "zh:骑行"),
              "swimming": ("swimming", "a swim", "zh:游泳"), "yoga": ("yoga", "zh:瑜伽")}  # fmt: skip
SORTS = {"price": ("cheapest first", "by price", "zh:按价格"), "rating": ("best rated first", "by rating", "zh:按评分")}
PLACE_KINDS = {
    "restaurant": ("restaurants", "somewhere to eat", "zh:餐厅"),
    "pharmacy": ("pharmacies", "a pharmacy", "zh:药店"),
    "parking": ("parking", "a car park", "zh:停车场"),
    "atm": ("ATMs", "a cash machine", "zh:取款机"),
}
ARCHIVES = {"zip": ("zip", "a .zip"), "tar.gz": ("tar.gz", "a tarball")}
