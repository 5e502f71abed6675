"""The built-in tools: offline, and deterministic except `current_time`.

`builtin_tools()` lists them in a stable order; `tools.registry.default_registry()` registers them all.
"""

from __future__ import annotations

from tools.base import Tool
from tools.builtin.calculator import calculator
from tools.builtin.dates import current_time, date_add, date_diff
from tools.builtin.search_docs import search_docs
from tools.builtin.text_stats import text_stats
from tools.builtin.units import unit_convert

__all__ = [
    "builtin_tools",
    "calculator",
    "current_time",
    "date_add",
    "date_diff",
    "search_docs",
    "text_stats",
    "unit_convert",
]


def builtin_tools() -> list[Tool]:
    """Every built-in tool, in a stable order."""
    return [calculator, unit_convert, current_time, date_add, date_diff, text_stats, search_docs]
