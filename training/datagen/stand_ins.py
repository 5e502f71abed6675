"""Deterministic stand-ins for the two built-in tools whose real results the corpus cannot reproduce.

What it is: `current_time_result(timezone, utc)`, the `current_time` tool's JSON for a given UTC instant (the real
tool reads the clock) over `TIMEZONES`, zones without daylight saving time so that a fixed offset is exact and the
corpus does not depend on the system's time-zone database; and `search_result(query, top_k)`, `search_docs`-shaped
passages ranked by word overlap over a few fixed MiniGPT notes (`SEARCH_SNIPPETS`; the real tool searches a
folder). Both answer in the real tools' formats, so the model learns those. Every other built-in's result comes
from the real tool (`tools.registry`, through tools_data.run_tool).
What it is not: the tools themselves (tools/builtin); nothing here is served to users.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

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


def current_time_result(timezone: str, utc: dt.datetime) -> str:
    """What `current_time(timezone)` answers at the instant `utc` (an aware datetime)."""
    now = utc.astimezone(dt.timezone(dt.timedelta(minutes=TIMEZONES[timezone])))
    return json.dumps(
        {
            "timezone": timezone,
            "datetime": now.isoformat(timespec="seconds"),
            "date": now.date().isoformat(),
            "time": now.strftime("%H:%M:%S"),
            "weekday": now.strftime("%A"),
            "utc_offset": now.strftime("%z"),
        }
    )


def _ranked(query: str, top_k: int) -> list[dict[str, Any]]:
    terms = set(re.findall(r"\w+", query.lower()))
    scored = []
    for index, (source, text) in enumerate(SEARCH_SNIPPETS):
        overlap = len(terms & set(re.findall(r"\w+", text.lower())))
        scored.append((-overlap, index, source, text, overlap))
    scored.sort()
    return [{"source": s, "score": round(1.5 * o + 0.25, 3), "text": t} for _, _, s, t, o in scored[:top_k]]


def search_result(query: str, top_k: int = 3) -> str:
    """What `search_docs(query, top_k)` answers, over `SEARCH_SNIPPETS`: a JSON list of {source, score, text}."""
    return json.dumps(_ranked(query, top_k), ensure_ascii=False)
