"""Parsing a JSON body from outside (an HTTP request, an intake message) into a clear
400 when it cannot be used, never a crash.

The nesting depth is checked before ``json.loads``: a 2 KB body of ``[[[[...`` makes
the decoder (and anything recursive after it) run out of stack. The scan is one regex
pass that skips string contents, so brackets inside strings do not count."""

from __future__ import annotations

import json
import re
from typing import Any

from chalicelib.platform.errors import InvalidRequest

MAX_JSON_DEPTH = 32
# A whole JSON string (escapes included), or one bracket outside strings.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_OPENERS = frozenset(b"[{")


def nesting_depth(raw: bytes, stop_above: int = MAX_JSON_DEPTH) -> int:
    """The deepest nesting of arrays and objects in ``raw``; the scan stops as soon as
    the depth exceeds ``stop_above`` (the value returned is then ``stop_above + 1``)."""
    depth = deepest = 0
    for match in _TOKENS.finditer(raw):
        first = match.group()[0]
        if first in _OPENERS:
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop_above:
                    break
        elif first != ord('"'):
            depth -= 1
    return deepest


def parse_json(raw: bytes | str, field: str = "body", what: str = "Request body",
               max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``raw`` decoded, or InvalidRequest (400) naming ``field`` and the rule broken:
    empty, nested deeper than ``max_depth``, or not JSON."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw  # for the scan
    if not data.strip():
        raise InvalidRequest(f"{what} is empty", [{"field": field, "message": "must be a JSON object"}])
    if nesting_depth(data, max_depth) > max_depth:
        raise InvalidRequest(
            f"{what} is nested too deeply",
            [{"field": field, "message": f"must not nest deeper than {max_depth} levels"}],
        )
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidRequest(f"{what} is not valid JSON", [{"field": field, "message": str(exc)}]) from None
