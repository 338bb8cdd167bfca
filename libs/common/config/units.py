"""Durations ("90s", "1h30m") and sizes ("25MB") as operators write them, and back."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal, InvalidOperation

_DURATION_UNITS: dict[str, Decimal] = {
    "w": Decimal(7 * 86400),
    "d": Decimal(86400),
    "h": Decimal(3600),
    "m": Decimal(60),
    "s": Decimal(1),
    "ms": Decimal("0.001"),
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|[wdhms])", re.IGNORECASE)
_DURATION_HINT = "expected seconds or a value like 90s, 30m, 4h, 5d or 1h30m"

# Operators think of mail sizes the way clients show them: binary multiples, with
# or without the "i" and the "B".
_SIZE_UNITS: dict[str, int] = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmgt])(i?b)?|(b))?", re.IGNORECASE)
_SIZE_HINT = "expected bytes or a value like 512KB, 25MB or 1GB"


def parse_duration(value: object) -> timedelta:
    """A non-negative duration from seconds (int or float), a timedelta or text like "1h30m"."""
    if isinstance(value, timedelta):
        seconds = Decimal(str(value.total_seconds()))
    elif isinstance(value, bool):
        # True is an int to Python, but "timeout: yes" is a mistake, not one second.
        raise ValueError(f"invalid duration {value!r}: {_DURATION_HINT}")
    elif isinstance(value, int | float):
        seconds = Decimal(str(value))
    elif isinstance(value, str):
        seconds = _parse_duration_text(value)
    else:
        raise ValueError(f"invalid duration {value!r}: {_DURATION_HINT}")
    if seconds < 0:
        raise ValueError(f"invalid duration {value!r}: must not be negative")
    return timedelta(seconds=float(seconds))


def _parse_duration_text(value: str) -> Decimal:
    text = "".join(value.split())
    try:
        return Decimal(int(text)) if text.isdigit() else _duration_parts(text)
    except (ValueError, InvalidOperation):
        raise ValueError(f"invalid duration {value!r}: {_DURATION_HINT}") from None


def _duration_parts(text: str) -> Decimal:
    pos, total, seen = 0, Decimal(0), set()
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(text)
        unit = match.group(2).lower()
        if unit in seen:
            raise ValueError(text)
        seen.add(unit)
        total += Decimal(match.group(1)) * _DURATION_UNITS[unit]
        pos = match.end()
    if not seen:
        raise ValueError(text)
    return total


def format_duration(value: timedelta) -> str:
    """The shortest "1h30m"-style text that parse_duration reads back to the same value."""
    micros = round(value.total_seconds() * 1_000_000)
    if micros < 0:
        raise ValueError(f"negative duration {value}")
    seconds, rest = divmod(micros, 1_000_000)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    if rest:
        parts.append(f"{Decimal(rest) / 1000:f}ms")
    return "".join(parts) or "0s"


def parse_size(value: object) -> int:
    """A non-negative byte count from an int or text like "25MB" (1024-based units)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}: {_SIZE_HINT}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, float) and value.is_integer():
        size = int(value)
    elif isinstance(value, str):
        size = _parse_size_text(value)
    else:
        raise ValueError(f"invalid size {value!r}: {_SIZE_HINT}")
    if size < 0:
        raise ValueError(f"invalid size {value!r}: must not be negative")
    return size


def _parse_size_text(value: str) -> int:
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"invalid size {value!r}: {_SIZE_HINT}")
    number, prefix, _suffix, _bare_b = match.groups()
    # Whole bytes only: "1.5KB" is 1536, a fraction of a byte is dropped.
    return int(Decimal(number) * _SIZE_UNITS[(prefix or "").lower()])


def format_size(value: int) -> str | int:
    """ "25MB" when the count is a whole number of units, else the plain byte count."""
    if value > 0:
        for unit, size in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
            if value % size == 0:
                return f"{value // size}{unit}"
    return value
