"""Whole numbers from headers and query strings: ASCII digits only.

``str.isdigit`` accepts ``²`` and ``１２`` (which ``int`` then refuses or reads), and
``int`` refuses more than 4,300 digits: either way a 500. Here a value is a run of
at most ``max_digits`` ASCII digits, or a 400 naming the parameter."""

from __future__ import annotations

import re

from chalicelib.platform.errors import InvalidRequest

_DIGITS = re.compile(r"[0-9]+")


def ascii_int(raw: str, field: str, rule: str, max_digits: int = 10) -> int:
    """``raw`` as a non-negative int; InvalidRequest(field, rule) when it is not
    1-``max_digits`` ASCII digits."""
    if len(raw) > max_digits or not _DIGITS.fullmatch(raw):
        raise InvalidRequest(f"Invalid {field}", [{"field": field, "message": rule}])
    return int(raw)


def ranged_int(raw: str, field: str, low: int, high: int) -> int:
    """An ASCII whole number from ``low`` to ``high``; a 400 naming ``field`` otherwise."""
    rule = f"must be a whole number from {low} to {high} (ASCII digits)"
    value = ascii_int(raw, field, rule, max_digits=len(str(high)) + 2)
    if not low <= value <= high:
        raise InvalidRequest(f"Invalid {field}", [{"field": field, "message": rule}])
    return value
