"""The GPU registry: one DynamoDB item (table GPU_TABLE, key ``id``) per instance that a
worker rents or is about to rent, so that no instance outlives its owner unnoticed.

The key is a slot, ``gpu-slot-<k>`` with 0 <= k < MAX_GPUS: a launch starts by creating
the record of a free slot (``attribute_not_exists(id)``), so at most MAX_GPUS instances
exist however many workers launch at once, and a launch never needs a lock or a sleep.
A slot is free again once its record is deleted (the instance confirmed stopped).

    launching  an intent, written BEFORE calling launch (workload still unknown)
    running    launched: workload, node, launched_at, last_used, busy
    stopping   someone (``owner``) is stopping it; deleted once Comput3 confirmed

Every write is conditional on the ``version`` the writer last read (and on the record's
``serial``, so a copy of a deleted record never matches its slot's next record), and bumps
it. So a claim ("I stop this one") or an adoption ("I run my job on this idle one")
succeeds for exactly one worker, and an owner whose record was taken while it was silent
finds out at its next write (``RecordLost``).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable

from botocore.exceptions import ClientError

from chalicelib.platform.dynamo import Expr, decode_item, encode_item

LAUNCHING = "launching"
RUNNING = "running"
STOPPING = "stopping"
# Keep a record around (DynamoDB TTL) a day past its rental's end, then let it go.
RETAIN_AFTER_EXPIRY = 86400
SLOT_PREFIX = "gpu-slot-"
# Reads go through this index (hash key ``state``; infra/local/stack.py and data.yaml
# declare it), never through a scan of the table.
STATE_INDEX = "by-state"
STATES = (LAUNCHING, RUNNING, STOPPING)


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
    serial: str = ""  # unique per record, while its id (the slot) is reused
    ahead: bool = False  # launched by the pool ahead of the queue; no job has taken it yet
    metered_at: float | None = None  # billed time up to here is counted in GpuBilledSeconds
    charged: float = 0.0  # seconds of its rental charged to jobs (chalicelib/fleet/books.py)
    draining_until: float | None = None  # busy with a cancelled job's work the node could not stop

    @property
    def slot(self) -> int | None:
        head, _, number = self.id.rpartition("-")
        return int(number) if head == SLOT_PREFIX.rstrip("-") and number.isdigit() else None

    @property
    def idle(self) -> bool:
        """Running, no job on it: any worker may adopt it."""
        return self.state == RUNNING and not self.busy and self.workload is not None

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


class SlotTaken(Exception):
    """Another worker created the record of that slot first."""


class GpuRegistry:
    def __init__(self, dynamodb: Any, table: str, clock: Callable[[], float]):
        self._ddb = dynamodb
        self.dynamodb = dynamodb
        self.table = table
        self._clock = clock

    def all(self) -> list[GpuRecord]:
        """Every record: one query per state on the state index (eventually consistent,
        which is enough: every write that acts on a record is conditional)."""
        out: list[GpuRecord] = []
        for state in STATES:
            kwargs: dict[str, Any] = {"TableName": self.table, "IndexName": STATE_INDEX,
                                      "KeyConditionExpression": "#s = :s", "ExpressionAttributeNames": {"#s": "state"},
                                      "ExpressionAttributeValues": {":s": {"S": state}}}
            while True:
                page = self._ddb.query(**kwargs)
                out.extend(GpuRecord.from_item(item) for item in page.get("Items", []))
                if "LastEvaluatedKey" not in page:
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return out

    def get(self, record_id: str) -> GpuRecord | None:
        item = self._ddb.get_item(TableName=self.table, Key={"id": {"S": record_id}},
                                  ConsistentRead=True).get("Item")
        return GpuRecord.from_item(item) if item else None

    def create_intent(self, owner: str, expires: int, workload_type: str, slot: int,
                      ahead: bool = False) -> GpuRecord:
        """Take launch slot ``slot`` with a "launching" record; SlotTaken if it is in use."""
        now = self._clock()
        record = GpuRecord(id=f"{SLOT_PREFIX}{slot}", state=LAUNCHING, owner=owner, heartbeat=now, version=1,
                           expires=expires, type=workload_type, created_at=now, serial=uuid.uuid4().hex,
                           ahead=ahead)
        item = {k: v for k, v in asdict(record).items() if v is not None}
        item["expires_at"] = expires + RETAIN_AFTER_EXPIRY
        try:
            self._ddb.put_item(TableName=self.table, Item=encode_item(item),
                               ConditionExpression="attribute_not_exists(id)")
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise SlotTaken(record.id) from None
            raise
        return record

    def update(self, record: GpuRecord, require_idle: bool = False, **changes: Any) -> GpuRecord:
        """Write ``changes`` if nobody wrote since ``record`` was read (and, with
        ``require_idle``, if it is running with no job on it); returns the new record."""
        expr = Expr()
        if require_idle:
            expr.conditions.append(f"{expr.name('state')} = {expr.value('running', RUNNING)}")
            expr.conditions.append(f"{expr.name('busy')} = {expr.value('idle', False)}")
        new = replace(record, version=record.version + 1, **changes)
        for key, value in {**changes, "version": new.version}.items():
            if value is None:
                expr.removes.append(key)
            else:
                expr.set(key, value)
        expr.conditions.append(f"{expr.name('version')} = {expr.value('seen', record.version)}")
        expr.conditions.append(f"{expr.name('serial')} = {expr.value('serial', record.serial)}")
        try:
            self._ddb.update_item(TableName=self.table, Key={"id": {"S": record.id}}, **expr.kwargs())
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise RecordLost(record.id, self.get(record.id)) from None
            raise
        return new

    def delete(self, record: GpuRecord) -> GpuRecord:
        """Delete the record if unchanged since read; returns it as it was at deletion
        (its ``metered_at`` may be newer than the copy read: metering does not bump the version)."""
        try:
            resp = self._ddb.delete_item(TableName=self.table, Key={"id": {"S": record.id}},
                                         ConditionExpression="#v = :v AND #s = :s",
                                         ExpressionAttributeNames={"#v": "version", "#s": "serial"},
                                         ExpressionAttributeValues={":v": {"N": str(record.version)},
                                                                    ":s": {"S": record.serial}},
                                         ReturnValues="ALL_OLD")
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise RecordLost(record.id, self.get(record.id)) from None
            raise
        old = resp.get("Attributes")
        return GpuRecord.from_item(old) if old else record

    def meter(self, record: GpuRecord, until: float) -> bool:
        """Move the record's ``metered_at`` to ``until`` if nobody metered it since ``record``
        was read; True if this call did (and so counts the seconds in between). It leaves
        ``version`` alone: metering must never make an owner think its record was taken."""
        expr = Expr()
        metered = expr.name("metered_at")
        if record.metered_at is None:
            expr.conditions.append(f"attribute_not_exists({metered})")
        else:
            expr.conditions.append(f"{metered} = {expr.value('seen', record.metered_at)}")
        expr.conditions.append(f"{expr.name('serial')} = {expr.value('serial', record.serial)}")
        expr.set("metered_at", until)
        try:
            self._ddb.update_item(TableName=self.table, Key={"id": {"S": record.id}}, **expr.kwargs())
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True
