"""Date and time tools: `current_time` (the only non-deterministic built-in), `date_add` and `date_diff`.

Dates are ISO 8601 calendar dates (`2024-03-01`); time zones are IANA names (`Europe/Berlin`) resolved through
`zoneinfo`. This module does not parse natural-language dates ("next Tuesday") and does not do business-day
calendars.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field

from tools.base import ToolError, tool

MAX_DAYS = 3_000_000  # about 8,000 years either way: enough for any real question, far from date overflow
_ZONE_RE = re.compile(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+){0,2}")
_UTC_NAMES = {"utc", "z", "gmt", "etc/utc", "etc/gmt"}


def resolve_timezone(name: str) -> dt.tzinfo:
    """An IANA zone name -> tzinfo; anything that is not a plain zone name is refused before touching the disk."""
    cleaned = name.strip()
    if cleaned.lower() in _UTC_NAMES:
        return dt.UTC
    if len(cleaned) > 64 or not _ZONE_RE.fullmatch(cleaned):
        raise ToolError(f"unknown time zone {name[:64]!r}; use an IANA name such as 'Europe/Paris' or 'UTC'")
    try:
        return ZoneInfo(cleaned)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ToolError(f"unknown time zone {cleaned!r}; use an IANA name such as 'Europe/Paris' or 'UTC'") from None


def parse_date(text: str, what: str = "date") -> dt.date:
    """Strict ISO calendar date `YYYY-MM-DD` (a trailing time part is ignored only if it is ISO too)."""
    cleaned = text.strip()
    if len(cleaned) > 40:
        raise ToolError(f"{what} is too long; expected YYYY-MM-DD")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", cleaned[:10]):
        raise ToolError(f"{what} {cleaned!r} is not an ISO date (YYYY-MM-DD)")
    try:
        if len(cleaned) == 10:
            return dt.date.fromisoformat(cleaned)
        return dt.datetime.fromisoformat(cleaned).date()
    except ValueError as exc:
        raise ToolError(f"{what} {cleaned!r} is not a valid date: {exc}") from None


@tool(
    name="current_time",
    description="The current date and time in a time zone (IANA name such as 'Europe/Paris'; default UTC).",
)
def current_time(
    timezone: Annotated[str, Field(description="IANA time zone name, e.g. 'America/New_York'")] = "UTC",
) -> dict[str, str]:
    zone = resolve_timezone(timezone)
    now = dt.datetime.now(zone)
    return {
        "timezone": timezone.strip() if zone is not dt.UTC else "UTC",
        "datetime": now.isoformat(timespec="seconds"),
        "date": now.date().isoformat(),
        "time": now.strftime("%H:%M:%S"),
        "weekday": now.strftime("%A"),
        "utc_offset": now.strftime("%z"),
    }


@tool(name="date_add", description="Add a number of days (negative to subtract) to an ISO date (YYYY-MM-DD).")
def date_add(
    date: Annotated[str, Field(description="Start date, YYYY-MM-DD")],
    days: Annotated[int, Field(description="Days to add; negative values go back in time")],
) -> dict[str, str]:
    start = parse_date(date)
    if abs(days) > MAX_DAYS:
        raise ToolError(f"days must be between -{MAX_DAYS} and {MAX_DAYS}")
    try:
        result = start + dt.timedelta(days=days)
    except OverflowError:
        raise ToolError("resulting date is outside the years 1-9999") from None
    return {"date": result.isoformat(), "weekday": result.strftime("%A")}


@tool(
    name="date_diff",
    description="Number of days from start to end (ISO dates, YYYY-MM-DD); negative if end is earlier.",
)
def date_diff(
    start: Annotated[str, Field(description="First date, YYYY-MM-DD")],
    end: Annotated[str, Field(description="Second date, YYYY-MM-DD")],
) -> dict[str, int]:
    first = parse_date(start, "start")
    second = parse_date(end, "end")
    return {"days": (second - first).days}
