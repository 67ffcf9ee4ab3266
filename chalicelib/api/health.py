"""``GET /health``: what the system is doing, from the queues' attributes and the
tables' indexes (no key needed: counts only, no job data)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from chalicelib.fleet.beacons import BEAT_EVERY, WorkerBeacons
from chalicelib.fleet.books import FleetBooks, live_idle, rental_billed
from chalicelib.fleet.registry import RUNNING, GpuRecord, GpuRegistry
from chalicelib.jobs.lanes import LaneQueues, total
from chalicelib.jobs.models import JobStatus
from chalicelib.jobs.queries import JobQueries
from chalicelib.jobs.store import JobStore
from chalicelib.platform.queue import Queue

ALIVE_SECONDS = 3 * BEAT_EVERY  # a worker silent longer is not counted alive


class HealthReport:
    def __init__(self, lanes: LaneQueues, dlq: Queue, store: JobStore, queries: JobQueries,
                 registry: GpuRegistry, beacons: WorkerBeacons, clock: Callable[[], float],
                 price: Callable[[str], float | None] = lambda _: None):
        self.lanes = lanes
        self.dlq = dlq
        self.store = store
        self.queries = queries
        self.registry = registry
        self.beacons = beacons
        self.clock = clock
        self.price = price
        self.books = FleetBooks(registry.dynamodb, registry.table, clock)

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        lanes = self.lanes.depths()  # each priority lane's queue; the totals sum them
        queue = total(lanes.values())
        queued = self.queries.in_dispatch(JobStatus.QUEUED)
        running = self.queries.in_dispatch(JobStatus.RUNNING)
        oldest_id = self.queries.oldest_queued()
        oldest = self.store.get(oldest_id) if oldest_id else None
        gpus = self.registry.all()
        workers = self.beacons.list()
        states = Counter(g.state for g in gpus)
        idle = [g for g in gpus if g.idle]
        return {
            "status": "ok",
            "queue": {**queue, "dead_letters": self.dlq.depth()["messages"],
                      "oldest_queued_seconds": round(now - oldest.created_at, 1) if oldest else None,
                      "lanes": lanes},
            "jobs": {"queued": queued.value, "running": running.value,
                     "approximate": queued.approximate or running.approximate},
            "workers": {"alive": sum(1 for w in workers if w["last_beat_seconds"] <= ALIVE_SECONDS),
                        # Each worker: its id, the job it runs, seconds since its last beat.
                        "list": workers},
            "gpus": {"instances": len(gpus), "by_state": dict(states),
                     "busy": sum(1 for g in gpus if g.state == RUNNING and g.busy), "idle": len(idle),
                     "idle_seconds": [_idle(g, now) for g in idle],
                     # Rented now, seconds since each launch (what Comput3 bills for), per instance.
                     "billed_seconds": round(sum(_rented(g, now) for g in gpus), 1),
                     "fleet": [{"slot": g.id, "state": g.state, "busy": g.busy, "ahead": g.ahead,
                                "billed_seconds": round(_rented(g, now), 1),
                                "idle_seconds": _idle(g, now) if g.idle else None}
                               for g in sorted(gpus, key=lambda g: g.id)],
                     "fleets": self._fleets(gpus, now)},
        }

    def _fleets(self, gpus: list[GpuRecord], now: float) -> dict[str, Any]:
        """Per instance type, since the books began: seconds billed (stopped instances, and the
        running ones so far), the part no job was charged (idle), and its price."""
        fleets = {name: {"billed_seconds": book["billed_seconds"], "idle_seconds": book["idle_seconds"],
                         "stopped": int(book["instances"]), "running": 0}
                  for name, book in self.books.closed().items()}
        for g in gpus:
            if g.state == RUNNING and g.launched_at and g.workload:
                fleet = fleets.setdefault(g.type, {"billed_seconds": 0.0, "idle_seconds": 0.0, "stopped": 0,
                                                   "running": 0})
                fleet["running"] += 1
                fleet["billed_seconds"] += rental_billed(g, now)
                fleet["idle_seconds"] += live_idle(g, now)
        for name, fleet in fleets.items():
            fleet["billed_seconds"] = round(fleet["billed_seconds"], 3)
            fleet["idle_seconds"] = round(fleet["idle_seconds"], 3)
            price = self.price(name)
            fleet["idle_usd"] = None if price is None else round(fleet["idle_seconds"] * price / 3600, 6)
        return fleets


def _rented(record: GpuRecord, now: float) -> float:
    return max(0.0, now - record.launched_at) if record.launched_at and record.workload else 0.0


def _idle(record: GpuRecord, now: float) -> float:
    return round(now - (record.last_used or record.launched_at or now), 1)
