"""The `unit_convert` tool: length, mass, time, volume, speed, data and temperature units with common aliases.

Linear units are stored as a factor to one base unit per category (metre, kilogram, second, litre, metre per
second, byte); temperature is handled separately because its scales have offsets. Unit names are matched
exactly first (so that `Mb` megabit and `MB` megabyte stay apart), then case-insensitively.

It is not a general dimensional-analysis engine: no compound units beyond the listed speeds, no currencies
(those need live data and would be a plug-in).
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import Field

from tools.base import ToolError, tool
from tools.builtin.calculator import format_number

# category -> {unit: (factor to the base unit, aliases)}; the first name is the canonical symbol.
_LINEAR: dict[str, dict[str, tuple[float, tuple[str, ...]]]] = {
    "length": {
        "m": (1.0, ("meter", "meters", "metre", "metres")),
        "km": (1000.0, ("kilometer", "kilometers", "kilometre", "kilometres")),
        "cm": (0.01, ("centimeter", "centimeters", "centimetre", "centimetres")),
        "mm": (0.001, ("millimeter", "millimeters", "millimetre", "millimetres")),
        "um": (1e-6, ("µm", "micrometer", "micrometers", "micron", "microns")),
        "nm": (1e-9, ("nanometer", "nanometers", "nanometre", "nanometres")),
        "mi": (1609.344, ("mile", "miles")),
        "yd": (0.9144, ("yard", "yards")),
        "ft": (0.3048, ("foot", "feet")),
        "in": (0.0254, ("inch", "inches")),
        "nmi": (1852.0, ("nautical mile", "nautical miles")),
    },
    "mass": {
        "kg": (1.0, ("kilogram", "kilograms", "kilo", "kilos")),
        "g": (0.001, ("gram", "grams")),
        "mg": (1e-6, ("milligram", "milligrams")),
        "t": (1000.0, ("tonne", "tonnes", "metric ton", "metric tons")),
        "lb": (0.45359237, ("lbs", "pound", "pounds")),
        "oz": (0.028349523125, ("ounce", "ounces")),
        "st": (6.35029318, ("stone", "stones")),
    },
    "time": {
        "s": (1.0, ("sec", "secs", "second", "seconds")),
        "ms": (0.001, ("millisecond", "milliseconds")),
        "us": (1e-6, ("µs", "microsecond", "microseconds")),
        "min": (60.0, ("mins", "minute", "minutes")),
        "h": (3600.0, ("hr", "hrs", "hour", "hours")),
        "d": (86400.0, ("day", "days")),
        "wk": (604800.0, ("week", "weeks")),
        "month": (2629800.0, ("months",)),  # 1/12 of a Julian year
        "yr": (31557600.0, ("year", "years")),  # Julian year, 365.25 days
    },
    "volume": {
        "l": (1.0, ("L", "liter", "liters", "litre", "litres")),
        "ml": (0.001, ("mL", "milliliter", "milliliters", "millilitre", "millilitres")),
        "cl": (0.01, ("cL", "centiliter", "centiliters", "centilitre", "centilitres")),
        "m3": (1000.0, ("m^3", "cubic meter", "cubic meters", "cubic metre", "cubic metres")),
        "cm3": (0.001, ("cc", "cm^3", "cubic centimeter", "cubic centimeters")),
        "gal": (3.785411784, ("gallon", "gallons", "us gallon", "us gallons")),
        "imp gal": (4.54609, ("imperial gallon", "imperial gallons")),
        "qt": (0.946352946, ("quart", "quarts")),
        "pt": (0.473176473, ("pint", "pints")),
        "cup": (0.2365882365, ("cups",)),
        "fl oz": (0.0295735295625, ("floz", "fluid ounce", "fluid ounces")),
        "tbsp": (0.01478676478125, ("tablespoon", "tablespoons")),
        "tsp": (0.00492892159375, ("teaspoon", "teaspoons")),
    },
    "speed": {
        "m/s": (1.0, ("mps", "meters per second", "metres per second", "meter per second")),
        "km/h": (1000.0 / 3600.0, ("kph", "kmh", "kmph", "kilometers per hour", "kilometres per hour")),
        "mph": (1609.344 / 3600.0, ("mi/h", "miles per hour", "mile per hour")),
        "kn": (1852.0 / 3600.0, ("kt", "knot", "knots")),
        "ft/s": (0.3048, ("feet per second", "foot per second")),
    },
    "data": {
        "B": (1.0, ("byte", "bytes")),
        "bit": (0.125, ("b", "bits")),
        "kB": (1e3, ("KB", "kilobyte", "kilobytes")),
        "MB": (1e6, ("megabyte", "megabytes")),
        "GB": (1e9, ("gigabyte", "gigabytes")),
        "TB": (1e12, ("terabyte", "terabytes")),
        "PB": (1e15, ("petabyte", "petabytes")),
        "KiB": (1024.0, ("kibibyte", "kibibytes")),
        "MiB": (1024.0**2, ("mebibyte", "mebibytes")),
        "GiB": (1024.0**3, ("gibibyte", "gibibytes")),
        "TiB": (1024.0**4, ("tebibyte", "tebibytes")),
        "kbit": (125.0, ("kb", "kilobit", "kilobits")),
        "Mbit": (125e3, ("Mb", "megabit", "megabits")),
        "Gbit": (125e6, ("Gb", "gigabit", "gigabits")),
    },
}

_TEMPERATURE: dict[str, tuple[str, ...]] = {
    "C": ("°C", "degC", "celsius", "centigrade", "degrees celsius"),
    "F": ("°F", "degF", "fahrenheit", "degrees fahrenheit"),
    "K": ("kelvin", "kelvins"),
}

MAX_UNIT_CHARS = 40


def _build_tables() -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]]:
    """Exact-case and lower-case lookup tables: name -> (category, canonical symbol)."""
    exact: dict[str, tuple[str, str]] = {}
    folded: dict[str, tuple[str, str]] = {}
    entries: list[tuple[str, str, tuple[str, ...]]] = [
        (category, symbol, aliases) for category, units in _LINEAR.items() for symbol, (_, aliases) in units.items()
    ]
    entries += [("temperature", symbol, aliases) for symbol, aliases in _TEMPERATURE.items()]
    for category, symbol, aliases in entries:
        for name in (symbol, *aliases):
            assert name not in exact, f"unit name {name!r} listed twice"
            exact[name] = (category, symbol)
            # Case-insensitive fallback: the first unit listed wins a tie ("mb" -> MB, "b" -> B), while the
            # exact table above keeps "b" = bit and "Mb" = megabit for those who spell them precisely.
            folded.setdefault(name.lower(), (category, symbol))
    return exact, folded


_EXACT, _FOLDED = _build_tables()


def resolve_unit(name: str) -> tuple[str, str]:
    """Map a unit name or alias to (category, canonical symbol); raise ToolError if unknown."""
    if len(name) > MAX_UNIT_CHARS:
        raise ToolError(f"unit name too long (> {MAX_UNIT_CHARS} characters)")
    cleaned = re.sub(r"\s+", " ", name.strip().rstrip(".")).replace("° ", "°")
    found = _EXACT.get(cleaned) or _FOLDED.get(cleaned.lower())
    if found is None:
        # "degree Celsius", "deg F", "degrees kelvin": drop the prefix and try again.
        bare = re.sub(r"^(degrees?|deg)\s+", "", cleaned, flags=re.IGNORECASE)
        found = _EXACT.get(bare) or _FOLDED.get(bare.lower())
    if found is None:
        raise ToolError(f"unknown unit {name!r}; try e.g. km, mi, kg, lb, h, l, gal, km/h, MB, C, F")
    return found


def _to_kelvin(value: float, symbol: str) -> float:
    if symbol == "C":
        return value + 273.15
    if symbol == "F":
        return (value - 32.0) * 5.0 / 9.0 + 273.15
    return value


def _from_kelvin(kelvin: float, symbol: str) -> float:
    if symbol == "C":
        return kelvin - 273.15
    if symbol == "F":
        return (kelvin - 273.15) * 9.0 / 5.0 + 32.0
    return kelvin


def convert(value: float, from_unit: str, to_unit: str) -> tuple[float, str, str]:
    """Convert and return (result, canonical from symbol, canonical to symbol)."""
    if not math.isfinite(value):
        raise ToolError("value must be a finite number")
    from_category, from_symbol = resolve_unit(from_unit)
    to_category, to_symbol = resolve_unit(to_unit)
    if from_category != to_category:
        raise ToolError(
            f"cannot convert {from_category} ({from_symbol}) to {to_category} ({to_symbol}): different kinds of unit"
        )
    if from_category == "temperature":
        kelvin = _to_kelvin(value, from_symbol)
        if kelvin < -1e-9:
            raise ToolError("temperature below absolute zero")
        result = _from_kelvin(max(kelvin, 0.0), to_symbol)
    else:
        units = _LINEAR[from_category]
        result = value * units[from_symbol][0] / units[to_symbol][0]
    if not math.isfinite(result):
        raise ToolError("result overflows")
    return result, from_symbol, to_symbol


@tool(
    name="unit_convert",
    description="Convert a value between units of length, mass, time, volume, speed, data size or "
    "temperature (C, F, K), e.g. 5 km to mi.",
)
def unit_convert(
    value: Annotated[float, Field(description="The number to convert")],
    from_unit: Annotated[str, Field(description="Unit of the value, e.g. 'km', 'lb', 'F'")],
    to_unit: Annotated[str, Field(description="Unit to convert to, e.g. 'mi', 'kg', 'C'")],
) -> str:
    result, from_symbol, to_symbol = convert(value, from_unit, to_unit)
    return f"{format_number(value)} {from_symbol} = {format_number(result)} {to_symbol}"
