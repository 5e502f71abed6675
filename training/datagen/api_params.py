"""The parameters of realistic API tools: how each is declared, which values it takes, how a user states them.

What it is: `PARAMS`, a library of parameter kinds (a place, a date, a count of days, an amount of money, a
temperature unit, a list of e-mail addresses, a nested address or coordinates, ...). Each kind gives its JSON
Schema (under one of several real-world names, with a description, an enum or a default), draws a value
(split-disjoint where the value space allows, see base.value_split) and states that value in a request the way
people do: in words around it, with units, as a date in several formats, quoted, as a list, in English or
Chinese. A call must then carry the value in the schema's form (ISO dates, minutes, lower-case enums).
The value makers and sayers the kinds are built from live in api_values.py.
What it is not: the tools themselves (api_tools.py) or conversation assembly.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from training.datagen import values
from training.datagen.api_values import (
    ACTIVITIES,
    ARCHIVES,
    CABINS,
    ENVS,
    LANGUAGES,
    LEVELS,
    MODES,
    PLACE_KINDS,
    SORTS,
    TEMP_UNITS,
    clock,
    draw_code,
    draw_emails,
    draw_ident,
    draw_money,
    draw_slug,
    draw_words,
    enum_schema,
    iso_date,
    pick,
    place,
    quoted,
    say_clock,
    say_date,
    say_emails,
    say_enum,
    say_list,
    say_minutes,
)
from training.datagen.base import Split


@dataclass(frozen=True)
class ParamKind:
    """One kind of parameter: `names` it goes by, its schema, a value, and phrasings of a value.

    `say(rng, value, zh)` states the value in a request; `optional_default` (when not None) makes the kind
    optional with that default (declared in the schema and the description).
    """

    key: str
    names: tuple[str, ...]
    schema: dict[str, Any]
    draw: Callable[[random.Random, Split], Any]
    say: Callable[[random.Random, Any, bool], str]
    optional_default: Any = None

    def declare(self, name: str, description: str) -> dict[str, Any]:
        out = {**self.schema, "description": description}
        if self.optional_default is not None:
            out["default"] = self.optional_default
            out["description"] = f"{description} Default: {self.optional_default}."
        return out


P = ParamKind
PARAMS: dict[str, ParamKind] = {
    p.key: p
    for p in (
        P(
            "city",
            ("city", "location", "city_name"),
            {"type": "string"},
            place,
            pick(("in {v}", "for {v}", "{v}", "zh:{v}")),
        ),
        P(
            "origin",
            ("origin", "from_city", "departure_city"),
            {"type": "string"},
            place,
            pick(("from {v}", "leaving {v}", "zh:从{v}出发")),
        ),
        P(
            "destination",
            ("destination", "to_city", "arrival_city"),
            {"type": "string"},
            place,
            pick(("to {v}", "going to {v}", "zh:到{v}")),
        ),
        P(
            "date",
            ("date", "day", "on_date"),
            {"type": "string"},
            iso_date,
            lambda r, v, zh: ("" if zh else "on ") + say_date(r, v, zh),
        ),
        P(
            "start_time",
            ("start_time", "time"),
            {"type": "string"},
            clock,
            lambda r, v, zh: ("" if zh else "at ") + say_clock(r, v, zh),
        ),
        P(
            "days",
            ("days", "num_days", "forecast_days"),
            {"type": "integer", "minimum": 1, "maximum": 14},
            lambda r, s: r.randint(1, 14),
            pick(("for the next {v} days", "{v}-day", "over {v} days", "zh:未来{v}天")),
            3,
        ),
        P(
            "temp_unit",
            ("unit", "units", "temperature_unit"),
            enum_schema(tuple(TEMP_UNITS)),
            lambda r, s: r.choice(tuple(TEMP_UNITS)),
            say_enum(TEMP_UNITS),
            "celsius",
        ),
        P(
            "passengers",
            ("passengers", "adults", "travellers"),
            {"type": "integer", "minimum": 1},
            lambda r, s: r.randint(1, 6),
            pick(("for {v} people", "{v} passengers", "{v} adults", "zh:{v}个人")),
            1,
        ),
        P(
            "cabin",
            ("cabin", "cabin_class", "travel_class"),
            enum_schema(tuple(CABINS)),
            lambda r, s: r.choice(tuple(CABINS)),
            say_enum(CABINS),
            "economy",
        ),
        P(
            "nonstop",
            ("nonstop", "direct_only"),
            {"type": "boolean"},
            lambda r, s: True,
            pick(("nonstop only", "direct flights only", "zh:只要直飞")),
            False,
        ),
        P(
            "nights",
            ("nights", "num_nights", "stay_nights"),
            {"type": "integer", "minimum": 1},
            lambda r, s: r.randint(1, 14),
            pick(("for {v} nights", "{v} nights", "zh:住{v}晚")),
        ),
        P(
            "max_price",
            ("max_price", "price_limit", "budget"),
            {"type": "number"},
            draw_money,
            pick(("under ${v}", "for at most {v} dollars", "below {v} USD", "zh:{v}元以内")),
        ),
        P("amount", ("amount", "value", "sum"), {"type": "number"}, draw_money, pick(("{v}", "zh:{v}"))),
        P(
            "currency_from",
            ("from_currency", "source_currency", "base"),
            {"type": "string"},
            lambda r, s: r.choice(("USD", "EUR", "GBP", "JPY", "CNY", "CHF")),
            pick(("{v}", "zh:{v}")),
        ),
        P(
            "currency_to",
            ("to_currency", "target_currency", "quote"),
            {"type": "string"},
            lambda r, s: r.choice(("SEK", "NOK", "INR", "BRL", "AUD", "CAD")),
            pick(("into {v}", "to {v}", "zh:换成{v}")),
        ),
        P("symbol", ("symbol", "ticker"), {"type": "string"}, draw_code, pick(("{v}", "ticker {v}", "zh:{v}"))),
        P(
            "title",
            ("title", "name", "summary"),
            {"type": "string"},
            lambda r, s: values.phrase(r, s),
            lambda r, v, zh: f"叫{quoted(r, v)}" if zh else r.choice(("called ", "titled ", "named ")) + quoted(r, v),
        ),
        P(
            "subject",
            ("subject", "topic"),
            {"type": "string"},
            lambda r, s: values.phrase(r, s),
            lambda r, v, zh: (
                f"主题是{quoted(r, v)}" if zh else r.choice(("with the subject ", "about ")) + quoted(r, v)
            ),
        ),
        P(
            "body",
            ("body", "message", "text"),
            {"type": "string"},
            lambda r, s: values.sentence(r, s),
            lambda r, v, zh: (
                f"内容是：{quoted(r, v)}"
                if zh
                else r.choice(("saying ", "that says ", "with the text ")) + quoted(r, v)
            ),
        ),
        P(
            "duration",
            ("duration_minutes", "minutes", "length_minutes"),
            {"type": "integer", "minimum": 1},
            lambda r, s: r.choice((15, 20, 30, 45, 60, 90, 120, 180)),
            lambda r, v, zh: ("" if zh else "for ") + say_minutes(r, v, zh),
        ),
        P(
            "attendees",
            ("attendees", "invitees", "participants"),
            {"type": "array", "items": {"type": "string"}},
            draw_emails,
            lambda r, v, zh: ("邀请" if zh else r.choice(("with ", "inviting "))) + say_emails(r, v, zh),
        ),
        P(
            "recipients",
            ("to", "recipients"),
            {"type": "array", "items": {"type": "string"}},
            draw_emails,
            lambda r, v, zh: ("发给" if zh else "to ") + say_emails(r, v, zh),
        ),
        P(
            "limit",
            ("limit", "max_results", "top_n"),
            {"type": "integer", "minimum": 1, "maximum": 50},
            lambda r, s: r.randint(2, 20),
            pick(("just {v} results", "the top {v}", "at most {v}", "zh:最多{v}条")),
            10,
        ),
        P(
            "query",
            ("query", "keywords", "search_term"),
            {"type": "string"},
            lambda r, s: values.query(r, s),
            lambda r, v, zh: f"搜索{quoted(r, v)}" if zh else r.choice(("for ", "matching ", "about ")) + quoted(r, v),
        ),
        P(
            "unread",
            ("unread_only", "only_unread"),
            {"type": "boolean"},
            lambda r, s: True,
            pick(("only unread ones", "just the unread", "zh:只看未读")),
            False,
        ),
        P(
            "sort",
            ("sort_by", "order_by"),
            enum_schema(tuple(SORTS)),
            lambda r, s: r.choice(tuple(SORTS)),
            say_enum(SORTS),
            "rating",
        ),
        P(
            "quantity",
            ("quantity", "qty", "count"),
            {"type": "integer", "minimum": 1},
            lambda r, s: r.randint(1, 12),
            pick(("{v} of them", "x{v}", "quantity {v}", "zh:{v}个")),
        ),
        P(
            "product_id",
            ("product_id", "item_id", "sku"),
            {"type": "string"},
            draw_ident("SKU"),
            pick(("item {v}", "{v}", "zh:商品{v}")),
        ),
        P(
            "tracking",
            ("tracking_number", "tracking_id"),
            {"type": "string"},
            draw_ident("TRK"),
            pick(("{v}", "number {v}", "zh:单号{v}")),
        ),
        P(
            "ingredients",
            ("ingredients", "items"),
            {"type": "array", "items": {"type": "string"}},
            draw_words,
            lambda r, v, zh: ("用" if zh else "with ") + say_list(r, v, zh),
        ),
        P(
            "servings",
            ("servings", "portions", "people"),
            {"type": "integer", "minimum": 1},
            lambda r, s: r.randint(1, 8),
            pick(("for {v} people", "{v} servings", "zh:{v}人份")),
            2,
        ),
        P(
            "service",
            ("service", "service_name", "app"),
            {"type": "string"},
            draw_slug,
            pick(("{v}", "the {v} service", "zh:{v}服务")),
        ),
        P(
            "env",
            ("environment", "env", "stage"),
            enum_schema(tuple(ENVS)),
            lambda r, s: r.choice(tuple(ENVS)),
            say_enum(ENVS),
        ),
        P(
            "force",
            ("force", "hard"),
            {"type": "boolean"},
            lambda r, s: True,
            pick(("forcefully", "force it", "zh:强制")),
            False,
        ),
        P(
            "replicas",
            ("replicas", "instances", "replica_count"),
            {"type": "integer", "minimum": 0, "maximum": 100},
            lambda r, s: r.randint(0, 40),
            pick(("to {v} replicas", "{v} instances", "zh:{v}个副本")),
        ),
        P(
            "namespace",
            ("namespace", "cluster_namespace"),
            {"type": "string"},
            draw_slug,
            pick(("in namespace {v}", "zh:命名空间{v}")),
            "default",
        ),
        P(
            "level",
            ("level", "severity", "log_level"),
            enum_schema(tuple(LEVELS)),
            lambda r, s: r.choice(tuple(LEVELS)),
            say_enum(LEVELS),
        ),
        P(
            "since",
            ("since_minutes", "window_minutes", "lookback_minutes"),
            {"type": "integer", "minimum": 1},
            lambda r, s: r.choice((15, 30, 60, 120, 240)),
            lambda r, v, zh: ("过去" if zh else "from the last ") + say_minutes(r, v, zh),
            60,
        ),
        P(
            "host",
            ("host", "hostname", "server"),
            {"type": "string"},
            lambda r, s: f"{values.word(r, s)}.{r.choice(('internal', 'example.net', 'lan'))}",
            pick(("{v}", "host {v}", "zh:{v}")),
        ),
        P(
            "port",
            ("port", "port_number"),
            {"type": "integer", "minimum": 1, "maximum": 65535},
            lambda r, s: r.choice((22, 80, 443, 5432, 6379, 8080, 9000, r.randint(1024, 65535))),
            pick(("port {v}", ":{v}", "zh:{v}端口")),
        ),
        P(
            "timeout",
            ("timeout_seconds", "timeout_s", "timeout"),
            {"type": "integer", "minimum": 1},
            lambda r, s: r.choice((2, 5, 10, 30)),
            pick(("with a {v} second timeout", "timeout {v}s", "zh:超时{v}秒")),
            5,
        ),
        P(
            "database",
            ("database", "db_name"),
            {"type": "string"},
            draw_slug,
            pick(("the {v} database", "db {v}", "zh:{v}数据库")),
        ),
        P(
            "path",
            ("path", "destination_path", "target_path"),
            {"type": "string"},
            lambda r, s: f"/{r.choice(('srv', 'data', 'backups', 'home/ops'))}/{draw_slug(r, s)}",
            pick(("to {v}", "into {v}", "zh:到{v}")),
        ),
        P(
            "repo",
            ("repository", "repo"),
            {"type": "string"},
            lambda r, s: f"{values.username(r, s)}/{draw_slug(r, s)}",
            pick(("in {v}", "in the {v} repo", "zh:在{v}仓库")),
        ),
        P(
            "branch",
            ("branch", "branch_name", "new_branch"),
            {"type": "string"},
            lambda r, s: f"{r.choice(('feature', 'fix', 'chore'))}/{draw_slug(r, s)}",
            pick(("{v}", "called {v}", "zh:{v}分支")),
        ),
        P(
            "base_branch",
            ("from_branch", "base_branch", "source"),
            {"type": "string"},
            lambda r, s: r.choice(("develop", "release", "trunk")),
            pick(("off {v}", "from {v}", "zh:基于{v}")),
            "main",
        ),
        P(
            "files",
            ("paths", "files", "file_paths"),
            {"type": "array", "items": {"type": "string"}},
            lambda r, s: [
                f"{values.word(r, s)}.{r.choice(('txt', 'csv', 'log', 'png'))}" for _ in range(r.randint(1, 3))
            ],
            lambda r, v, zh: say_list(r, v, zh),
        ),
        P(
            "archive",
            ("format", "archive_format"),
            enum_schema(tuple(ARCHIVES)),
            lambda r, s: r.choice(tuple(ARCHIVES)),
            say_enum(ARCHIVES),
            "zip",
        ),
        P(
            "mode",
            ("mode", "travel_mode", "transport"),
            enum_schema(tuple(MODES)),
            lambda r, s: r.choice(tuple(MODES)),
            say_enum(MODES),
            "driving",
        ),
        P(
            "coords",
            ("location", "coordinates", "position"),
            {
                "type": "object",
                "properties": {"latitude": {"type": "number"}, "longitude": {"type": "number"}},
                "required": ["latitude", "longitude"],
            },
            lambda r, s: {"latitude": round(r.uniform(-60, 70), 4), "longitude": round(r.uniform(-170, 170), 4)},
            lambda r, v, zh: ("在" if zh else "near ") + f"{v['latitude']}, {v['longitude']}",
        ),
        P(
            "place_kind",
            ("category", "place_type", "kind"),
            enum_schema(tuple(PLACE_KINDS)),
            lambda r, s: r.choice(tuple(PLACE_KINDS)),
            say_enum(PLACE_KINDS),
        ),
        P(
            "radius",
            ("radius_m", "radius_meters", "within_m"),
            {"type": "integer", "minimum": 50},
            lambda r, s: r.choice((200, 500, 800, 1000, 2000)),
            lambda r, v, zh: f"{v}米内" if zh else r.choice((f"within {v} m", f"within {v} metres")),
            1000,
        ),
        P(
            "room",
            ("room", "zone", "area"),
            {"type": "string"},
            lambda r, s: r.choice(("kitchen", "bedroom", "living room", "office", "hallway", "garage")),
            pick(("in the {v}", "{v}", "zh:{v}")),
        ),
        P(
            "temperature",
            ("temperature", "target_temperature", "setpoint"),
            {"type": "number"},
            lambda r, s: r.choice((18, 19, 20, 21, 22, 23, 19.5, 20.5, 21.5)),
            pick(("to {v} degrees", "at {v}°", "zh:{v}度")),
        ),
        P(
            "brightness",
            ("brightness", "level_percent", "brightness_pct"),
            {"type": "integer", "minimum": 0, "maximum": 100},
            lambda r, s: r.choice((10, 25, 40, 50, 60, 75, 100)),
            pick(("to {v}%", "{v} percent", "zh:{v}%")),
        ),
        P(
            "activity",
            ("activity", "sport", "exercise"),
            enum_schema(tuple(ACTIVITIES)),
            lambda r, s: r.choice(tuple(ACTIVITIES)),
            say_enum(ACTIVITIES),
        ),
        P(
            "distance",
            ("distance_km", "km"),
            {"type": "number"},
            lambda r, s: r.choice((3, 5, 8, 10, 12.5, 21.1, 42.2, r.randint(2, 60))),
            pick(("{v} km", "{v} kilometres", "zh:{v}公里")),
        ),
        P(
            "weight",
            ("weight_kg", "body_weight_kg"),
            {"type": "number"},
            lambda r, s: r.randint(45, 110),
            pick(("I weigh {v} kg", "at {v} kilograms", "zh:体重{v}公斤")),
        ),
        P(
            "language",
            ("target_language", "to_language", "language"),
            {"type": "string"},
            lambda r, s: r.choice(LANGUAGES),
            pick(("into {v}", "to {v}")),
        ),
        P(
            "text",
            ("text", "source_text", "content"),
            {"type": "string"},
            lambda r, s: values.sentence(r, s),
            lambda r, v, zh: quoted(r, v),
        ),
        P(
            "shuffle",
            ("shuffle", "random_order"),
            {"type": "boolean"},
            lambda r, s: True,
            pick(("on shuffle", "shuffled", "zh:随机播放")),
            False,
        ),
        P(
            "volume",
            ("volume", "volume_percent"),
            {"type": "integer", "minimum": 0, "maximum": 100},
            lambda r, s: r.choice((20, 30, 40, 50, 70)),
            pick(("at volume {v}", "at {v}% volume", "zh:音量{v}")),
            50,
        ),
        P(
            "playlist",
            ("playlist", "playlist_name"),
            {"type": "string"},
            lambda r, s: values.phrase(r, s),
            lambda r, v, zh: f"歌单{quoted(r, v)}" if zh else "my " + quoted(r, v) + " playlist",
        ),
        P(
            "address",
            ("address", "delivery_address", "ship_to"),
            {
                "type": "object",
                "properties": {
                    "street": {"type": "string"},
                    "city": {"type": "string"},
                    "postal_code": {"type": "string"},
                },
                "required": ["street", "city"],
            },
            lambda r, s: {
                "street": f"{r.randint(1, 250)} {values.word(r, s).capitalize()} Street",
                "city": place(r, s),
                **({"postal_code": str(r.randint(10000, 99999))} if r.random() < 0.5 else {}),
            },
            lambda r, v, zh: ("寄到" if zh else "to ") + ", ".join(str(x) for x in v.values()),
        ),
        P(
            "express",
            ("express", "priority_shipping"),
            {"type": "boolean"},
            lambda r, s: True,
            pick(("by express", "with express shipping", "zh:加急")),
            False,
        ),
        P(
            "principal",
            ("principal", "loan_amount"),
            {"type": "number"},
            lambda r, s: r.choice((5000, 12000, 25000, 180000, 320000)),
            pick(("a {v} loan", "borrowing {v}", "zh:贷款{v}")),
        ),
        P(
            "rate",
            ("annual_rate", "interest_rate_percent"),
            {"type": "number"},
            lambda r, s: r.choice((2.5, 3.1, 4.25, 5, 6.75)),
            pick(("at {v}% a year", "{v} percent interest", "zh:年利率{v}%")),
        ),
        P(
            "years",
            ("years", "term_years"),
            {"type": "integer", "minimum": 1},
            lambda r, s: r.choice((3, 5, 10, 15, 20, 30)),
            pick(("over {v} years", "for {v} years", "zh:{v}年")),
        ),
        P(
            "event_id",
            ("event_id", "id"),
            {"type": "string"},
            draw_ident("EVT"),
            pick(("event {v}", "{v}", "zh:活动{v}")),
        ),
    )
}
