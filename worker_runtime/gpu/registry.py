"""The GPU registry: one DynamoDB item (table GPU_TABLE, key ``id``) per instance that a
worker rents or is about to rent, so that no instance outlives its owner unnoticed.

    launching  an intent, written BEFORE calling launch (workload still unknown)
    running    launched: workload, node, launched_at, last_used, busy
    stopping   someone (``owner``) is stopping it; deleted once Comput3 confirmed

Every write is conditional on the ``version`` the writer last read, and bumps it. So a
claim ("I stop this one") succeeds for exactly one worker, and an owner whose record
was claimed while it was silent finds out at its next write (``RecordLost``).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable

from botocore.exceptions import ClientError

from chalicelib.store import _Expr, decode_item, encode_item

LAUNCHING = "launching"
RUNNING = "running"
STOPPING = "stopping"
# Keep a record around (DynamoDB TTL) a day past its rental's end, then let it go.
RETAIN_AFTER_EXPIRY = 86400


@dataclass(frozen=True)
class GpuRecord:
    id: str
    state: str
    owner: str  # worker id of whoever is responsible for it now
    heartbeat: float  # last sign of life from the owner
    version: int
    expires: int  # the rental's end, exactly as sent to Comput3's launch
    type: str
    created_at: float
    workload: str | None = None
    node: str | None = None
    launched_at: float | None = None
    last_used: float | None = None  # end of the last job (idle time counts from here)
    busy: bool = False  # a job is running on it
    reason: str | None = None  # why it is being stopped

    def age(self, now: float) -> float:
        return now - (self.launched_at or self.created_at)

    def silent_for(self, now: float) -> float:
        return now - self.heartbeat

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> "GpuRecord":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in decode_item(item).items() if k in names})


class RecordLost(Exception):
    """A conditional write found the record changed (claimed by another worker) or gone."""

    def __init__(self, record_id: str, current: GpuRecord | None):
        holder = f"now {current.state} under {current.owner}" if current else "deleted"
        super().__init__(f"GPU record {record_id} changed meanwhile ({holder})")
        self.current = current


class GpuRegistry:
    def __init__(self, dynamodb: Any, table: str, clock: Callable[[], float]):
        self._ddb = dynamodb
        self.table = table
        self._clock = clock

    def all(self) -> list[GpuRecord]:
        out: list[GpuRecord] = []
        kwargs: dict[str, Any] = {"TableName": self.table, "ConsistentRead": True}
        while True:
            page = self._ddb.scan(**kwargs)
            out.extend(GpuRecord.from_item(item) for item in page.get("Items", []) if "state" in item)
            if "LastEvaluatedKey" not in page:
                return out
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def get(self, record_id: str) -> GpuRecord | None:
        item = self._ddb.get_item(TableName=self.table, Key={"id": {"S": record_id}},
                                  ConsistentRead=True).get("Item")
        return GpuRecord.from_item(item) if item else None

    def create_intent(self, owner: str, expires: int, workload_type: str) -> GpuRecord:
        now = self._clock()
        record = GpuRecord(id=f"gpu-{uuid.uuid4()}", state=LAUNCHING, owner=owner, heartbeat=now, version=1,
                           expires=expires, type=workload_type, created_at=now)
        item = {k: v for k, v in asdict(record).items() if v is not None}
        item["expires_at"] = expires + RETAIN_AFTER_EXPIRY
        self._ddb.put_item(TableName=self.table, Item=encode_item(item),
                           ConditionExpression="attribute_not_exists(id)")
        return record

    def update(self, record: GpuRecord, **changes: Any) -> GpuRecord:
        """Write ``changes`` if nobody wrote since ``record`` was read; returns the new record."""
        expr = _Expr()
        new = replace(record, version=record.version + 1, **changes)
        for key, value in {**changes, "version": new.version}.items():
            if value is None:
                expr.removes.append(key)
            else:
                expr.set(key, value)
        expr.conditions.append(f"{expr.name('version')} = {expr.value('seen', record.version)}")
        try:
            self._ddb.update_item(TableName=self.table, Key={"id": {"S": record.id}}, **expr.kwargs())
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise RecordLost(record.id, self.get(record.id)) from None
            raise
        return new

    def delete(self, record: GpuRecord) -> None:
        try:
            self._ddb.delete_item(TableName=self.table, Key={"id": {"S": record.id}},
                                  ConditionExpression="#v = :v", ExpressionAttributeNames={"#v": "version"},
                                  ExpressionAttributeValues={":v": {"N": str(record.version)}})
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise RecordLost(record.id, self.get(record.id)) from None
            raise
