"""The chat's built-in tools: real work, offline (time zones, arithmetic, unit conversion)."""

from __future__ import annotations

import datetime
import re
import zoneinfo
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from .._handlers import FunctionCallParams
from .._schemas import FunctionSchema
from ._calculator import calculate, calculate_in_thread

__all__ = [
    "BUILTIN_TOOLS",
    "BuiltinTool",
    "about_arithmetic",
    "about_time",
    "about_units",
    "calculate",
    "convert_units",
    "current_time",
]


@attrs.frozen
class BuiltinTool:
    """A tool the chat offers: its schema, its handler, and the lines it is about.

    ``about`` tells whether a line of the user's is about what the tool does: on the embedded
    model the chat offers a tool only for such lines (see :mod:`actors.cli._offer`).
    """

    schema: FunctionSchema
    handler: Callable[[FunctionCallParams], Awaitable[None]]
    about: Callable[[str], bool]


# ----------------------------------------------------------------------------- time


def current_time(timezone: str = "UTC") -> dict[str, Any]:
    """The current date and time in an IANA time zone.

    Raises:
        ValueError: unknown time zone.
    """
    try:
        zone = zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {timezone!r}; use an IANA name such as 'Europe/Paris'"
        ) from None
    now = datetime.datetime.now(zone)
    return {
        "timezone": timezone,
        "datetime": now.isoformat(timespec="seconds"),
        "weekday": now.strftime("%A"),
        "utc_offset": now.strftime("%z"),
    }


# ----------------------------------------------------------------------------- units

_LINEAR: dict[str, tuple[str, float]] = {
    # length, in metres
    "m": ("length", 1.0), "km": ("length", 1000.0), "cm": ("length", 0.01),
    "mm": ("length", 0.001), "mi": ("length", 1609.344), "yd": ("length", 0.9144),
    "ft": ("length", 0.3048), "in": ("length", 0.0254),
    # mass, in kilograms
    "kg": ("mass", 1.0), "g": ("mass", 0.001), "mg": ("mass", 1e-6),
    "lb": ("mass", 0.45359237), "oz": ("mass", 0.028349523125), "t": ("mass", 1000.0),
    # volume, in litres
    "l": ("volume", 1.0), "ml": ("volume", 0.001), "gal": ("volume", 3.785411784),
    "cup": ("volume", 0.2365882365), "m3": ("volume", 1000.0),
    # speed, in metres per second
    "m/s": ("speed", 1.0), "km/h": ("speed", 1 / 3.6), "mph": ("speed", 0.44704),
    "kn": ("speed", 0.514444),
    # time, in seconds
    "s": ("time", 1.0), "min": ("time", 60.0), "h": ("time", 3600.0), "day": ("time", 86400.0),
}  # fmt: skip
_ALIASES = {
    "meter": "m", "meters": "m", "metre": "m", "metres": "m", "kilometer": "km",
    "kilometers": "km", "centimeter": "cm", "millimeter": "mm", "mile": "mi", "miles": "mi",
    "yard": "yd", "yards": "yd", "foot": "ft", "feet": "ft", "inch": "in", "inches": "in",
    "kilogram": "kg", "kilograms": "kg", "gram": "g", "grams": "g", "pound": "lb",
    "pounds": "lb", "lbs": "lb", "ounce": "oz", "ounces": "oz", "liter": "l", "litre": "l",
    "liters": "l", "litres": "l", "milliliter": "ml", "gallon": "gal", "gallons": "gal",
    "cups": "cup", "kph": "km/h", "knots": "kn", "second": "s", "seconds": "s",
    "minute": "min", "minutes": "min", "hour": "h", "hours": "h", "days": "day",
    "celsius": "c", "°c": "c", "fahrenheit": "f", "°f": "f", "kelvin": "k",
}  # fmt: skip
_TEMPERATURE = {"c", "f", "k"}


def _unit(name: str) -> str:
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def convert_units(value: float, from_unit: str, to_unit: str) -> dict[str, Any]:
    """Convert between units of length, mass, volume, speed, time and temperature.

    Raises:
        ValueError: unknown unit, or units of different quantities.
    """
    src, dst = _unit(from_unit), _unit(to_unit)
    if src in _TEMPERATURE and dst in _TEMPERATURE:
        kelvin = {"c": value + 273.15, "f": (value - 32) * 5 / 9 + 273.15, "k": value}[src]
        out = {"c": kelvin - 273.15, "f": (kelvin - 273.15) * 9 / 5 + 32, "k": kelvin}[dst]
        return {"value": value, "from": from_unit, "to": to_unit, "result": round(out, 6)}
    known = sorted([*_LINEAR, "C", "F", "K"])
    if src not in _LINEAR or dst not in _LINEAR:
        bad = from_unit if src not in _LINEAR else to_unit
        raise ValueError(f"unknown unit {bad!r}; known units: {', '.join(known)}")
    (q1, f1), (q2, f2) = _LINEAR[src], _LINEAR[dst]
    if q1 != q2:
        raise ValueError(f"cannot convert {q1} ({from_unit}) to {q2} ({to_unit})")
    result = value * f1 / f2
    return {"value": value, "from": from_unit, "to": to_unit, "result": round(result, 6)}


# ----------------------------------------------------------------------------- handlers


async def _time_handler(params: FunctionCallParams) -> None:
    try:
        result: Any = current_time(str(params.arguments.get("timezone") or "UTC"))
    except ValueError as exc:
        result = {"error": str(exc)}
    await params.result_callback(result)


async def _calc_handler(params: FunctionCallParams) -> None:
    expression = str(params.arguments.get("expression", ""))
    try:
        # In a worker thread: an interruption (Ctrl-C) stops it, and the chat stays responsive.
        value = await calculate_in_thread(expression)
        result: Any = {"expression": expression, "result": value}
    except ValueError as exc:
        result = {"expression": expression, "error": str(exc)}
    await params.result_callback(result)


async def _convert_handler(params: FunctionCallParams) -> None:
    args = params.arguments
    try:
        value = float(args.get("value"))  # type: ignore[arg-type]
        result: Any = convert_units(value, str(args.get("from_unit")), str(args.get("to_unit")))
    except (TypeError, ValueError) as exc:
        result = {"error": str(exc)}
    await params.result_callback(result)


# ----------------------------------------------------------------------------- topics

_TIME_WORDS = re.compile(
    r"\b(time|times? ?zones?|clock|date|today|tonight|tomorrow|yesterday|weekday|o'clock"
    r"|utc|gmt|what day|which day)\b",
    re.IGNORECASE,
)
#: Two numbers around an operator (``12*7``, ``3 + 4``, ``2^10``), or a percentage.
_EXPRESSION = re.compile(r"\d\s*(?:[-+*/\u00d7\u00f7^]\s*[\d(.]|%)")
_MATH_WORDS = re.compile(
    r"\b(math\w*|sum|plus|minus|times|multipl\w*"
    r"|divid\w*|square root|sqrt|powers?|percent\w*|average|squared|cubed)\b",
    re.IGNORECASE,
)
#: Asking for a calculation, with or without a number.
_EXPLICIT_MATH = re.compile(r"\b(calculat\w*|comput\w*|arithmetic)\b", re.IGNORECASE)
_DIGIT = re.compile(r"\d")
_UNIT_NAMES = sorted(
    {name for name in [*_LINEAR, *_ALIASES] if len(name) > 1 or name in _TEMPERATURE},
    key=len,
    reverse=True,
)
#: A number with a unit after it (``5 km``, ``100°F``, ``3 cups``).
_QUANTITY = re.compile(
    r"\d\s*(?:" + "|".join(re.escape(name) for name in _UNIT_NAMES) + r")(?![a-z])",
    re.IGNORECASE,
)
_CONVERT_WORDS = re.compile(
    r"\b(convert\w*|conversion)\b|\bhow many (?:"
    + "|".join(re.escape(name) for name in _UNIT_NAMES if len(name) > 2)
    + r")\b",
    re.IGNORECASE,
)


def about_time(line: str) -> bool:
    """Whether ``line`` asks about a time, a date or a time zone."""
    return _TIME_WORDS.search(line) is not None


def about_arithmetic(line: str) -> bool:
    """Whether ``line`` holds a calculation: an expression, a number with a word of
    arithmetic, or a request to calculate."""
    if _EXPRESSION.search(line) or _EXPLICIT_MATH.search(line):
        return True
    return _DIGIT.search(line) is not None and _MATH_WORDS.search(line) is not None


def about_units(line: str) -> bool:
    """Whether ``line`` is about converting a quantity: a number with a unit, or a request
    to convert."""
    return _QUANTITY.search(line) is not None or _CONVERT_WORDS.search(line) is not None


BUILTIN_TOOLS: tuple[BuiltinTool, ...] = (
    BuiltinTool(
        FunctionSchema(
            name="get_current_time",
            description="Get the current date and time in a time zone.",
            properties={
                "timezone": {
                    "type": "string",
                    "description": "IANA time zone, e.g. 'Europe/Paris' or 'UTC'",
                }
            },
            required=["timezone"],
        ),
        _time_handler,
        about_time,
    ),
    BuiltinTool(
        FunctionSchema(
            name="calculate",
            description="Evaluate an arithmetic expression, e.g. '(3 + 4) * sqrt(16)'.",
            properties={"expression": {"type": "string", "description": "The expression"}},
            required=["expression"],
        ),
        _calc_handler,
        about_arithmetic,
    ),
    BuiltinTool(
        FunctionSchema(
            name="convert_units",
            description=(
                "Convert a value between units of length, mass, volume, speed, time or "
                "temperature (e.g. km to mi, lb to kg, C to F)."
            ),
            properties={
                "value": {"type": "number", "description": "The value to convert"},
                "from_unit": {"type": "string", "description": "Unit of the value, e.g. 'km'"},
                "to_unit": {"type": "string", "description": "Target unit, e.g. 'mi'"},
            },
            required=["value", "from_unit", "to_unit"],
        ),
        _convert_handler,
        about_units,
    ),
)
