"""``GET /health``: what the system is doing, from the queues' attributes and the
tables' indexes (no key needed: counts only, no job data)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from chalicelib.fleet.beacons import BEAT_EVERY, WorkerBeacons
from chalicelib.fleet.registry import RUNNING, GpuRecord, GpuRegistry
from chalicelib.jobs.lanes import LaneQueues, total
from chalicelib.jobs.models import JobStatus
from chalicelib.jobs.queries import JobQueries
from chalicelib.jobs.store import JobStore
from chalicelib.platform.queue import Queue

ALIVE_SECONDS = 3 * BEAT_EVERY  # a worker silent longer is not counted alive


class HealthReport:
    def __init__(self, lanes: LaneQueues, dlq: Queue, store: JobStore, queries: JobQueries,
                 registry: GpuRegistry, beacons: WorkerBeacons, clock: Callable[[], float]):
        self.lanes = lanes
        self.dlq = dlq
        self.store = store
        self.queries = queries
        self.registry = registry
        self.beacons = beacons
        self.clock = clock

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
                               for g in sorted(gpus, key=lambda g: g.id)]},
        }


def _rented(record: GpuRecord, now: float) -> float:
    return max(0.0, now - record.launched_at) if record.launched_at and record.workload else 0.0


def _idle(record: GpuRecord, now: float) -> float:
    return round(now - (record.last_used or record.launched_at or now), 1)
