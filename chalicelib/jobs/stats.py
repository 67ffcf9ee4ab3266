"""Per-minute counters for the operators' plots (GET /stats), in a table of their own.

Written where the facts are already known, never by scanning: a final job's outcome, queue
wait and run time when it is counted (JobStore.count_finished, once per job), and the GPU
instances rented and busy by the scheduled reaper once a minute. One item per UTC minute
(``id`` = ``YYYY-MM-DDTHH:MM``), updated with atomic ADDs; the last hour is one
BatchGetItem of 60 keys. Queue wait and run time are kept as histograms over fixed bucket
bounds, so their p50/p95 come from the counts (the upper bound of the bucket the rank falls
in, interpolated within it). Items expire after two days (TTL ``expires_at``)."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from chalicelib.jobs.record import Job
from chalicelib.platform.logs import get_logger

log = get_logger("c3.stats")

# Bucket upper bounds in seconds (the last bucket is everything above 3600).
BOUNDS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600, math.inf)
OUTCOMES = ("success", "failed", "cancelled", "timed_out")
HISTOGRAMS = {"queue_wait": "qw", "run_time": "rt"}
MINUTES = 60
KEEP_SECONDS = 2 * 86400
# What operators look into (GET /incidents): dead-lettered jobs and intake messages refused,
# kept on the minute's item, at most this many of each kind a minute (the rest only counted).
INCIDENTS = ("dead_letters", "intake_rejections")
MAX_INCIDENTS = 20
_serialize = TypeSerializer().serialize
_deserialize = TypeDeserializer().deserialize


def minute_id(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M")


def bucket(seconds: float) -> int:
    return next(n for n, bound in enumerate(BOUNDS) if seconds <= bound)


def percentile(counts: list[int], q: float) -> float | None:
    """The ``q`` quantile (0-1) of a histogram over BOUNDS, interpolated within its bucket
    (the last, open bucket answers its lower bound)."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for n, count in enumerate(counts):
        if count and seen + count >= rank:
            low = BOUNDS[n - 1] if n else 0.0
            high = BOUNDS[n]
            if math.isinf(high):
                return float(low)
            return low + (high - low) * max(0.0, rank - seen) / count
        seen += count
    return float(BOUNDS[-2])


class Stats:
    def __init__(self, dynamodb: Any, table: str, clock: Callable[[], float]):
        self._ddb = dynamodb
        self._table = table
        self._clock = clock

    def _add(self, at: float, counters: dict[str, float], sets: dict[str, float] | None = None) -> None:
        names: dict[str, str] = {"#exp": "expires_at", "#t": "t"}
        values: dict[str, Any] = {":exp": {"N": str(int(at) + KEEP_SECONDS)}, ":t": {"N": str(int(at // 60 * 60))}}
        adds = []
        for n, (name, amount) in enumerate(counters.items()):
            names[f"#a{n}"], values[f":a{n}"] = name, {"N": repr(round(float(amount), 3))}
            adds.append(f"#a{n} :a{n}")
        assigns = ["#exp = :exp", "#t = :t"]
        for n, (name, value) in enumerate((sets or {}).items()):
            names[f"#s{n}"], values[f":s{n}"] = name, {"N": repr(round(float(value), 3))}
            assigns.append(f"#s{n} = :s{n}")
        expression = "SET " + ", ".join(assigns) + (" ADD " + ", ".join(adds) if adds else "")
        self._ddb.update_item(TableName=self._table, Key={"id": {"S": minute_id(at)}}, UpdateExpression=expression,
                              ExpressionAttributeNames=names, ExpressionAttributeValues=values)

    def job_finished(self, job: Job) -> None:
        """A final job, in the minute it finished: its outcome, and (for a job that ran)
        its queue wait and run time in their histograms."""
        end = job.finished_at or job.updated_at or self._clock()
        counters: dict[str, float] = {f"finished_{job.status.value}": 1}
        started = job.first_started_at
        if started is not None:
            counters[f"qw_{bucket(max(0.0, started - job.created_at))}"] = 1
            counters[f"rt_{bucket(max(0.0, end - started))}"] = 1
        self._add(end, counters)

    def incident(self, kind: str, entry: dict[str, Any]) -> None:
        """Keep one dead letter or intake rejection (``entry``: strings and whole numbers)
        on this minute's item; past MAX_INCIDENTS a minute it is only counted."""
        assert kind in INCIDENTS
        now = self._clock()
        entry = {"at": datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), **entry}
        key = {"id": {"S": minute_id(now)}}
        try:
            self._ddb.update_item(
                TableName=self._table, Key=key,
                UpdateExpression="SET #l = list_append(if_not_exists(#l, :empty), :e), #exp = :exp, #t = :t ADD #n :one",
                ConditionExpression="attribute_not_exists(#n) OR #n < :max",
                ExpressionAttributeNames={"#l": kind, "#n": f"{kind}_count", "#exp": "expires_at", "#t": "t"},
                ExpressionAttributeValues={":empty": {"L": []}, ":e": {"L": [_serialize(entry)]}, ":one": {"N": "1"},
                                           ":max": {"N": str(MAX_INCIDENTS)},
                                           ":exp": {"N": str(int(now) + KEEP_SECONDS)},
                                           ":t": {"N": str(int(now // 60 * 60))}})
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            self._add(now, {f"{kind}_count": 1})  # this minute's list is full: counted only

    def incidents(self) -> dict[str, Any]:
        """The last hour's dead letters and intake rejections, newest first, with counts
        (which go on past what is kept)."""
        _, items = self._read_hour()
        out: dict[str, Any] = {}
        for kind in INCIDENTS:
            entries = [_deserialize(value) for item in items.values() for value in item.get(kind, {}).get("L", [])]
            entries.sort(key=lambda e: e.get("at", ""), reverse=True)
            count = sum(int(float(item.get(f"{kind}_count", {}).get("N", 0))) for item in items.values())
            out[kind] = {"count": count, "items": [_plain(e) for e in entries]}
        return out

    def gpu_sample(self, rented: int, busy: int, seconds: float = 60.0) -> None:
        """The GPU instances rented (billed) and busy now, as seconds over this minute: the
        scheduled reaper's sample, once a minute (a repeat in the same minute overwrites)."""
        self._add(self._clock(), {}, {"gpu_billed_seconds": rented * seconds, "gpu_busy_seconds": busy * seconds})

    def _read_hour(self) -> tuple[list[int], dict[str, dict[str, Any]]]:
        """The last 60 minutes' starts (oldest first) and their items as stored, by id."""
        now = self._clock()
        starts = [int(now // 60 * 60) - 60 * n for n in range(MINUTES - 1, -1, -1)]
        items: dict[str, dict[str, Any]] = {}
        keys: list[dict[str, Any]] = [{"id": {"S": minute_id(t)}} for t in starts]
        for _ in range(5):  # BatchGetItem may leave keys unprocessed under load: ask again
            if not keys:
                break
            resp = self._ddb.batch_get_item(RequestItems={self._table: {"Keys": keys}})
            for item in resp.get("Responses", {}).get(self._table, []):
                items[item["id"]["S"]] = item
            keys = resp.get("UnprocessedKeys", {}).get(self._table, {}).get("Keys", [])
        return starts, items

    def last_hour(self) -> dict[str, Any]:
        """The last 60 minutes, oldest first, and the hour's totals and percentiles."""
        starts, raw = self._read_hour()
        ids = [minute_id(t) for t in starts]
        items = {i: {k: float(v["N"]) for k, v in item.items() if "N" in v} for i, item in raw.items()}
        minutes = []
        totals = {name: [0] * len(BOUNDS) for name in HISTOGRAMS}
        for start, minute in zip(starts, ids):
            item = items.get(minute, {})
            row: dict[str, Any] = {"t": datetime.fromtimestamp(start, timezone.utc).strftime("%Y-%m-%dT%H:%M:00Z"),
                                   "finished": {o: int(item.get(f"finished_{o}", 0)) for o in OUTCOMES}}
            for name, prefix in HISTOGRAMS.items():
                counts = [int(item.get(f"{prefix}_{n}", 0)) for n in range(len(BOUNDS))]
                totals[name] = [a + b for a, b in zip(totals[name], counts)]
                row[name] = {"p50": _round(percentile(counts, 0.5)), "p95": _round(percentile(counts, 0.95))}
            row["gpu"] = {"billed_seconds": item.get("gpu_billed_seconds", 0.0),
                          "busy_seconds": item.get("gpu_busy_seconds", 0.0)}
            minutes.append(row)
        hour = {
            "finished": {o: sum(m["finished"][o] for m in minutes) for o in OUTCOMES},
            **{name: {"p50": _round(percentile(counts, 0.5)), "p95": _round(percentile(counts, 0.95))}
               for name, counts in totals.items()},
            "gpu": {k: round(sum(m["gpu"][k] for m in minutes), 3) for k in ("billed_seconds", "busy_seconds")},
        }
        return {"minutes": minutes, "hour": hour}


def _plain(value: Any) -> Any:
    """DynamoDB's Decimals as ints (entries hold whole numbers only)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "as_integer_ratio") and not isinstance(value, (int, float)):
        return int(value)
    return value


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def record_quietly(write: Callable[[], None], what: str, job_id: str | None = None) -> None:
    """A stats write that fails is logged and dropped: it must never fail the delivery or
    the reaper pass it rides on (the plots miss one point; nothing else depends on them)."""
    try:
        write()
    except Exception as exc:  # noqa: BLE001 - any failure here is only a missed point
        log.warning("stats.write_failed", what=what, job_id=job_id, reason=f"{type(exc).__name__}: {exc}")


def busy_count(gpus: Iterable[Any]) -> int:
    return sum(1 for g in gpus if getattr(g, "busy", False))
