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

    def beat(self, worker_id: str, force: bool = False) -> bool:
        """Record a sign of life, at most every BEAT_EVERY seconds; True if written."""
        now = self._clock()
        if not force and now - self._last.get(worker_id, 0.0) < BEAT_EVERY:
            return False
        self._ddb.put_item(TableName=self._table, Item={
            "id": {"S": f"worker#{worker_id}"}, "state": {"S": STATE}, "worker": {"S": worker_id},
            "heartbeat": {"N": repr(now)}, "expires_at": {"N": str(int(now + 86400))}})
        self._last[worker_id] = now
        METRICS.heartbeat(worker_id)
        return True

    def gone(self, worker_id: str) -> None:
        self._ddb.delete_item(TableName=self._table, Key={"id": {"S": f"worker#{worker_id}"}})

    def alive(self, max_age: float = 3 * BEAT_EVERY) -> int:
        now = self._clock()
        query: dict[str, Any] = {"TableName": self._table, "IndexName": STATE_INDEX,
                                 "KeyConditionExpression": "#s = :s", "ExpressionAttributeNames": {"#s": "state"},
                                 "ExpressionAttributeValues": {":s": {"S": STATE}}}
        count = 0
        while True:
            resp = self._ddb.query(**query)
            count += sum(1 for item in resp.get("Items", [])
                         if now - float(decode_item(item).get("heartbeat", 0)) <= max_age)
            if "LastEvaluatedKey" not in resp:
                return count
            query["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
