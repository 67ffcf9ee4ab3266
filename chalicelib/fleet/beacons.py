"""Worker beacons: each worker says it is alive, so /health can count live workers.

A beacon is one item in the GPU table (``id = worker#<worker id>``, ``state = worker``),
so it is found through the table's state index and never scanned for; the GPU
registry only ever reads its own states. TTL removes beacons of workers long gone."""

from __future__ import annotations

from typing import Any, Callable

from chalicelib.fleet.registry import STATE_INDEX
from chalicelib.platform.dynamo import decode_item
from chalicelib.platform.metrics import METRICS

STATE = "worker"
BEAT_EVERY = 15.0  # seconds between beacons; /health counts a worker alive for 3 of these


class WorkerBeacons:
    def __init__(self, dynamodb: Any, table: str, clock: Callable[[], float]):
        self._ddb = dynamodb
        self._table = table
        self._clock = clock
        self._last: dict[str, float] = {}
        self._job: dict[str, str | None] = {}

    def beat(self, worker_id: str, force: bool = False, job: str | None = None) -> bool:
        """Record a sign of life and the job the worker runs (if any), at most every
        BEAT_EVERY seconds unless that job changed; True if written."""
        now = self._clock()
        changed = worker_id in self._last and self._job.get(worker_id) != job
        if not force and not changed and now - self._last.get(worker_id, 0.0) < BEAT_EVERY:
            return False
        item = {"id": {"S": f"worker#{worker_id}"}, "state": {"S": STATE}, "worker": {"S": worker_id},
                "heartbeat": {"N": repr(now)}, "expires_at": {"N": str(int(now + 86400))}}
        if job:
            item["job"] = {"S": job}
        self._ddb.put_item(TableName=self._table, Item=item)
        self._last[worker_id] = now
        self._job[worker_id] = job
        METRICS.heartbeat(worker_id)
        return True

    def gone(self, worker_id: str) -> None:
        self._ddb.delete_item(TableName=self._table, Key={"id": {"S": f"worker#{worker_id}"}})

    def alive(self, max_age: float = 3 * BEAT_EVERY) -> int:
        return sum(1 for w in self.list() if w["last_beat_seconds"] <= max_age)

    def list(self) -> list[dict[str, Any]]:
        """Every beacon (the state index, never a scan), newest beat first: the worker's id,
        the job it runs (None between jobs) and seconds since its last beat."""
        now = self._clock()
        query: dict[str, Any] = {"TableName": self._table, "IndexName": STATE_INDEX,
                                 "KeyConditionExpression": "#s = :s", "ExpressionAttributeNames": {"#s": "state"},
                                 "ExpressionAttributeValues": {":s": {"S": STATE}}}
        out = []
        while True:
            resp = self._ddb.query(**query)
            for item in resp.get("Items", []):
                beacon = decode_item(item)
                out.append({"id": beacon.get("worker"), "job": beacon.get("job"),
                            "last_beat_seconds": round(max(0.0, now - float(beacon.get("heartbeat", 0))), 1)})
            if "LastEvaluatedKey" not in resp:
                return sorted(out, key=lambda w: w["last_beat_seconds"])
            query["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
