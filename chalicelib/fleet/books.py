"""The fleet's books: what each instance type was billed, and how much of it no job caused.

The rule (README, "What a job cost"): an instance is billed from its launch until it is
stopped (or its rental ends). Each job is charged its own work (from the instance being
handed to it until its task ended) plus, when it caused a launch (a cold start), the
launch's billed seconds until the node was ready. The worker adds each job's charge to the
instance's registry record (``charged``) when the job releases it. What is left when the
instance stops, ``billed - charged``, is idle time no job caused (warm spares, idle tails,
health checks between jobs, a job whose instance failed under it): added to the fleet's
books, one item in the GPU table (``id = books#fleets``, no ``state``, so outside the state
index) with three counters per instance type (``billed_seconds#<type>`` ...), and emitted as FleetIdleSeconds. When the stop's answer carries a
refund (``refund_seconds``: the unused part of the rental paid at launch), the billed
seconds are the rental less the refund, as the provider counts them.

So ``sum(job billed seconds) + idle = billed`` holds per fleet: /health reports the idle
seconds (and USD) per instance type, the closed books plus the running instances so far."""

from __future__ import annotations

from typing import Any, Callable

from chalicelib.fleet.registry import RUNNING, GpuRecord
from chalicelib.platform.dynamo import Expr, decode_item
from chalicelib.platform.metrics import METRICS, Metrics

BOOKS_ID = "books#fleets"
FIELDS = ("billed_seconds", "idle_seconds", "instances")


def rental_billed(record: GpuRecord, now: float, refund: float | None = None) -> float:
    """Seconds billed for a stopped instance's rental (0 for an instance never launched)."""
    if record.launched_at is None or record.workload is None:
        return 0.0
    if refund is not None:
        return max(0.0, record.expires - record.launched_at - refund)
    return max(0.0, min(now, record.expires) - record.launched_at)


def refund_of(answer: Any) -> float | None:
    """The refund figure of a stop's answer, in seconds, when it carries one."""
    value = answer.get("refund_seconds") if isinstance(answer, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None


def live_idle(record: GpuRecord, now: float) -> float:
    """Idle seconds so far of a running instance: its rental up to now (or, while a job
    runs on it, up to that job's start) less what jobs were charged."""
    if record.state != RUNNING or record.launched_at is None or record.workload is None:
        return 0.0
    until = (record.last_used or record.launched_at) if record.busy else now
    return max(0.0, until - record.launched_at - record.charged)


class FleetBooks:
    def __init__(self, dynamodb: Any, table: str, clock: Callable[[], float], metrics: Metrics = METRICS):
        self._ddb = dynamodb
        self._table = table
        self._clock = clock
        self.metrics = metrics

    def close(self, fleet: str, billed: float, idle: float, **meta: Any) -> None:
        """An instance's rental ended: add its billed and idle seconds to the fleet's books."""
        billed, idle = max(0.0, billed), min(max(0.0, idle), max(0.0, billed))
        expr = Expr()
        for n, (field, amount) in enumerate(zip(FIELDS, (billed, idle, 1))):
            attr = f"#f{n}"
            expr.names[attr] = f"{field}#{fleet}"
            expr.sets.append(f"{attr} = if_not_exists({attr}, {expr.value('zero', 0)}) + "
                             f"{expr.value(field, round(amount, 3))}")
        self._ddb.update_item(TableName=self._table, Key={"id": {"S": BOOKS_ID}}, **expr.kwargs())
        self.metrics.fleet_closed(fleet, billed, idle, **meta)

    def closed(self) -> dict[str, dict[str, float]]:
        """Per instance type: billed and idle seconds, and how many, of the stopped instances."""
        item = self._ddb.get_item(TableName=self._table, Key={"id": {"S": BOOKS_ID}}, ConsistentRead=True).get("Item")
        out: dict[str, dict[str, float]] = {}
        for attr, value in (decode_item(item) if item else {}).items():
            field, _, fleet = attr.partition("#")
            if field in FIELDS and fleet:
                out.setdefault(fleet, dict.fromkeys(FIELDS, 0.0))[field] = float(value)
        return out
