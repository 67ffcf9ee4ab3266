"""Stopping instances: a worker's own, and any that nobody should be paying for any more.

The API's scheduled ``gpu_reaper`` handler (every minute, whether any worker runs or not:
``reap_gpus``) looks through the registry and claims, by a conditional write, records
busy, launching or stopping whose owner has been silent past GPU_OWNER_GRACE, idle ones
(whoever owns them: an idle instance is anyone's to adopt) past GPU_IDLE_TIMEOUT or past
GPU_REFRESH_AFTER, and any whose rental already expired. Only the winner of the claim
stops the instance, so two reapers (or a reaper and a worker) never both act on one record.
Workers use the same claim/finish to stop their own instances.

A claimed "launching" intent has no workload id: its worker died between the launch
call and recording the answer. The instance is found in the workloads list by the
``expires`` value the intent sent, among workloads no record knows. And every pass stops
any workload no record knows past GPU_UNKNOWN_GRACE (``stop_unknown``).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from chalicelib.fleet.books import FleetBooks, refund_of, rental_billed
from chalicelib.fleet.comput3 import Comput3Client, Comput3Error, WorkloadNotFound
from chalicelib.fleet.meter import meter_pass, meter_stopped, meter_unrecorded
from chalicelib.fleet.idle import Traffic, TrafficLog
from chalicelib.fleet.pool import Demand, demand_reader, idle_plans, read_demand
from chalicelib.fleet.registry import LAUNCHING, STOPPING, GpuRecord, GpuRegistry, RecordLost
from chalicelib.fleet.settings import FleetSettings
from chalicelib.platform.logs import EventLogger, get_logger

REAPER_ID = "gpu-reaper"


class SweepDeferred(Comput3Error):
    """A live launch shares the ``expires`` value: which workload is whose cannot be told yet."""


class Reaper:
    def __init__(self, client: Comput3Client, registry: GpuRegistry, settings: FleetSettings, worker_id: str,
                 clock: Callable[[], float], log: EventLogger,
                 live_ids: Callable[[], set[str]] = set, traffic: TrafficLog | None = None):
        self.client = client
        self.traffic = traffic  # the deployment's learned traffic (GPU_IDLE_POLICY=adaptive)
        self._planned: dict[str, float] = {}  # serial -> planned stop last logged
        self.registry = registry
        self.settings = settings
        self.worker_id = worker_id
        self.clock = clock
        self.log = log
        self.live_ids = live_ids  # records this worker is using right now (never reaped)
        self.books = FleetBooks(registry.dynamodb, registry.table, clock)

    # -- stopping one record ----------------------------------------------------
    def claim(self, record: GpuRecord, reason: str) -> GpuRecord | None:
        """Take responsibility for stopping ``record``; None if someone wrote to it first.
        An idle record is claimed only if it is still idle (no job took it meanwhile)."""
        try:
            return self.registry.update(record, require_idle=record.idle, state=STOPPING, owner=self.worker_id,
                                        heartbeat=self.clock(), busy=False, reason=reason)
        except RecordLost as exc:
            self.log.info("gpu.claim_lost", record=record.id, workload=record.workload, reason=str(exc))
            return None

    def finish(self, record: GpuRecord) -> bool:
        """Stop a record we claimed at Comput3, then delete it. On failure the record stays
        ``stopping`` under us and the next reap pass (ours or, once we are silent, anyone's)
        tries again."""
        unrecorded: list[str] = []
        refund = None
        try:
            if record.workload:
                try:
                    refund = refund_of(self.client.stop(record.workload))
                except WorkloadNotFound:
                    self.log.info("gpu.already_gone", workload=record.workload,
                                  reason="Comput3 no longer knows the workload (stopped or expired)")
            else:
                unrecorded = self.sweep(record.expires, exclude_id=record.id, since=record.created_at)
            deleted = self.registry.delete(record)
            now = self.clock()
            meter_stopped(deleted, now)
            if deleted.workload is not None:
                billed = rental_billed(deleted, now, refund)
                self._book(deleted.type, billed, billed - deleted.charged, workload=deleted.workload, refund=refund)
        except RecordLost as exc:
            self.log.info("gpu.stop_handed_over", record=record.id, reason=str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - keep the record; retried on the next pass
            self.log.warning("gpu.stop_failed", record=record.id, workload=record.workload, error=str(exc),
                             reason="record kept as 'stopping'; retried on the next reap pass")
            return False
        if record.workload is None:
            self.log.info("gpu.intent_resolved", record=record.id, unrecorded_stopped=unrecorded,
                          reason=record.reason)
            return True
        self.log.info("gpu.stopped", record=record.id, workload=record.workload, node=record.node,
                      rented_seconds=round(self.clock() - (record.launched_at or record.created_at), 1),
                      reason=record.reason)
        return True

    def _book(self, fleet: str, billed: float, idle: float, **meta: object) -> None:
        """Close an instance's rental in the fleet's books; a failure is logged (the metrics
        still carry it), never a reason to keep a stopped instance's record."""
        try:
            self.books.close(fleet, billed, idle, **meta)
        except Exception as exc:  # noqa: BLE001 - bookkeeping must not undo a stop
            self.log.error("gpu.books_failed", fleet=fleet, billed=round(billed, 3), idle=round(idle, 3),
                           reason=f"{type(exc).__name__}: {exc}; /health's idle figure misses this instance")

    def stop(self, record: GpuRecord, reason: str) -> bool:
        claimed = self.claim(record, reason)
        return claimed is not None and self.finish(claimed)

    # -- looking for orphans ------------------------------------------------------
    def reason_to_reap(self, record: GpuRecord, now: float) -> str | None:
        """Why a record nobody looks after must go (idle ones: the pool's ``idle_to_stop``)."""
        s = self.settings
        # An idle instance needs no live owner (any worker may adopt it): only the pool's
        # rules count. A job, a launch or a stop in progress needs its owner alive.
        if not record.idle and record.silent_for(now) > s.owner_grace:
            return (f"owner {record.owner} silent for {record.silent_for(now):.0f} s "
                    f"(GPU_OWNER_GRACE={s.owner_grace:g}) while {record.state}")
        if record.workload and record.expires <= now:
            return "its rental expired at Comput3"
        return None

    def reap_pass(self, demand: Demand | None = None) -> int:
        """One look through the registry; returns how many records were stopped."""
        stopped = 0
        now = self.clock()
        live = self.live_ids()
        records = self.registry.all()
        for_pool = {r.id: reason for r, reason in self.idle_decisions(records, demand, now)}
        for record in records:
            if record.owner == self.worker_id:
                if record.state == STOPPING:  # an earlier stop of ours failed
                    stopped += self.finish(record)
                    continue
                if record.id in live:
                    continue
                # Ours but no longer tracked (e.g. recording a launch failed): same rules.
            reason = self.reason_to_reap(record, now) or for_pool.get(record.id)
            if reason is None:
                continue
            self.log.warning("gpu.reaping", record=record.id, workload=record.workload, node=record.node,
                             previous_owner=record.owner, state=record.state, reason=reason,
                             idle_for=self._idle_for(record, now))
            stopped += self.stop(record, reason)
        meter_pass(self.registry, records, self.clock())  # the stopped ones fail its condition
        return stopped + self.stop_unknown()

    def stop_unknown(self) -> int:
        """Stop running workloads that no record knows, once past GPU_UNKNOWN_GRACE: a
        launch that answered after its caller gave up, a duplicate that showed up after the
        duplicate sweep, a launch whose answer could not be read. Their age is told by the
        ``expires`` every launch sends (now + GPU_LIFETIME); a workload sharing its expires
        with a launching intent is that intent's (its launch may answer any moment, and its
        reaping sweeps it). The Comput3 account is c3-render's alone."""
        try:
            workloads = self.client.workloads()
        except Comput3Error as exc:
            self.log.warning("gpu.workloads_unavailable", error=str(exc), reason="unknown workloads checked next pass")
            return 0
        records = self.registry.all()  # read after the listing: a launch recorded meanwhile is known
        now = self.clock()
        known = {r.workload for r in records if r.workload}
        pending = {r.expires for r in records if r.state == LAUNCHING}
        stopped = 0
        for w in workloads:
            if w.workload in known or (w.expires is not None and w.expires in pending):
                continue
            # No expires (the listing did not say): its age cannot be told, and nothing of ours launches without.
            launched = now if w.expires is None else w.expires - self.settings.lifetime
            if w.expires is not None and now - launched < self.settings.unknown_grace:
                continue
            try:
                self.client.stop(w.workload)
            except WorkloadNotFound:
                continue
            except Comput3Error as exc:
                self.log.warning("gpu.stop_failed", workload=w.workload, error=str(exc), reason="retried next pass")
                continue
            self.log.warning("gpu.unknown_stopped", workload=w.workload, node=w.node, expires=w.expires,
                             running_for=round(now - launched, 1),
                             reason=f"running at Comput3 but unknown to the registry past "
                                    f"GPU_UNKNOWN_GRACE={self.settings.unknown_grace:g} s")
            meter_unrecorded(w.workload, launched, now)
            stopped += 1
        return stopped

    def stop_idle(self, records: list[GpuRecord], demand: Demand | None) -> list[GpuRecord]:
        """The pool's scale-in over ``records``: returns the records stopped."""
        now = self.clock()
        stopped = []
        for record, reason in self.idle_decisions(records, demand, now):
            self.log.info("gpu.pool_stopping", record=record.id, workload=record.workload, node=record.node,
                          previous_owner=record.owner, idle_for=self._idle_for(record, now), reason=reason)
            if self.stop(record, reason):
                stopped.append(record)
        return stopped

    def learned_traffic(self) -> Traffic | None:
        """The traffic the adaptive policy decides from; None (the fixed bounds apply) under
        GPU_IDLE_POLICY=fixed or when it cannot be read."""
        if self.settings.idle_policy != "adaptive" or self.traffic is None:
            return None
        try:
            return self.traffic.read()
        except Exception as exc:  # noqa: BLE001 - keep to the fixed bounds this pass
            self.log.warning("gpu.traffic_unavailable", error=str(exc),
                             reason="learned traffic unreadable: idle instances keep their fixed bounds this pass")
            return None

    def idle_decisions(self, records: list[GpuRecord], demand: Demand | None,
                       now: float) -> list[tuple[GpuRecord, str]]:
        """The idle instances due to stop, each with its reason; logs each instance's planned
        stop (and its inputs) whenever the plan moves."""
        plans = idle_plans(records, demand, self.settings, now, self.learned_traffic())
        for plan in plans:
            r = plan.record
            if abs(self._planned.get(r.serial, -1e18) - plan.stop_at) >= 1.0:
                self._planned[r.serial] = plan.stop_at
                self.log.info("gpu.idle_plan", record=r.id, workload=r.workload, stop_at=round(plan.stop_at, 1),
                              stop_in=round(plan.stop_at - now, 1), inputs=plan.inputs,
                              reason=plan.reason(plan.stop_at))
        live = {p.record.serial for p in plans}
        for serial in [k for k in self._planned if k not in live]:
            del self._planned[serial]
        return [(p.record, p.reason(now)) for p in plans if now >= p.stop_at]

    @staticmethod
    def _idle_for(record: GpuRecord, now: float) -> float | None:
        return round(now - record.last_used, 1) if record.idle and record.last_used is not None else None

    def sweep(self, expires: int, exclude_id: str, since: float | None = None) -> list[str]:
        """Stop running workloads launched with ``expires`` that no record knows: the answer
        of a launch whose worker died before recording it, or a duplicate left by a launch
        attempt that timed out but went through. ``since``: when that launch began (its
        intent's creation), from which their billed seconds are counted."""
        workloads = self.client.workloads()
        records = self.registry.all()
        now = self.clock()
        known = {r.workload for r in records if r.workload}
        for r in records:
            if r.id != exclude_id and r.state == LAUNCHING and r.expires == expires \
                    and r.silent_for(now) <= self.settings.owner_grace:
                raise SweepDeferred(f"launch {r.id} of live worker {r.owner} uses the same expires {expires}; "
                                    "its workload cannot be told apart yet")
        stopped = []
        for w in workloads:
            if w.workload in known or w.expires != expires:
                continue
            try:
                self.client.stop(w.workload)
            except WorkloadNotFound:
                pass
            self.log.warning("gpu.unrecorded_stopped", workload=w.workload, node=w.node, expires=expires,
                             reason="running at Comput3 but never recorded: its launch outlived the launcher")
            if since is not None:  # no record ever metered it: bill it from the launch's intent
                meter_unrecorded(w.workload, since, self.clock())
                billed = max(0.0, self.clock() - since)
                self._book(w.type or "unknown", billed, billed, workload=w.workload, unrecorded=True)
            stopped.append(w.workload)
        return stopped



def reap_gpus(registry: GpuRegistry, settings: FleetSettings | None = None,
              clock: Callable[[], float] = time.time, queue: Any = None, beacons: Any = None,
              queries: Any = None, traffic: TrafficLog | None = None) -> dict[str, Any]:
    """One pass of the scheduled reaper (the API's ``gpu_reaper`` handler); the jobs
    ``queue`` (and worker ``beacons``) give the pool's demand (no queue: idle timeout only),
    ``traffic`` what GPU_IDLE_POLICY=adaptive learned (none: the fixed bounds)."""
    log = get_logger("c3.gpu_reaper", worker=REAPER_ID)
    if settings is None:
        settings = FleetSettings()
    if not settings.c3_api_key:
        log.warning("gpu.reaper_skipped", reason="C3_API_KEY is not set: no Comput3 account to reap")
        return {"stopped": 0, "skipped": "C3_API_KEY is not set"}
    reaper = Reaper(settings.client(), registry, settings, REAPER_ID, clock, log, traffic=traffic)
    now_demand = demand_reader(lambda: read_demand(queue, beacons, queries), log)() if queue is not None else None
    stopped = reaper.reap_pass(now_demand)
    log.info("gpu.reap_pass", stopped=stopped, demand=str(now_demand) if now_demand else None)
    return {"stopped": stopped}
