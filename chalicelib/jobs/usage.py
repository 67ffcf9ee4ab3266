"""Per key usage (``GET /usage?from&to``): jobs, GPU seconds and USD by day and job type.

Written when a job finishes, on the durable notify path every final job takes
(chalicelib/delivery/deliveries.py, right after JobsFinished counts it, at most once): one item per key
and UTC day in the jobs table (``id = usage#<owner>#<YYYY-MM-DD>``) with four counters per
job type (``jobs#csm``, ``gpu_seconds#csm``, ``billed_gpu_seconds#csm``, ``usd#csm``),
added to atomically. The items carry none of the indexes' keys, so no job listing sees them;
a read is one BatchGetItem per 100 days of the range, never a scan. They expire (TTL) after
USAGE_RETENTION_DAYS."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable

from botocore.exceptions import ClientError

from chalicelib.jobs.record import Job
from chalicelib.platform.dynamo import Expr, decode_item
from chalicelib.platform.errors import InvalidRequest

USAGE_PREFIX = "usage#"
COUNTERS = ("jobs", "gpu_seconds", "billed_gpu_seconds", "usd")
MAX_DAYS = 366  # per answer
DEFAULT_DAYS = 30
USAGE_RETENTION_DAYS = 400
BATCH = 100  # BatchGetItem's limit


def day_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).date().isoformat()


class UsageBook:
    def __init__(self, dynamodb: Any, table: str, clock: Callable[[], float]):
        self._ddb = dynamodb
        self._table = table
        self._clock = clock

    def record(self, job: Job) -> None:
        """Add a finished job to its key's day."""
        cost = job.cost_view()
        self._add(job, {"jobs": 1, "gpu_seconds": cost["gpu_seconds"], "billed_gpu_seconds": cost["billed_gpu_seconds"],
                        "usd": cost["usd"] or 0.0})

    def record_late_use(self, job: Job, use: dict[str, Any]) -> None:
        """GPU use added to a job already counted (its client cancelled it while a worker
        still ran it): its seconds join the job's day, the job is not counted again."""
        self._add(job, {"jobs": 0, "gpu_seconds": use["gpu_seconds"],
                        "billed_gpu_seconds": use["gpu_seconds"] + use["launch_seconds"], "usd": use.get("usd") or 0.0})

    def _add(self, job: Job, amounts: dict[str, float]) -> None:
        finished = job.finished_at or self._clock()
        expr = Expr()
        for n, field in enumerate(COUNTERS):
            attr = f"#c{n}"
            expr.names[attr] = f"{field}#{job.type.value}"
            expr.sets.append(f"{attr} = if_not_exists({attr}, {expr.value('zero', 0)}) + "
                             f"{expr.value(field, round(amounts[field], 6))}")
        expr.set("expires_at", int(finished + USAGE_RETENTION_DAYS * 86400))
        self._ddb.update_item(TableName=self._table,
                              Key={"id": {"S": f"{USAGE_PREFIX}{job.owner}#{day_of(finished)}"}}, **expr.kwargs())

    def report(self, owner: str, query: dict[str, str]) -> dict[str, Any]:
        """``owner``'s usage from ``from`` to ``to`` (UTC days, inclusive)."""
        unknown = sorted(set(query) - {"from", "to"})
        if unknown:
            raise InvalidRequest("Unknown query parameter", [{"field": unknown[0], "message":
                                 "is not a parameter of GET /usage (from, to)"}])
        last = _day_param(query, "to") or datetime.fromtimestamp(self._clock(), tz=timezone.utc).date()
        first = _day_param(query, "from") or _shift(last, -(DEFAULT_DAYS - 1))
        # One answer covers MAX_DAYS at most; ``next_from`` continues a longer range.
        end = min(last, _shift(first, MAX_DAYS - 1))
        days = [(first + timedelta(days=n)).isoformat() for n in range((end - first).days + 1)]
        items = self._get([f"{USAGE_PREFIX}{owner}#{day}" for day in days])
        lines = []
        for day in days:
            item = items.get(f"{USAGE_PREFIX}{owner}#{day}", {})
            types = sorted({attr.split("#", 1)[1] for attr in item if attr.startswith("jobs#")})
            for job_type in types:
                line: dict[str, Any] = {"day": day, "type": job_type}
                for field in COUNTERS:
                    value = item.get(f"{field}#{job_type}", 0)
                    line[field] = int(value) if field == "jobs" else round(float(value), 6 if field == "usd" else 3)
                lines.append(line)
        total = {field: sum(line[field] for line in lines) for field in COUNTERS}
        total = {k: (v if k == "jobs" else round(v, 6 if k == "usd" else 3)) for k, v in total.items()}
        answer = {"from": first.isoformat(), "to": last.isoformat(), "usage": lines, "total": total}
        if end < last:
            answer["next_from"] = (end + timedelta(days=1)).isoformat()
        return answer

    def _get(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), BATCH):
            request = {self._table: {"Keys": [{"id": {"S": i}} for i in ids[start:start + BATCH]],
                                     "ConsistentRead": True}}
            for _ in range(10):  # unprocessed keys (throttling) are asked for again
                resp = self._ddb.batch_get_item(RequestItems=request)
                for item in resp.get("Responses", {}).get(self._table, []):
                    data = decode_item(item)
                    found[data["id"]] = data
                request = resp.get("UnprocessedKeys") or {}
                if not request:
                    break
            if request:
                raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException",
                                             "Message": "the usage items stayed unprocessed"}}, "BatchGetItem")
        return found


def _shift(day: date, days: int) -> date:
    try:
        return day + timedelta(days=days)
    except OverflowError:
        return date.max if days > 0 else date.min


def _day_param(query: dict[str, str], name: str) -> date | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        if len(value) != 10:
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"Invalid {name}", [{"field": name, "message": "must be a day as YYYY-MM-DD"}]) from None
