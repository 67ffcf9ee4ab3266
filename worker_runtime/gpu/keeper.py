"""The pool keeper: this worker's share of the elastic GPU pool (chalicelib/fleet/pool.py).

Every tick, and at once when a job asks for an instance (``nudge``), it stops idle
instances the pool no longer needs (scale-in, through the reaper's conditional stop) and
launches instances ahead of the queue into free slots (scale-out): each launch records its
intent first, then boots, then is left idle for whichever job comes first."""

from __future__ import annotations

import threading
from typing import Callable

from chalicelib.fleet.comput3 import Comput3Client, Comput3Error, Launch
from chalicelib.fleet.pool import Demand, slots_to_launch
from chalicelib.fleet.reaper import Reaper
from chalicelib.fleet.registry import LAUNCHING, RUNNING, GpuRecord, GpuRegistry, RecordLost, SlotTaken
from chalicelib.platform.logs import EventLogger
from chalicelib.platform.metrics import METRICS

from .holdings import Holdings
from .launches import Launches
from .settings import GpuSettings
from .threads import safely, start_daemon


class PoolKeeper:
    def __init__(self, settings: GpuSettings, client: Comput3Client, registry: GpuRegistry, reaper: Reaper,
                 held: Holdings, launches: Launches, demand: Callable[[], Demand | None], worker_id: str,
                 clock: Callable[[], float], closed: threading.Event, log: EventLogger):
        self.settings = settings
        self.client = client
        self.registry = registry
        self.reaper = reaper
        self.held = held
        self.launches = launches
        self.demand = demand
        self.worker_id = worker_id
        self.clock = clock
        self.closed = closed
        self.log = log
        self.nudge = threading.Event()  # wakes the keeper: a job wants an instance

    def run(self) -> None:
        """Stopping may take long (a slow Comput3); heartbeats have their own thread."""
        s = self.settings
        tick = max(0.05, min(2.0, s.surplus_idle / 4, s.idle_timeout / 4))
        while not self.closed.is_set():
            self.nudge.wait(tick)
            self.nudge.clear()
            if self.closed.is_set():
                return
            safely(self.pool_pass, "pool pass", self.log)

    def pool_pass(self) -> None:
        demand = self.demand()
        records = self.registry.all()
        stopped = self.reaper.stop_idle(records, demand)
        if stopped:
            self.held.forget_stopped(stopped)
        if demand is not None:
            self._scale_out([r for r in records if r not in stopped], demand)

    def booting_for_pool(self, records: list[GpuRecord]) -> list[str]:
        """Pool launches not yet idle whose launcher is alive: a job waits for one of
        these rather than launch another instance."""
        now = self.clock()
        return [r.id for r in records if r.ahead and not r.idle and r.state in (LAUNCHING, RUNNING)
                and r.silent_for(now) <= self.settings.owner_grace]

    def _scale_out(self, records: list[GpuRecord], demand: Demand) -> None:
        slots, why = slots_to_launch(records, demand, self.settings.max_gpus)
        expires = self.launches.choose_expires(records)
        intents: list[GpuRecord] = []
        for position, slot in enumerate(slots):
            if self.closed.is_set():
                return
            try:  # the same lowest free slots (and expires) for every decider: one launch per slot
                intents.append(self.registry.create_intent(self.worker_id, expires - position,
                                                           self.settings.workload_type, slot, ahead=True))
            except SlotTaken:
                continue
        for intent in self._still_wanted(intents):
            with self.held.lock:
                self.held.ahead[intent.id] = intent
            self.log.info("gpu.pool_launching", record=intent.id, expires=intent.expires, reason=why)
            start_daemon(lambda i=intent: safely(lambda: self._launch_ahead(i), "pool launch", self.log),
                         f"gpu-launch-{intent.slot}")

    def _still_wanted(self, intents: list[GpuRecord]) -> list[GpuRecord]:
        """The intents the pool still wants once they are written; the others are withdrawn
        before any launch call. The demand was read before the intents were: a free worker
        may have taken the queued job meanwhile and claimed a slot for it itself. Deciding
        again after the write closes that race from this side; the worker closes it from
        its side by yielding its claim to a pool launch it sees after its own write
        (GpuManager._claim): each writes, then reads, so one sees the other (on AWS the
        registry's index is eventually consistent: there the window narrows to its lag)."""
        if not intents:
            return []
        demand = self.demand()
        if demand is None:  # unreadable now: keep the decision made on the first reading
            return intents
        mine = {i.id for i in intents}
        others = [r for r in self.registry.all() if r.id not in mine]
        wanted, why = slots_to_launch(others, demand, self.settings.max_gpus)
        intents = sorted(intents, key=lambda i: i.slot or 0)
        for intent in intents[len(wanted):]:
            self.log.info("gpu.pool_launch_withdrawn", record=intent.id,
                          reason=f"no longer wanted once recorded ({demand}; {why or 'the queue is covered'}); "
                                 "withdrawn before any launch call")
            self.launches.abandon(intent, False, "withdrawn")
        return intents[:len(wanted)]

    def _launch_ahead(self, intent: GpuRecord) -> None:
        """Launch, record and boot one instance for the pool, then leave it idle for any job."""
        try:
            launch = self.client.launch(self.settings.workload_type, intent.expires, wait=self.closed.wait)
        except Comput3Error as exc:
            self._launch_failed(intent, exc)
            return
        self._settle(intent, launch)

    def take_over(self, job_id: str, launch: Launch | None, error: Comput3Error | None) -> None:
        """The launch of a job that was cancelled while the call was in flight has answered:
        the pool takes it as one of its own (recorded, booted, idle for whichever job comes
        first, stopped by the pool's rules when none does); a failure is reconciled."""
        with self.held.lock:
            intent = self.held.intents.pop(job_id, None)
            if intent is not None:
                self.held.ahead[intent.id] = intent
        if intent is None:  # the reaper took the intent meanwhile (this worker was silent)
            if launch is not None:
                self.log.error("gpu.launch_unrecorded", job_id=job_id, workload=launch.workload.workload,
                               reason="the cancelled job's intent was reaped before its launch answered")
                self.client.stop(launch.workload.workload)
            return
        self.log.info("gpu.launch_handed_to_pool", job_id=job_id, record=intent.id,
                      workload=launch.workload.workload if launch else None, error=str(error) if error else None,
                      reason="its job was cancelled during the launch call; the pool keeps or stops it")
        if launch is None:
            self._launch_failed(intent, error or Comput3Error("launch gave no answer"))
        else:
            self._settle(intent, launch, ahead=True)

    def _launch_failed(self, intent: GpuRecord, exc: Comput3Error) -> None:
        with self.held.lock:
            intent = self.held.ahead.pop(intent.id, intent)
        self.log.error("gpu.launch_failed", record=intent.id, error=str(exc), reason="pool launch")
        METRICS.gpu_launch(False, error=str(exc)[:200], pool=True)
        self.launches.abandon(intent, getattr(exc, "maybe_launched", False), str(exc))

    def _settle(self, intent: GpuRecord, launch: Launch, ahead: bool = False) -> None:
        """Record a pool launch's answer, wait for the node's boot, then leave it idle."""
        held = self.held
        now = self.clock()
        workload, node = launch.workload.workload, launch.workload.node
        METRICS.gpu_launch(True, workload=workload, pool=True)
        with held.lock:
            try:
                record = self.registry.update(held.ahead.pop(intent.id, intent), state=RUNNING, workload=workload,
                                              node=node, launched_at=now, last_used=now, busy=True, heartbeat=now,
                                              metered_at=now, **({"ahead": True} if ahead else {}))
                held.ahead[record.id] = record
            except RecordLost as exc:
                record = None
                lost = str(exc)
        if record is None:
            self.log.error("gpu.launch_unrecorded", workload=workload, reason=lost)
            self.client.stop(workload)
            return
        self.log.info("gpu.launched", record=record.id, workload=workload, node=node,
                      launch_attempts=launch.attempts, expires=record.expires, reason="pool launch")
        if launch.maybe_duplicated:
            self.launches.sweep_duplicates(record)
        problem = self.launches.await_boot(record, self.closed.wait)
        if self.closed.is_set():
            problem = "the worker began shutting down during the launch"
        with held.lock:
            record = held.ahead.pop(record.id, record)
            if problem is None:
                now = self.clock()
                try:
                    self.registry.update(record, busy=False, last_used=now, heartbeat=now)
                except RecordLost as exc:
                    self.log.info("gpu.pool_launch_lost", record=record.id, workload=workload, reason=str(exc))
                    return
                self.log.info("gpu.ready", workload=workload, node=node, boot_seconds=round(now - record.created_at, 2),
                              reason="launched ahead of the queue; idle for whichever job comes first")
                return
        METRICS.gpu_launch(False, workload=workload, error=f"pool launch not ready: {problem}"[:200], pool=True)
        self.reaper.stop(record, f"pool launch not ready: {problem}")
