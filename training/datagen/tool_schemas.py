"""Stand-ins for the built-in tools: their OpenAI schemas and deterministic results in the real formats.

What it is: the schemas the `tools` package publishes (used when it cannot be imported), and `local_result`, which
answers like the real tool does for the values the generator uses: plain numbers for `calculator`,
"5 km = 3.10686 mi" for `unit_convert`, JSON objects for `current_time` / `date_add` / `text_stats`, and a JSON
list of {source, score, text} passages for `search_docs` over a few fixed MiniGPT notes. `current_time` takes
its "now" from an injected `_utc` argument so that the corpus is reproducible.
What it is not: the tools themselves (tools/builtin) — nothing here is served to users.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import operator
import re
from collections.abc import Callable
from typing import Any


def _fn(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            },
        },
    }


FALLBACK_SCHEMAS: dict[str, dict[str, Any]] = {
    "calculator": _fn(
        "calculator",
        "Evaluate an arithmetic expression (+ - * / // % **, parentheses, functions).",
        {"expression": {"type": "string", "description": "The expression, e.g. '2 * (3 + 4)'"}},
        ["expression"],
    ),
    "unit_convert": _fn(
        "unit_convert",
        "Convert a value between units of length, mass, time, volume, speed, data or temperature.",
        {
            "value": {"type": "number", "description": "The amount to convert"},
            "from_unit": {"type": "string", "description": "Unit of the value, e.g. 'km'"},
            "to_unit": {"type": "string", "description": "Target unit, e.g. 'mi'"},
        },
        ["value", "from_unit", "to_unit"],
    ),
    "current_time": _fn(
        "current_time",
        "The current date and time in a time zone (IANA name such as 'Europe/Paris'; default UTC).",
        {
            "timezone": {
                "type": "string",
                "default": "UTC",
                "description": "IANA time zone name, e.g. 'America/New_York'",
            }
        },
        [],
    ),
    "date_add": _fn(
        "date_add",
        "Add a number of days (negative to subtract) to an ISO date (YYYY-MM-DD).",
        {
            "date": {"type": "string", "description": "Start date, YYYY-MM-DD"},
            "days": {"type": "integer", "description": "Days to add"},
        },
        ["date", "days"],
    ),
    "text_stats": _fn(
        "text_stats",
        "Count characters, words, lines and sentences of a text and list its most frequent words.",
        {"text": {"type": "string", "description": "The text to analyse"}},
        ["text"],
    ),
    "search_docs": _fn(
        "search_docs",
        "Search the local documentation (MiniGPT notes by default) and return the best matching passages.",
        {
            "query": {"type": "string", "description": "What to look for, in a few words"},
            "top_k": {
                "type": "integer",
                "default": 3,
                "minimum": 1,
                "maximum": 10,
                "description": "How many passages to return (1-10)",
            },
        },
        ["query"],
    ),
}

# Zones without daylight saving time, so a fixed offset (minutes) is exact all year.
TIMEZONES: dict[str, int] = {
    "UTC": 0,
    "Asia/Shanghai": 480,
    "Asia/Tokyo": 540,
    "Asia/Kolkata": 330,
    "Asia/Singapore": 480,
    "Asia/Dubai": 240,
    "Europe/Moscow": 180,
    "America/Sao_Paulo": -180,
    "Africa/Nairobi": 180,
    "Asia/Seoul": 540,
    "Australia/Brisbane": 600,
    "America/Phoenix": -420,
    "Asia/Bangkok": 420,
    "Africa/Lagos": 60,
    "Asia/Jakarta": 420,
    "Pacific/Honolulu": -600,
    "Asia/Manila": 480,
    "Africa/Cairo": 120,
    # zones without daylight saving time, so a fixed offset is their true local time
    "Asia/Karachi": 300,
    "Asia/Dhaka": 360,
    "Asia/Kathmandu": 345,
    "Asia/Colombo": 330,
    "Asia/Yangon": 390,
    "Asia/Ho_Chi_Minh": 420,
    "Asia/Hong_Kong": 480,
    "Asia/Taipei": 480,
    "Asia/Kuala_Lumpur": 480,
    "Asia/Riyadh": 180,
    "Asia/Baghdad": 180,
    "Asia/Qatar": 180,
    "Asia/Kabul": 270,
    "Asia/Tashkent": 300,
    "Asia/Ulaanbaatar": 480,
    "Asia/Yerevan": 240,
    "Asia/Baku": 240,
    "Asia/Tbilisi": 240,
    "Africa/Johannesburg": 120,
    "Africa/Accra": 0,
    "Africa/Algiers": 60,
    "Africa/Addis_Ababa": 180,
    "Africa/Kampala": 180,
    "Africa/Dar_es_Salaam": 180,
    "Africa/Khartoum": 120,
    "Africa/Kinshasa": 60,
    "Africa/Luanda": 60,
    "Africa/Abidjan": 0,
    "Africa/Dakar": 0,
    "Africa/Maputo": 120,
    "Africa/Harare": 120,
    "Africa/Tunis": 60,
    "America/Bogota": -300,
    "America/Lima": -300,
    "America/Panama": -300,
    "America/Jamaica": -300,
    "America/Caracas": -240,
    "America/La_Paz": -240,
    "America/Manaus": -240,
    "America/Argentina/Buenos_Aires": -180,
    "America/Montevideo": -180,
    "America/Cancun": -300,
    "America/Guatemala": -360,
    "America/Costa_Rica": -360,
    "America/Regina": -360,
    "America/Puerto_Rico": -240,
    "Pacific/Tahiti": -600,
    "Pacific/Guam": 600,
    "Pacific/Port_Moresby": 600,
    "Pacific/Tongatapu": 780,
    "Australia/Perth": 480,
    "Australia/Darwin": 570,
    "Indian/Maldives": 300,
    "Indian/Mauritius": 240,
    "Atlantic/Reykjavik": 0,
    "Europe/Istanbul": 180,
    "Europe/Minsk": 180,
    "Asia/Muscat": 240,
    "Asia/Bahrain": 180,
    "Asia/Kuwait": 180,
    "Asia/Thimphu": 360,
    "Asia/Brunei": 480,
    "Asia/Makassar": 480,
    "Asia/Jayapura": 540,
    "Asia/Dili": 540,
    "Asia/Vladivostok": 600,
    "Asia/Novosibirsk": 420,
    "Asia/Yekaterinburg": 300,
    "Asia/Omsk": 360,
    "Asia/Krasnoyarsk": 420,
    "Asia/Irkutsk": 480,
    "Asia/Yakutsk": 540,
    "Asia/Magadan": 660,
    "Asia/Kamchatka": 720,
    "Europe/Samara": 240,
}

SEARCH_SNIPPETS: tuple[tuple[str, str], ...] = (
    ("docs/training.md", "Train the tokenizer with minigpt-train --retrain-tokenizer; it learns a byte-level BPE."),
    (
        "docs/training.md",
        "Pretraining packs documents with an end-of-text separator; SFT trains only on assistant tokens.",
    ),
    ("docs/training.md", "Use --resume DIR to continue a run exactly where it stopped."),
    ("docs/training.md", "The learning rate warms up, then follows a cosine decay to 10% of its peak."),
    ("docs/training.md", "DPO needs an SFT checkpoint as --init; the reference model stays frozen."),
    ("docs/api.md", "Start the server with minigpt-serve --model DIR; it speaks the OpenAI chat completions API."),
    ("docs/api.md", "Set stream to true to receive server-sent events, one delta per chunk."),
    ("docs/api.md", "Pass tools and tool_choice to let the model call functions; arguments are JSON strings."),
    ("docs/api.md", "Send ultra_think: true to turn on think mode; the reasoning comes back in reasoning_content."),
    ("docs/api.md", "Temperature 0 gives greedy decoding; higher values make answers more varied."),
    ("docs/architecture.md", "The chat template wraps every turn in start and end markers."),
    ("docs/architecture.md", "The KV cache stores keys and values per slot so each new token is cheap."),
    ("docs/architecture.md", "A checkpoint directory holds config.json, model.safetensors and tokenizer.json."),
    ("docs/architecture.md", "Special tokens have fixed ids: end-of-text is 0, turn start is 1, turn end is 2."),
    ("README.md", "The demo model is tiny: about two million parameters, trained in minutes on a CPU."),
    ("README.md", "The batch size and sequence length can be set with --batch-size and --seq-len."),
)

_LINEAR: dict[str, tuple[str, float, str]] = {  # alias -> (category, factor to base, canonical symbol)
    "km": ("length", 1000.0, "km"),
    "kilometers": ("length", 1000.0, "km"),
    "mi": ("length", 1609.344, "mi"),
    "miles": ("length", 1609.344, "mi"),
    "feet": ("length", 0.3048, "ft"),
    "meters": ("length", 1.0, "m"),
    "inches": ("length", 0.0254, "in"),
    "cm": ("length", 0.01, "cm"),
    "yards": ("length", 0.9144, "yd"),
    "kg": ("mass", 1.0, "kg"),
    "kilograms": ("mass", 1.0, "kg"),
    "lb": ("mass", 0.45359237, "lb"),
    "pounds": ("mass", 0.45359237, "lb"),
    "ounces": ("mass", 0.028349523125, "oz"),
    "grams": ("mass", 0.001, "g"),
    "liters": ("volume", 1.0, "l"),
    "gallons": ("volume", 3.785411784, "gal"),
    "cups": ("volume", 0.2365882365, "cup"),
    "ml": ("volume", 0.001, "ml"),
    "hours": ("time", 3600.0, "h"),
    "minutes": ("time", 60.0, "min"),
    "GB": ("data", 1e9, "GB"),
    "MB": ("data", 1e6, "MB"),
    "km/h": ("speed", 1 / 3.6, "km/h"),
    "mph": ("speed", 1609.344 / 3600.0, "mph"),
}

_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


def format_number(value: float | int) -> str:
    """Like the calculator's: ints as they are, floats to 12 significant digits without trailing zeros."""
    if isinstance(value, int):
        return str(value)
    rounded = float(format(value, ".12g"))
    if rounded.is_integer() and abs(rounded) < 1e15:
        return str(int(rounded))
    return format(value, ".12g")


def evaluate(expression: str) -> float | int:
    """A tiny allow-list evaluator for the generator's own expressions (numbers and binary operators only)."""

    def visit(node: ast.AST) -> float | int:
        if isinstance(node, ast.Expression):
            return visit(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](visit(node.left), visit(node.right))
        raise ValueError(f"unsupported expression: {expression!r}")

    return visit(ast.parse(expression, mode="eval"))


def _convert(value: float, frm: str, to: str) -> str:
    temps = {"celsius": "C", "fahrenheit": "F"}
    if frm in temps:
        result = value * 9 / 5 + 32 if frm == "celsius" else (value - 32) * 5 / 9
        return f"{format_number(value)} {temps[frm]} = {format_number(result)} {temps[to]}"
    (_, f_from, s_from), (_, f_to, s_to) = _LINEAR[frm], _LINEAR[to]
    return f"{format_number(value)} {s_from} = {format_number(value * f_from / f_to)} {s_to}"


def _search(query: str, top_k: int) -> list[dict[str, Any]]:
    terms = set(re.findall(r"\w+", query.lower()))
    scored = []
    for index, (source, text) in enumerate(SEARCH_SNIPPETS):
        overlap = len(terms & set(re.findall(r"\w+", text.lower())))
        scored.append((-overlap, index, source, text, overlap))
    scored.sort()
    return [{"source": s, "score": round(1.5 * o + 0.25, 3), "text": t} for _, _, s, t, o in scored[:top_k]]


def local_result(name: str, arguments: dict[str, Any]) -> str:
    """The stand-in tool result, as the string the registry would return."""
    if name == "calculator":
        return format_number(evaluate(arguments["expression"]))
    if name == "unit_convert":
        return _convert(float(arguments["value"]), arguments["from_unit"], arguments["to_unit"])
    if name == "current_time":
        tz = arguments.get("timezone", "UTC")
        utc = dt.datetime.fromisoformat(arguments["_utc"])
        now = utc.astimezone(dt.timezone(dt.timedelta(minutes=TIMEZONES[tz])))
        return json.dumps(
            {
                "timezone": tz,
                "datetime": now.isoformat(timespec="seconds"),
                "date": now.date().isoformat(),
                "time": now.strftime("%H:%M:%S"),
                "weekday": now.strftime("%A"),
                "utc_offset": now.strftime("%z"),
            }
        )
    if name == "date_add":
        result = dt.date.fromisoformat(arguments["date"]) + dt.timedelta(days=arguments["days"])
        return json.dumps({"date": result.isoformat(), "weekday": result.strftime("%A")})
    if name == "text_stats":
        text = arguments["text"]
        words = re.findall(r"\w+", text)
        return json.dumps(
            {"characters": len(text), "words": len(words), "sentences": max(1, len(re.findall(r"[.!?]", text)))}
        )
    if name == "search_docs":
        return json.dumps(_search(arguments["query"], int(arguments.get("top_k", 3))), ensure_ascii=False)
    raise KeyError(f"no stand-in for tool {name!r}")
