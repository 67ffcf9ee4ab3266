"""DynamoDB items in plain Python: numbers as int/float, not Decimal, and update expressions
built with their placeholders. Shared by the jobs table and the GPU registry."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _decimals(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _decimals(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decimals(v) for v in value]
    return value


def to_ddb(value: Any) -> dict[str, Any]:
    return _serializer.serialize(_decimals(value))


def _numbers(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def from_ddb(attr: dict[str, Any]) -> Any:
    return _numbers(_deserializer.deserialize(attr))


def decode_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: from_ddb(v) for k, v in item.items()}


def encode_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: to_ddb(v) for k, v in item.items()}


class Expr:
    """Accumulates an UpdateExpression with its placeholders."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        self.sets: list[str] = []
        self.removes: list[str] = []
        self.conditions: list[str] = []

    def name(self, attr: str) -> str:
        ph = f"#{attr}"
        self.names[ph] = attr
        return ph

    def value(self, key: str, value: Any) -> str:
        ph = f":{key}"
        self.values[ph] = to_ddb(value)
        return ph

    def set(self, attr: str, value: Any) -> None:
        self.sets.append(f"{self.name(attr)} = {self.value('set_' + attr, value)}")

    def kwargs(self) -> dict[str, Any]:
        update = ""
        if self.sets:
            update += "SET " + ", ".join(self.sets)
        if self.removes:
            update += " REMOVE " + ", ".join(self.name(a) for a in dict.fromkeys(self.removes))
        out: dict[str, Any] = {
            "UpdateExpression": update.strip(),
            "ExpressionAttributeNames": self.names,
        }
        if self.conditions:
            out["ConditionExpression"] = " AND ".join(f"({c})" for c in self.conditions)
        if self.values:
            out["ExpressionAttributeValues"] = self.values
        return out
