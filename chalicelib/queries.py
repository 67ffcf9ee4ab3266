"""Reads over the jobs table's indexes: a key's jobs (GET /jobs), queue positions,
the per-key count of jobs in flight, and the counts /health reports.

Every read is a Query on an index with a bounded number of pages, never a scan."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Callable

from .errors import InvalidRequest
from .job import Job
from .models import JobStatus, JobType
from .store import DISPATCH, INFLIGHT_INDEX, OUTBOX_INDEX, OWNER_INDEX, decode_item, encode_item

MAX_PAGES = 10  # 1 MB each at most: the bound on what one request may read


@dataclass(frozen=True)
class Count:
    value: int
    approximate: bool  # the bound on pages was reached: at least ``value``


def encode_cursor(item: dict[str, Any]) -> str:
    raw = json.dumps({"id": item["id"], "created_at": item["created_at"]}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, owner: str) -> dict[str, Any]:
    """The index key to resume from. The owner is the caller's own, never the cursor's:
    a cursor cannot reach another key's jobs."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        key = {"id": str(data["id"]), "created_at": float(data["created_at"]), "owner": owner}
    except (ValueError, KeyError, TypeError):
        raise InvalidRequest("Malformed cursor", [{"field": "cursor", "message": "must be a next_cursor "
                                                   "value returned by GET /jobs"}]) from None
    return encode_item(key)


class JobQueries:
    def __init__(self, dynamodb: Any, table: str, clock: Callable[[], float]):
        self._ddb = dynamodb
        self._table = table
        self._clock = clock

    def list(self, owner: str, status: JobStatus | None = None, job_type: JobType | None = None,
             limit: int = 20, cursor: str | None = None) -> tuple[list[Job], str | None]:
        """The owner's jobs, newest first, ``limit`` at most, and the cursor for the next page."""
        names = {"#owner": "owner"}
        values: dict[str, Any] = {":owner": {"S": owner}}
        filters = []
        if status is not None:
            names["#status"], values[":status"] = "status", {"S": status.value}
            filters.append("#status = :status")
        if job_type is not None:
            names["#type"], values[":type"] = "type", {"S": job_type.value}
            filters.append("#type = :type")
        query: dict[str, Any] = {
            "TableName": self._table, "IndexName": OWNER_INDEX, "ScanIndexForward": False,
            "KeyConditionExpression": "#owner = :owner", "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values, "Limit": max(limit, 25),
        }
        if filters:
            query["FilterExpression"] = " AND ".join(filters)
        start = decode_cursor(cursor, owner) if cursor else None
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
                    return jobs, encode_cursor(decode_item(item)) if more else None
            start = resp.get("LastEvaluatedKey")
            if not start:
                return jobs, None
        # The page bound was reached (a filter that matches little): resume from there.
        return jobs, encode_cursor(decode_item(start))

    def queue_position(self, job: Job) -> Count:
        """Queued jobs ahead of ``job`` in the dispatch order of the outbox index."""
        if job.status is not JobStatus.QUEUED or job.outbox_at is None:
            return Count(0, False)
        return self._count(OUTBOX_INDEX, "#k = :k AND #at < :at", {"#k": "outbox", "#at": "outbox_at"},
                           {":k": {"S": DISPATCH}, ":at": {"N": repr(job.outbox_at)}},
                           status=JobStatus.QUEUED)

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
