"""``GET /health``: what the system is doing, from the queues' attributes and the
tables' indexes (with a key; without one the route answers liveness only). A snapshot
is reused for ``cache_seconds``, so callers cannot multiply the index reads."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Callable

from chalicelib.fleet.beacons import BEAT_EVERY, WorkerBeacons
from chalicelib.fleet.books import FleetBooks, live_idle, rental_billed
from chalicelib.fleet.idle import Traffic, TrafficLog
from chalicelib.fleet.pool import Demand, IdlePlan, idle_plans
from chalicelib.fleet.registry import RUNNING, GpuRecord, GpuRegistry
from chalicelib.fleet.settings import FleetSettings
from chalicelib.jobs.lanes import LaneQueues, total
from chalicelib.jobs.models import JobStatus
from chalicelib.jobs.queries import JobQueries
from chalicelib.jobs.store import JobStore
from chalicelib.platform.queue import Queue

ALIVE_SECONDS = 3 * BEAT_EVERY  # a worker silent longer is not counted alive


class HealthReport:
    def __init__(self, lanes: LaneQueues, dlq: Queue, store: JobStore, queries: JobQueries,
                 registry: GpuRegistry, beacons: WorkerBeacons, clock: Callable[[], float],
                 cache_seconds: float = 0.0, fleet: FleetSettings | None = None,
                 traffic: TrafficLog | None = None, price: Callable[[str], float | None] = lambda _: None):
        self.fleet = fleet  # the idle policy's settings: each idle instance's planned stop
        self.traffic = traffic
        self.lanes = lanes
        self.dlq = dlq
        self.store = store
        self.queries = queries
        self.registry = registry
        self.beacons = beacons
        self.clock = clock
        self.price = price
        self.books = FleetBooks(registry.dynamodb, registry.table, clock)
        self.cache_seconds = cache_seconds
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            now = self.clock()
            if self._cached is None or now - self._cached[0] >= self.cache_seconds or now < self._cached[0]:
                self._cached = (now, self._compute(now))
            return self._cached[1]

    def _compute(self, now: float) -> dict[str, Any]:
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
        alive = sum(1 for w in workers if w["last_beat_seconds"] <= ALIVE_SECONDS)
        policy, plans = self._idle_policy(gpus, Demand(queued=min(queue["messages"], queued.value),
                                                       running=queue["in_flight"], workers=alive), now)
        return {
            "status": "ok",
            "queue": {**queue, "dead_letters": self.dlq.depth()["messages"],
                      "oldest_queued_seconds": round(now - oldest.created_at, 1) if oldest else None,
                      "lanes": lanes},
            "jobs": {"queued": queued.value, "running": running.value,
                     "approximate": queued.approximate or running.approximate},
            "workers": {"alive": alive,
                        # Each worker: its id, the job it runs, seconds since its last beat.
                        "list": workers},
            "gpus": {"instances": len(gpus), "by_state": dict(states),
                     "busy": sum(1 for g in gpus if g.state == RUNNING and g.busy), "idle": len(idle),
                     "idle_seconds": [_idle(g, now) for g in idle],
                     # Rented now, seconds since each launch (what Comput3 bills for), per instance.
                     "billed_seconds": round(sum(_rented(g, now) for g in gpus), 1),
                     "idle_policy": policy,
                     "fleet": [{"slot": g.id, "state": g.state, "busy": g.busy, "ahead": g.ahead,
                                "billed_seconds": round(_rented(g, now), 1),
                                "idle_seconds": _idle(g, now) if g.idle else None,
                                **_planned_stop(plans.get(g.id), now)}
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

    def _idle_policy(self, gpus: list[GpuRecord], demand: Demand,
                     now: float) -> tuple[dict[str, Any] | None, dict[str, IdlePlan]]:
        """The idle policy in force and each idle instance's plan (decided as the pool decides)."""
        s = self.fleet
        if s is None:
            return None, {}
        policy: dict[str, Any] = {"policy": s.idle_policy, "idle_timeout": s.idle_timeout,
                                  "surplus_idle": s.surplus_idle, "warm_spares": s.warm_spares}
        traffic: Traffic | None = None
        if s.idle_policy == "adaptive":
            policy.update(wait_price=s.wait_price, floor=s.idle_floor)
            try:
                traffic = self.traffic.read() if self.traffic is not None else None
            except Exception as exc:  # noqa: BLE001 - shown, and the pool falls back to its bounds too
                policy["traffic_error"] = str(exc)
            if traffic is not None:
                policy.update(arrivals_learned=len(traffic.arrivals), launch_boot_seconds=round(traffic.boot_seconds, 2),
                              last_arrival_seconds_ago=round(now - traffic.arrivals[-1], 1) if traffic.arrivals else None)
        return policy, {p.record.id: p for p in idle_plans(gpus, demand, s, now, traffic)}


def _planned_stop(plan: IdlePlan | None, now: float) -> dict[str, Any]:
    """An idle instance's planned stop: when, in how long, and why."""
    if plan is None:
        return {}
    return {"stop_at": round(plan.stop_at, 1), "stop_in_seconds": round(max(0.0, plan.stop_at - now), 1),
            "stop_reason": plan.reason(max(now, plan.stop_at)), "stop_inputs": plan.inputs}


def _rented(record: GpuRecord, now: float) -> float:
    return max(0.0, now - record.launched_at) if record.launched_at and record.workload else 0.0


def _idle(record: GpuRecord, now: float) -> float:
    return round(now - (record.last_used or record.launched_at or now), 1)
