"""A per-key bound on concurrent ``Prefer: wait`` holds, across every API process.

A hold keeps a Lambda busy for up to MAX_WAIT seconds: without a bound one key could
use the account's concurrency. Each hold is one conditional increment of a counter item
in the jobs table (``wait-holds#<owner>``, no job attributes, so no index sees it),
refused at the bound, and one decrement when the wait ends. A process that dies mid-hold
leaves its increment behind: a counter nobody touched for longer than any hold lasts is
reset by the next acquire, so a leak only ever costs a key its waits for that long."""

from __future__ import annotations

from typing import Any, Callable

from botocore.exceptions import ClientError

from chalicelib.api.waiting import MAX_WAIT
from chalicelib.platform.logs import get_logger

log = get_logger("c3.wait_holds")
STALE_AFTER = MAX_WAIT + 5  # seconds: longer than any hold


def _conditional_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class WaitHolds:
    def __init__(self, ddb: Any, table: str, bound: int, clock: Callable[[], float]):
        self._ddb = ddb
        self.table = table
        self.bound = bound
        self._clock = clock

    def _key(self, owner: str) -> dict[str, Any]:
        return {"id": {"S": f"wait-holds#{owner}"}}

    def acquire(self, owner: str) -> bool:
        """True when ``owner`` may hold one more request; False at the bound (0: unbounded)."""
        if self.bound <= 0:
            return True
        now = self._clock()
        values = {":one": {"N": "1"}, ":now": {"N": str(now)}, ":exp": {"N": str(int(now) + 3600)}}
        try:
            self._ddb.update_item(
                TableName=self.table, Key=self._key(owner),
                UpdateExpression="ADD holds :one SET touched = :now, expires_at = :exp",
                ConditionExpression="attribute_not_exists(holds) OR holds < :bound",
                ExpressionAttributeValues={**values, ":bound": {"N": str(self.bound)}})
            return True
        except ClientError as exc:
            if not _conditional_failure(exc):
                raise
        try:  # at the bound: only a counter left behind by dead holds is taken over
            self._ddb.update_item(
                TableName=self.table, Key=self._key(owner),
                UpdateExpression="SET holds = :one, touched = :now, expires_at = :exp",
                ConditionExpression="touched < :stale",
                ExpressionAttributeValues={**values, ":stale": {"N": str(now - STALE_AFTER)}})
            log.warning("wait_holds.reset", reason=f"no hold touched the counter for {STALE_AFTER} s: "
                                                   "holds of processes that died were left in it")
            return True
        except ClientError as exc:
            if not _conditional_failure(exc):
                raise
        return False

    def release(self, owner: str) -> None:
        if self.bound <= 0:
            return
        try:
            self._ddb.update_item(
                TableName=self.table, Key=self._key(owner),
                UpdateExpression="ADD holds :minus SET touched = :now",
                ConditionExpression="holds > :zero",
                ExpressionAttributeValues={":minus": {"N": "-1"}, ":zero": {"N": "0"},
                                           ":now": {"N": str(self._clock())}})
        except ClientError as exc:
            if not _conditional_failure(exc):
                raise
