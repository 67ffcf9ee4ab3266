"""The JSON body helper shared by the API and intake: depth scanned before parsing."""

from __future__ import annotations

import json

import pytest

from chalicelib.platform.errors import InvalidRequest
from chalicelib.platform.json_body import nesting_depth, parse_json


@pytest.mark.parametrize("raw, depth", [
    (b'{"a": 1}', 1),
    (b'[[1], {"b": [2]}]', 3),
    (b'["[[[[", "\\"]]]", {"k]": "{"}]', 2),  # brackets and escaped quotes inside strings
    (b'"just a string"', 0),
])
def test_depth_counts_structure_only(raw: bytes, depth: int) -> None:
    assert nesting_depth(raw) == depth
    json.loads(raw)  # the samples are valid JSON


def test_scan_stops_once_past_the_limit() -> None:
    assert nesting_depth(b"[" * 100_000, stop_above=5) == 6


@pytest.mark.parametrize("raw, message", [
    ("", "must be a JSON object"),
    ("[" * 33 + "]" * 33, "must not nest deeper than 32 levels"),
    ('{"a": ', "Expecting value"),
])
def test_errors_name_the_field_and_the_rule(raw: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_json(raw, field="message", what="Message body")
    detail = info.value.details[0]
    assert info.value.status_code == 400 and detail["field"] == "message" and message in detail["message"]
    assert info.value.message.startswith("Message body")


def test_text_and_bytes_parse_alike() -> None:
    raw = '{"text": "h\\u00e9llo", "deep": ' + "[" * 31 + "]" * 31 + "}"
    assert parse_json(raw) == parse_json(raw.encode()) == json.loads(raw)
