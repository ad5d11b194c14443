"""Small helpers to read a YAML mapping field by field with one-line errors.

Kept apart from the spec so the search space and the spec share one way of saying "field X: got Y, allowed Z, fix".
"""

from __future__ import annotations

import difflib
import math
import re
import reprlib
from collections.abc import Iterable, Mapping
from typing import Any

from sweeplight._errors import SpecError

_MISSING = object()
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,79}$")
# A value quoted in an error stays short and on one line, however big the value (YAML aliases can make it huge).
_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlevel = 80, 80, 3
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 8


def show(value: Any) -> str:
    """``repr`` for error messages: one line, at most ~80 characters per string, a few items per container."""
    return _SHORT.repr(value)


def key_text(key: Any) -> str:
    """A key as it appears in a field path: plain keys as written, anything odd (newlines, long, not a string)
    quoted, so a hostile key cannot break the one-line error."""
    return key if isinstance(key, str) and _PLAIN_KEY.match(key) else show(key)


def one_line(text: str, limit: int = 300) -> str:
    """Someone else's error text (user code, Optuna, a driver) folded into one line of at most ``limit`` chars."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def type_name(value: Any) -> str:
    """Name a YAML value's type the way a study-file author thinks of it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


def did_you_mean(word: Any, allowed: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' when a close match exists, else ''."""
    if not isinstance(word, str) or len(word) > 200:
        return ""
    close = difflib.get_close_matches(word, [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_keys(mapping: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Reject unknown keys with a did-you-mean, so a typo never silently falls back to a default."""
    allowed = list(allowed)
    for key in mapping:
        if key not in allowed:
            field = f"{where}.{key_text(key)}" if where else key_text(key)
            raise SpecError(
                field,
                f"unknown key{did_you_mean(key, allowed)}; allowed keys here: {', '.join(allowed)}",
            )


def as_mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(where, f"expected a mapping (key: value lines), got {type_name(value)} {show(value)}")
    for key in value:
        if not isinstance(key, str):
            raise SpecError(where, f"keys must be strings, got {type_name(key)} {show(key)}; quote the key")
    return dict(value)


def get_str(m: Mapping[str, Any], key: str, where: str, default: Any = _MISSING) -> Any:
    value = m.get(key, default)
    if value is _MISSING:
        raise SpecError(f"{where}.{key}".lstrip("."), "is required; add it to the study file")
    if value is None and default is None:
        return None
    if not isinstance(value, str) or not value.strip():
        field = f"{where}.{key}".lstrip(".")
        raise SpecError(field, f"expected a non-empty string, got {type_name(value)} {show(value)}")
    return value


def get_bool(m: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = m.get(key, default)
    if not isinstance(value, bool):
        raise SpecError(f"{where}.{key}".lstrip("."), f"expected true or false, got {type_name(value)} {show(value)}")
    return value


def get_int(
    m: Mapping[str, Any], key: str, where: str, default: Any = _MISSING, *, minimum: int | None = None
) -> Any:
    value = m.get(key, default)
    field = f"{where}.{key}".lstrip(".")
    if value is _MISSING:
        raise SpecError(field, "is required; add it to the study file")
    if value is None and default is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(field, f"expected an integer, got {type_name(value)} {show(value)}")
    if minimum is not None and value < minimum:
        raise SpecError(field, f"must be >= {minimum}, got {value}")
    return value


def get_number(
    m: Mapping[str, Any], key: str, where: str, default: Any = _MISSING, *, minimum: float | None = None
) -> Any:
    value = m.get(key, default)
    field = f"{where}.{key}".lstrip(".")
    if value is _MISSING:
        raise SpecError(field, "is required; add it to the study file")
    if value is None and default is None:
        return None
    value = to_number(value, field)
    if minimum is not None and value < minimum:
        raise SpecError(field, f"must be >= {minimum}, got {value}")
    return value


def to_number(value: Any, field: str) -> float | int:
    """Accept YAML numbers and strings like '1e-3' (YAML 1.1 reads 1e-3 without a dot as a string)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise SpecError(field, f"expected a number, got string {show(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(field, f"expected a number, got {type_name(value)} {show(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(field, f"must be a finite number, got {show(value)}")
    return value


def get_choice(m: Mapping[str, Any], key: str, where: str, allowed: Iterable[str], default: Any = _MISSING) -> Any:
    allowed = list(allowed)
    value = m.get(key, default)
    field = f"{where}.{key}".lstrip(".")
    if value is _MISSING:
        raise SpecError(field, f"is required; one of: {', '.join(allowed)}")
    if value not in allowed:
        hint = did_you_mean(value, allowed) if isinstance(value, str) else ""
        raise SpecError(field, f"got {show(value)}{hint}; allowed: {', '.join(allowed)}")
    return value


def parse_duration(value: Any, field: str) -> float | None:
    """Seconds from a number or a string like '90', '30m', '2h', '1h30m', '45s'."""
    if value is None:
        return None
    if isinstance(value, str):
        text, total, number = value.strip().lower(), 0.0, ""
        units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
        try:
            if re.fullmatch(r"[0-9.]+e[-+]?[0-9]+", text):  # YAML 1.1 reads 1e3 (no dot) as a string
                text = f"{float(text)}s"
            if not text:
                raise ValueError(text)
            for char in text:
                if char.isdigit() or char == ".":
                    number += char
                elif char in units and number:
                    total, number = total + float(number) * units[char], ""
                else:
                    raise ValueError(char)
            total += float(number) if number else 0.0
        except ValueError:
            raise SpecError(
                field, f"expected seconds or a duration like '30m', '2h', '1h30m', got {show(value)}"
            ) from None
        value = total
    seconds = to_number(value, field)
    if seconds <= 0:
        raise SpecError(field, f"must be positive, got {show(value)}; leave it out for no limit")
    return float(seconds)
