"""Reads over the jobs table's indexes: a key's jobs (GET /jobs), queue positions,
the per-key count of jobs in flight, and the counts /health reports.

Every read is a Query on an index with a bounded number of pages, never a scan."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from chalicelib.jobs.lanes import take_key
from chalicelib.jobs.models import JobStatus, JobType
from chalicelib.jobs.record import Job, created_day
from chalicelib.jobs.store import DAY_INDEX, DISPATCH, INFLIGHT_INDEX, OUTBOX_INDEX, OWNER_INDEX
from chalicelib.platform.dynamo import decode_item
from chalicelib.platform.errors import InvalidRequest

MAX_PAGES = 10  # 1 MB each at most: the bound on what one request may read
DAY = 86400.0


@dataclass(frozen=True)
class Count:
    value: int
    approximate: bool  # the bound on pages was reached: at least ``value``


# A cursor is "<created_at>_<job id>" of the last job of a page: its validity is a pattern
# the OpenAPI document can state exactly, and it is only ever applied to the caller's own
# partition of the index, so it reveals and reaches nothing of another key's.
CURSOR_PATTERN = r"^[0-9]{1,15}(\.[0-9]{1,9})?_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def encode_cursor(raw_item: dict[str, Any]) -> str:
    """From an index item as DynamoDB returned it (the number kept exactly as stored)."""
    return f"{raw_item['created_at']['N']}_{raw_item['id']['S']}"


def decode_cursor(cursor: str, owner: str) -> dict[str, Any]:
    """The index key to resume from, in the caller's own partition."""
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise InvalidRequest("Malformed cursor", [{"field": "cursor", "message": "must be a next_cursor "
                                                   "value returned by GET /jobs"}])
    created_at, job_id = cursor.split("_", 1)
    return {"id": {"S": job_id}, "created_at": {"N": created_at}, "owner": {"S": owner}}


class JobQueries:
    def __init__(self, dynamodb: Any, table: str, clock: Callable[[], float], low_max_wait: float = 600.0):
        self._ddb = dynamodb
        self._table = table
        self._clock = clock
        self.low_max_wait = low_max_wait  # the lanes' take order (chalicelib/jobs/lanes.py)

    def list(self, owner: str, status: JobStatus | None = None, job_type: JobType | None = None,
             limit: int = 20, cursor: str | None = None) -> tuple[list[Job], str | None]:
        """The owner's jobs, newest first, ``limit`` at most, and the cursor for the next page."""
        names = {"#owner": "owner"}
        values: dict[str, Any] = {":owner": {"S": owner}}
        filters = _status_and_type(status, job_type, names, values)
        query: dict[str, Any] = {
            "TableName": self._table, "IndexName": OWNER_INDEX, "ScanIndexForward": False,
            "KeyConditionExpression": "#owner = :owner", "ExpressionAttributeNames": names,
            # A filtered page evaluates more items for the same matches: fewer round trips.
            "ExpressionAttributeValues": values, "Limit": max(limit, 25) * (4 if filters else 1),
        }
        if filters:
            query["FilterExpression"] = " AND ".join(filters)
        start = decode_cursor(cursor, owner) if cursor is not None else None
        jobs: list[Job] = []
        for _ in range(MAX_PAGES):
            if start:
                query["ExclusiveStartKey"] = start
            resp = self._ddb.query(**query)
            items = resp.get("Items", [])
            for n, item in enumerate(items):
                jobs.append(Job.from_item(decode_item(item)))
                if len(jobs) == limit:
                    more = n + 1 < len(items) or "LastEvaluatedKey" in resp
                    return jobs, encode_cursor(item) if more else None
            start = resp.get("LastEvaluatedKey")
            if not start:
                return jobs, None
        # The page bound was reached (a filter that matches little): resume from there.
        return jobs, encode_cursor(start)

    def list_all(self, status: JobStatus | None = None, job_type: JobType | None = None, limit: int = 20,
                 cursor: str | None = None, days: int = 30) -> tuple[list[Job], str | None]:
        """Every tenant's jobs, newest first (the operators' GET /jobs): the day index's
        partitions from today back ``days`` days (the records' lifetime), one Query each
        while pages come back empty, at most MAX_PAGES pages that hold items."""
        names = {"#day": "created_day"}
        values: dict[str, Any] = {}
        filters = _status_and_type(status, job_type, names, values)
        now = self._clock()
        start: dict[str, Any] | None = None
        day_at = now
        if cursor is not None:
            start = decode_cursor(cursor, "")
            start.pop("owner")
            day_at = float(start["created_at"]["N"])
            start["created_day"] = {"S": created_day(day_at)}
        jobs: list[Job] = []
        pages = 0
        while day_at > now - days * DAY and pages < MAX_PAGES:
            day = created_day(day_at)
            query: dict[str, Any] = {
                "TableName": self._table, "IndexName": DAY_INDEX, "ScanIndexForward": False,
                "KeyConditionExpression": "#day = :day", "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": {**values, ":day": {"S": day}},
                "Limit": max(limit, 25) * (4 if filters else 1),
            }
            if filters:
                query["FilterExpression"] = " AND ".join(filters)
            if start:
                query["ExclusiveStartKey"] = start
            resp = self._ddb.query(**query)
            items = resp.get("Items", [])
            pages += 1 if items or "LastEvaluatedKey" in resp else 0
            for n, item in enumerate(items):
                jobs.append(Job.from_item(decode_item(item)))
                if len(jobs) == limit:
                    return jobs, encode_cursor(item)
            start = resp.get("LastEvaluatedKey")
            if not start:  # this day is done: the one before it
                day_at = datetime_day_start(day_at) - 1e-6
        return jobs, encode_cursor(start) if start else None

    def queue_position(self, job: Job) -> Count:
        """Queued jobs ahead of ``job`` in the order workers take them: every job of a higher
        lane, then the jobs of its own lane submitted before it (a low job queued
        LOW_PRIORITY_MAX_WAIT is in the normal lane since then; chalicelib/jobs/lanes.py)."""
        if job.status is not JobStatus.QUEUED or job.outbox_at is None:
            return Count(0, False)
        now = self._clock()
        mine = take_key(job.priority, job.created_at, now, self.low_max_wait)
        entries, approximate = self.queued_entries()
        ahead = sum(1 for e in entries if e["id"] != job.id and take_key(
            e.get("priority"), float(e.get("created_at") or 0), now, self.low_max_wait) < mine)
        return Count(ahead, approximate)

    def queued_entries(self) -> tuple[list[dict[str, Any]], bool]:
        """The queued jobs' outbox entries (id, outbox_at, priority, created_at), from the
        index (every queued job is there); True when the read bound was hit (there may be more)."""
        query: dict[str, Any] = {
            "TableName": self._table, "IndexName": OUTBOX_INDEX, "KeyConditionExpression": "#k = :k",
            "FilterExpression": "#s = :s", "ProjectionExpression": "#id, #at, #p, #c",
            "ExpressionAttributeNames": {"#k": "outbox", "#s": "status", "#id": "id", "#at": "outbox_at",
                                         "#p": "priority", "#c": "created_at"},
            "ExpressionAttributeValues": {":k": {"S": DISPATCH}, ":s": {"S": JobStatus.QUEUED.value}},
        }
        out: list[dict[str, Any]] = []
        for _ in range(MAX_PAGES):
            resp = self._ddb.query(**query)
            out.extend(decode_item(item) for item in resp.get("Items", []))
            if "LastEvaluatedKey" not in resp:
                return out, False
            query["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        return out, True

    def in_flight(self, owner: str, up_to: int) -> int:
        """The owner's queued or running jobs, counted up to ``up_to`` (the cap)."""
        resp = self._ddb.query(TableName=self._table, IndexName=INFLIGHT_INDEX, Select="COUNT",
                               KeyConditionExpression="#o = :o", Limit=up_to,
                               ExpressionAttributeNames={"#o": "inflight_owner"},
                               ExpressionAttributeValues={":o": {"S": owner}})
        return int(resp.get("Count", 0))

    def in_dispatch(self, status: JobStatus) -> Count:
        """Queued or running jobs, from the outbox index (every job in flight is there)."""
        return self._count(OUTBOX_INDEX, "#k = :k", {"#k": "outbox"}, {":k": {"S": DISPATCH}}, status=status)

    def oldest_queued(self) -> str | None:
        """The id of the queued job longest due in the dispatch order, if any."""
        query: dict[str, Any] = {
            "TableName": self._table, "IndexName": OUTBOX_INDEX, "KeyConditionExpression": "#k = :k",
            "FilterExpression": "#s = :s", "ExpressionAttributeNames": {"#k": "outbox", "#s": "status"},
            "ExpressionAttributeValues": {":k": {"S": DISPATCH}, ":s": {"S": JobStatus.QUEUED.value}},
            "ScanIndexForward": True,
        }
        for _ in range(MAX_PAGES):
            resp = self._ddb.query(**query)
            if resp.get("Items"):
                return decode_item(resp["Items"][0])["id"]
            if "LastEvaluatedKey" not in resp:
                return None
            query["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        return None

    def _count(self, index: str, condition: str, names: dict[str, str], values: dict[str, Any],
               status: JobStatus) -> Count:
        query: dict[str, Any] = {
            "TableName": self._table, "IndexName": index, "Select": "COUNT",
            "KeyConditionExpression": condition, "FilterExpression": "#status = :status",
            "ExpressionAttributeNames": {**names, "#status": "status"},
            "ExpressionAttributeValues": {**values, ":status": {"S": status.value}},
        }
        total = 0
        for _ in range(MAX_PAGES):
            resp = self._ddb.query(**query)
            total += int(resp.get("Count", 0))
            if "LastEvaluatedKey" not in resp:
                return Count(total, False)
            query["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        return Count(total, True)


def datetime_day_start(at: float) -> float:
    """The start (UTC) of the day ``at`` falls in."""
    return at - at % DAY


def _status_and_type(status: JobStatus | None, job_type: JobType | None, names: dict[str, str],
                     values: dict[str, Any]) -> list[str]:
    """The listing's optional filters: their placeholders go into ``names``/``values``."""
    filters = []
    if status is not None:
        names["#status"], values[":status"] = "status", {"S": status.value}
        filters.append("#status = :status")
    if job_type is not None:
        names["#type"], values[":type"] = "type", {"S": job_type.value}
        filters.append("#type = :type")
    return filters
