"""GpuManager: the one object the worker asks for GPU instances.

    acquire(job_id, token, log) -> Node   warm first: this worker's idle instance, else any
                                  idle instance in the registry (adopted by a conditional
                                  write, whoever left it), else a launch in a free slot
                                  (intent -> launch -> record -> poll until it boots);
                                  with all MAX_GPUS slots taken it waits for one of them.
                                  The instance is bound to the job until release.
    watch(job_id, node, token)    health monitor while the job runs; on failure it
                                  cancels the job ("node_failed") and stops the instance
    unwatch(job_id)
    release(job_id, node_fault, busy_for)
                                  the job's task has ended: idle again; stopped when the
                                  node failed it or the instance is past GPU_REFRESH_AFTER;
                                  kept from every job while the node is busy with the
                                  cancelled job's work (``busy_for`` s), or stopped when
                                  that would last past GPU_CANCELLED_WORK_LIMIT. The job's
                                  GPU seconds (its work, plus the boot of a launch it waited
                                  for) are charged to the instance's record
                                  (chalicelib/fleet/books.py), then handed to ``on_charged``
                                  (the worker adds them to the job's cost)
    maintain()                    starts the keeper thread (the pool's scale-in and
                                  scale-out, keeper.py, every second or when a job asks for
                                  an instance) and the heartbeat thread (heartbeat.py);
                                  orphans are the API's scheduled gpu_reaper's
                                  (chalicelib/fleet/reaper.py)
    shutdown()                    stops this worker's instance (SIGTERM, exit)

The keeper (keeper.py) and the heartbeat (heartbeat.py) run in threads of their own over
the same ``Holdings`` (holdings.py), whose docstring states the one locking rule.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from botocore.exceptions import ClientError

from chalicelib.fleet.comput3 import Comput3Client, Comput3Error, LaunchAborted, Wait, with_attempts
from chalicelib.fleet.idle import TrafficLog
from chalicelib.fleet.pool import Demand, demand_reader
from chalicelib.fleet.reaper import Reaper
from chalicelib.fleet.registry import RUNNING, GpuRecord, GpuRegistry, RecordLost, SlotTaken
from chalicelib.platform.logs import EventLogger, get_logger
from chalicelib.platform.metrics import METRICS

from ..cancel import CancelToken
from ..node import Node
from ..stops import Stop
from ..tasks.base import NodeFault, TaskError
from .heartbeat import Heartbeat
from .holdings import Holdings
from .keeper import PoolKeeper
from .launches import LaunchHandedOver, Launches
from .monitor import Listing, Monitor
from .settings import GpuSettings
from .threads import in_background, safely, start_daemon


class GpuError(TaskError):
    """No usable GPU instance. The message becomes the job's error, unless it names an
    instance, a node or a table: then ``public`` is the tenant's text, the message the log's."""


@dataclass(frozen=True)
class JobUsage:
    """A job's hold on an instance, from acquire: when it was handed over, and whether the
    job waited for a launch to boot (a cold start) and for how long."""

    instance_type: str
    handed: float
    cold_start_seconds: float = 0.0  # acquire to hand-over, when the job waited for a launch
    launch_seconds: float = 0.0  # of that wait, the seconds the new instance was already billed

    def cost(self, released: float) -> dict[str, Any]:
        work = max(0.0, released - self.handed)
        return {"instance_type": self.instance_type, "gpu_seconds": round(work, 3),
                "launch_seconds": round(self.launch_seconds, 3), "cold_start": self.cold_start_seconds > 0,
                "cold_start_seconds": round(self.cold_start_seconds, 3)}


class GpuManager:
    def __init__(self, settings: GpuSettings, client: Comput3Client, registry: GpuRegistry, worker_id: str,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 demand: Callable[[], Demand] | None = None, traffic: TrafficLog | None = None):
        if not settings.c3_api_key:
            raise ValueError("C3_API_KEY is not set: GPU tasks need a Comput3.AI API key "
                             "(`make run` starts the local simulator and sets one)")
        self.settings = settings
        self.client = client
        self.registry = registry
        self.worker_id = worker_id
        self.clock = clock
        self.rng = rng or random.Random()
        self.log = get_logger("c3.gpu", worker=worker_id)
        # What GPU_IDLE_POLICY=adaptive learns from: job arrivals (acquire) and launch + boot times.
        self.traffic = traffic if settings.idle_policy == "adaptive" else None
        self.reaper = Reaper(client, registry, settings, worker_id, clock, self.log, traffic=self.traffic)
        # The jobs queue's depth; without it the pool keeps to the idle timeout, launches nothing ahead.
        self.demand: Callable[[], Demand | None] = demand_reader(demand, self.log) if demand else (lambda: None)
        self.held = Holdings(registry, self.log)
        self._lock = self.held.lock
        self.launches = Launches(settings, client, registry, self.reaper, clock, self.log, self.traffic)
        self._closed = threading.Event()
        self.keeper = PoolKeeper(settings, client, registry, self.reaper, self.held, self.launches,
                                 lambda: self.demand(), worker_id, clock, self._closed, self.log)
        self.heartbeat = Heartbeat(self.held, settings.heartbeat_interval, clock, self._closed, self.log)
        self._monitors: dict[str, Monitor] = {}  # by job id
        self._bound: dict[str, str] = {}  # job id -> workload, from acquire to release
        self._usage: dict[str, JobUsage] = {}  # job id -> its hold, from acquire to release
        # Told each charge release made: (job id, its use); the worker adds it to the job's cost.
        self.on_charged: Callable[[str, dict[str, Any]], None] | None = None
        self._listing = Listing(lambda: [w.workload for w in client.workloads()], settings.health_interval)
        self._keeper: threading.Thread | None = None

    # -- what the worker calls ----------------------------------------------------
    def maintain(self) -> None:
        with self._lock:
            if self._keeper is None and not self._closed.is_set():
                self._keeper = start_daemon(self.keeper.run, "gpu-keeper")
                start_daemon(self.heartbeat.run, "gpu-heartbeat")

    def acquire(self, job_id: str, token: CancelToken, log: EventLogger,
                on_phase: Callable[[str], None] | None = None, arrived_at: float | None = None) -> Node:
        """An instance bound to ``job_id`` until ``release(job_id, ...)``. Never one whose
        earlier job's task is still alive: that binding ends only when its task has ended.
        ``on_phase`` hears "waiting_for_gpu" (every slot taken) and "launching_gpu" (a
        launch in flight, until the new node answers); a warm instance reports neither.
        ``arrived_at``: when the job was submitted, an arrival the idle policy learns from."""
        self.maintain()
        if self._closed.is_set():
            raise GpuError("the worker is shutting down; no GPU instance is launched")
        if self.traffic is not None:
            traffic, at = self.traffic, arrived_at if arrived_at is not None else self.clock()
            in_background(lambda: traffic.record_arrival(at), "arrival record", self.log)
        self.keeper.nudge.set()  # the keeper looks at the queue now: more jobs may need instances
        with self._lock:
            held = [other for other in self._bound if other != job_id]
        if held:
            raise GpuError(f"this worker's GPU instance is still bound to job {held[0]}, whose task "
                           "has not ended; no instance is shared with a live task",
                           public="this worker's GPU instance is still bound to an earlier job whose task "
                                  "has not ended; no instance is shared with a live task")
        asked = self.clock()
        node, cold = self._reuse(token, log), False
        if node is None:
            node, cold = self._launch(job_id, token, log, on_phase or _no_phase)
        handed = self.clock()
        with self._lock:
            self._bound[job_id] = node.workload
            record = self.held.current
            launched = record.launched_at if record is not None and record.workload == node.workload else None
            self._usage[job_id] = JobUsage(
                record.type if record is not None else self.settings.workload_type, handed,
                cold_start_seconds=max(0.0, handed - asked) if cold else 0.0,
                launch_seconds=max(0.0, handed - max(launched, asked)) if cold and launched else 0.0)
        return node

    def recent_nodes(self) -> list[Node]:
        """The nodes this worker has lately known: their names and ids are the addresses a
        job's error never shows (worker_runtime/tenant_errors.py)."""
        return list(self.launches.recent)

    def watch(self, job_id: str, node: Node, token: CancelToken) -> None:
        with self._lock:
            record = self.held.current
            if record is None or record.workload != node.workload or self._bound.get(job_id) != node.workload:
                return
            monitor = Monitor(lambda wait: self._health(record, wait),
                              lambda reason: self._instance_failed(node, token, reason),
                              self.settings.health_interval, node.workload)
            self._monitors[job_id] = monitor.start()

    def unwatch(self, job_id: str) -> None:
        with self._lock:
            monitor = self._monitors.pop(job_id, None)
        if monitor is not None:
            monitor.stop()

    def release(self, job_id: str, node_fault: NodeFault | None, busy_for: float | None = None) -> bool:
        """``job_id``'s task has ended: its instance is idle again, or stopped when the
        node failed it (or it is past GPU_REFRESH_AFTER). Anything else that ended the job
        (a bad input, the client's cancel, a max_time the node honoured) keeps it; but a
        cancel that left work running on the node (``busy_for`` s more, inf: unknown) keeps
        it from every job until then, or stops it when that is past GPU_CANCELLED_WORK_LIMIT.
        Returns True when the job's instance is no longer running (stopped now or before)."""
        self.unwatch(job_id)
        charged_use = None
        with self._lock:
            workload = self._bound.pop(job_id, None)
            usage = self._usage.pop(job_id, None)
            if workload is None:
                return False  # never bound, or released already
            record = self.held.current
            if record is None or record.workload != workload:
                return True  # already stopped (monitor, shutdown) or taken over: nothing charged
            now = self.clock()
            use = usage.cost(now) if usage is not None else None
            charged = record.charged + (use["gpu_seconds"] + use["launch_seconds"] if use else 0.0)
            reason = None
            if node_fault is not None:
                reason = f"the node failed job {job_id}: {node_fault}"
            elif record.age(now) >= self.settings.refresh_after:
                reason = (f"up for {record.age(now):.0f} s, past GPU_REFRESH_AFTER="
                          f"{self.settings.refresh_after:g}: the next job gets a fresh instance")
            elif busy_for is not None and busy_for > self.settings.cancelled_work_limit:
                left = "for an unknown time" if math.isinf(busy_for) else f"for ~{busy_for:.0f} s more"
                reason = (f"the node goes on with cancelled job {job_id}'s work {left}, past "
                          f"GPU_CANCELLED_WORK_LIMIT={self.settings.cancelled_work_limit:g}: a fresh instance "
                          "costs less than a GPU rendering for nobody")
            if reason is None:
                if busy_for is not None and busy_for > 0:
                    written = self._drain(job_id, busy_for, now, charged)
                else:
                    written = self.held.write_current(busy=False, last_used=now, heartbeat=now, charged=charged)
                charged_use = use if written is not None else None
            # A job whose node failed it (or whose instance is stopped now) is not charged: its
            # seconds are the fleet's idle time.
        self._report_charge(job_id, charged_use)
        if reason is None:
            return False
        self._retire(workload, reason)
        return True

    def _report_charge(self, job_id: str, use: dict[str, Any] | None) -> None:
        if use is None or self.on_charged is None:
            return
        try:
            self.on_charged(job_id, use)
        except Exception as exc:  # noqa: BLE001 - the job's receipt misses it; the fleet's books still add up
            self.log.error("gpu.job_charge_unrecorded", job_id=job_id, use=use,
                           reason=f"{type(exc).__name__}: {exc}; the seconds show as the fleet's idle time")

    def _drain(self, job_id: str, busy_for: float, now: float, charged: float) -> GpuRecord | None:
        """Keep this worker's instance from every job (busy in the registry, heartbeated)
        until the cancelled job's work on the node ends, then leave it idle (lock held).
        The record written (with the job's charge), or None when another worker took it."""
        until = now + busy_for
        record = self.held.write_current(busy=True, draining_until=until, heartbeat=now, charged=charged)
        if record is None:
            return None
        self.held.current = None
        self.held.draining[record.id] = record
        self.log.info("gpu.draining", job_id=job_id, workload=record.workload, busy_for=round(busy_for, 1),
                      reason="the cancelled job's call goes on on the node (Gradio cannot stop a running call); "
                             "no job gets the instance until it ends")
        start_daemon(lambda: safely(lambda: self._drained(record.id, until), "drain", self.log),
                     f"gpu-drain-{record.id}")
        return record

    def _drained(self, record_id: str, until: float) -> None:
        if self._closed.wait(max(0.0, until - self.clock())):
            return  # shutting down: shutdown() stops it
        with self._lock:
            record = self.held.draining.pop(record_id, None)
            if record is None:
                return
            now = self.clock()
            try:
                self.registry.update(record, busy=False, draining_until=None, last_used=now, heartbeat=now)
            except RecordLost as exc:
                self.log.info("gpu.drain_lost", record=record_id, reason=str(exc))
                return
        self.log.info("gpu.drained", workload=record.workload,
                      reason="the cancelled job's work has run its course; idle for any job")

    def shutdown(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            monitors = list(self._monitors.values())
            self._monitors.clear()
            current, intents = self.held.current, [i.id for i in self.held.intents.values()]
            ahead = list(self.held.ahead)
            draining = list(self.held.draining.values())
            self.held.draining.clear()
        for monitor in monitors:
            monitor.stop()
        if current is not None:
            self._retire(current.workload, "the worker is shutting down")
        for record in draining:
            self.reaper.stop(record, "the worker is shutting down while its instance is busy with cancelled work")
        if intents:
            self.log.warning("gpu.launch_in_flight", records=intents,
                             reason="a launch is still in flight at shutdown; if it outlives this process, "
                                    "the scheduled gpu_reaper reaps its intent after GPU_OWNER_GRACE")
        if ahead:
            self.log.warning("gpu.pool_launch_in_flight", records=ahead,
                             reason="launches ahead of the queue stop themselves once launched; if the process "
                                    "exits first, the scheduled gpu_reaper reaps them after GPU_OWNER_GRACE")
        if self._keeper is not None:
            self._keeper.join(timeout=5)
        self.log.info("gpu.manager_stopped")

    # -- getting an instance -----------------------------------------------------
    def _reuse(self, token: CancelToken, log: EventLogger) -> Node | None:
        node = self._reuse_own(token, log)
        return node if node is not None else self._adopt(self.registry.all(), token, log)

    def _reuse_own(self, token: CancelToken, log: EventLogger) -> Node | None:
        with self._lock:
            record = self.held.current
            if record is None:
                return None
            age = record.age(self.clock())
            if age < self.settings.refresh_after:
                record = self.held.write_current(busy=True, heartbeat=self.clock())
                if record is None:
                    return None
                refresh = None
            else:
                refresh = f"up for {age:.0f} s, past GPU_REFRESH_AFTER={self.settings.refresh_after:g}"
        if refresh:
            self._retire(record.workload, refresh)
            return None
        problem = self._health(record, token.wait)
        self._idle_if_cancelled(record, token)
        if problem:
            self._retire(record.workload, f"failed its health check before reuse: {problem}")
            return None
        log.info("gpu.reused", workload=record.workload, node=record.node, age=round(age, 1),
                 reason="this worker's instance is healthy; no launch needed")
        return self.launches.node(record)

    def _adopt(self, records: list[GpuRecord], token: CancelToken, log: EventLogger) -> Node | None:
        """Take over an idle instance from the registry, whichever worker left it (one that
        scaled in or died included): the conditional write lets exactly one worker have it."""
        now = self.clock()
        for record in self._adoptable(records):
            if record.age(now) >= self.settings.refresh_after:
                self.reaper.stop(record, f"idle and up for {record.age(now):.0f} s, past GPU_REFRESH_AFTER="
                                         f"{self.settings.refresh_after:g}")
                continue
            with self._lock:
                if self.held.current is not None or self._closed.is_set():
                    return None
                adopted = self._take_idle(record)
                if adopted is None:
                    continue  # another worker adopted or claimed it first
                self.held.current = adopted
            problem = self._health(adopted, token.wait)
            self._idle_if_cancelled(adopted, token)
            if problem:
                self._retire(adopted.workload, f"failed its health check before adoption: {problem}")
                continue
            log.info("gpu.adopted", workload=adopted.workload, node=adopted.node, previous_owner=record.owner,
                     age=round(adopted.age(now), 1), reason="an idle instance in the registry; no launch needed")
            return self.launches.node(adopted)
        return None

    def _adoptable(self, records: list[GpuRecord]) -> list[GpuRecord]:
        """Idle instances with time left on their rental, the most recently launched first."""
        now = self.clock()
        idle = [r for r in records if r.idle and r.expires > now + self.settings.health_interval]
        return sorted(idle, key=lambda r: r.launched_at or r.created_at, reverse=True)

    def _take_idle(self, record: GpuRecord, tries: int = 5) -> GpuRecord | None:
        """The adopting conditional write. Losing it to a write that left the record idle
        (its owner's heartbeat, a metering pass) is no reason to launch: re-read and retry;
        None once another worker adopted or claimed it (or it is gone)."""
        for _ in range(tries):
            try:
                return self.registry.update(record, require_idle=True, owner=self.worker_id, busy=True,
                                            heartbeat=self.clock(), ahead=False)
            except RecordLost as exc:
                fresh = exc.current
                if fresh is None or fresh.serial != record.serial or not fresh.idle:
                    return None
                self.log.info("gpu.adoption_retried", record=record.id, workload=record.workload,
                              reason=f"{exc}, still idle: read again and retried")
                record = fresh
        return None

    def _launch(self, job_id: str, token: CancelToken, log: EventLogger,
                on_phase: Callable[[str], None]) -> tuple[Node, bool]:
        """A new instance, or one that came free meanwhile; True when the job waited for a
        launch to boot (its own, or the pool's)."""
        s = self.settings
        records = self.registry.all()
        # Only the first claim may yield to an instance that came idle meanwhile: no loop.
        intent, booting, adopt_now = self._claim(job_id, records, log, yield_to_idle=True)
        waited_for_boot = bool(booting)
        while intent is None:  # a pool launch is booting, or all MAX_GPUS slots are in use
            if not adopt_now:  # else the claim yielded to an idle instance: adopt it without waiting
                self._wait_for_an_instance(records, booting, token, log, on_phase)
            adopt_now = False
            records = self.registry.all()
            node = self._adopt(records, token, log)
            if node is not None:
                return node, waited_for_boot
            intent, booting, _ = self._claim(job_id, records, log)
            waited_for_boot = waited_for_boot or bool(booting)
        on_phase("launching_gpu")
        log.info("gpu.launching", record=intent.id, workload_type=s.workload_type, expires=intent.expires,
                 reason="intent recorded first, so a crash mid-launch leaves a trace to reconcile")
        try:
            # Returns at the job's cancel even while the call hangs; the pool then takes its answer.
            launch = self.launches.call(intent, token.wait,
                                        lambda answer, error: self.keeper.take_over(job_id, answer, error))
        except LaunchHandedOver:
            token.raise_if_cancelled()
            raise
        except Comput3Error as exc:
            self._abandon_intent(job_id, getattr(exc, "maybe_launched", False), str(exc))
            if isinstance(exc, LaunchAborted):
                token.raise_if_cancelled()
            log.error("gpu.launch_failed", error=str(exc))
            METRICS.gpu_launch(False, job_id=log.fields.get("job_id"), error=str(exc)[:200])
            raise GpuError(str(exc)) from None
        METRICS.gpu_launch(True, workload=launch.workload.workload, job_id=log.fields.get("job_id"))
        record = self._record_launch(job_id, launch.workload.workload, launch.workload.node)
        log.info("gpu.launched", record=record.id, workload=record.workload, node=record.node,
                 launch_attempts=launch.attempts, expires=record.expires)
        if launch.maybe_duplicated:
            self.launches.sweep_duplicates(record)
        if self._closed.is_set():
            self._retire(record.workload, "the worker began shutting down during the launch")
            raise GpuError("the worker is shutting down; the new GPU instance was stopped")
        problem = self.launches.await_boot(record, token.wait)
        self._idle_if_cancelled(record, token)
        if problem:
            METRICS.gpu_launch(False, workload=record.workload, error=f"health check: {problem}"[:200])
            self._retire(record.workload, f"failed its first health check: {problem}")
            raise GpuError(f"New GPU instance {record.workload} on {record.node} failed its health check "
                           f"after launch ({problem}); it was stopped",
                           public=f"A new GPU instance failed its health check after launch ({_health_public(problem)}); "
                                  "it was stopped")
        log.info("gpu.ready", workload=record.workload, node=record.node,
                 boot_seconds=round(self.clock() - (record.launched_at or record.created_at), 2))
        return self.launches.node(record), True

    def _wait_for_an_instance(self, records: list[GpuRecord], booting: list[str], token: CancelToken,
                              log: EventLogger, on_phase: Callable[[str], None]) -> None:
        """One wait, saying why: for a pool launch to boot, or for a free slot or instance."""
        s = self.settings
        draining = [] if booting else _draining(records, self.clock())
        on_phase("launching_gpu" if booting else "waiting_for_node" if draining else "waiting_for_gpu")
        if booting:
            log.info("gpu.awaiting_pool_launch", records=booting, retry_in=s.boot_poll,
                     reason="instances launched ahead of the queue are booting; the first idle one is taken")
        elif draining:
            log.info("gpu.waiting_for_node", max_gpus=s.max_gpus, retry_in=s.capacity_poll,
                     draining={r.workload: round(r.draining_until - self.clock(), 1) for r in draining},
                     reason="every launch slot is taken and these instances are busy with a cancelled "
                            "job's work the node could not stop (seconds left); the first free one is taken")
        else:
            log.info("gpu.at_capacity", max_gpus=s.max_gpus, retry_in=s.capacity_poll,
                     reason="every launch slot is taken; waiting for an idle instance or a free slot")
        if token.wait(s.boot_poll if booting else s.capacity_poll):
            token.raise_if_cancelled()
        if self._closed.is_set():
            raise GpuError("the worker is shutting down; no GPU instance is launched")

    def _claim(self, job_id: str, records: list[GpuRecord], log: EventLogger,
               yield_to_idle: bool = False) -> tuple[GpuRecord | None, list[str], bool]:
        """This job's launch intent; or the pool launches booting that it waits for instead;
        or neither (every slot is in use). The last item is True when the intent yielded to
        an instance that came idle meanwhile (only with ``yield_to_idle``): adopt it.

        A pool launch that shows up only after the intent is written was decided on a queue
        that still held this job: the intent yields to it (booting, or already idle when
        the boot was quick), and the pool keeper, which decides again after its own write
        (PoolKeeper._still_wanted), withdraws its launch when it sees this intent first.
        Both may yield at once; the job then claims again after GPU_BOOT_POLL."""
        booting = self.keeper.booting_for_pool(records)
        if booting:
            return None, booting, False
        intent = self._claim_slot(job_id, records)
        if intent is None:
            return None, [], False
        fresh = self.registry.all()
        booting = self.keeper.booting_for_pool(fresh)
        idle = [r.id for r in self._adoptable(fresh)] if yield_to_idle and not booting else []
        if not booting and not idle:
            return intent, [], False
        log.info("gpu.launch_yielded", record=intent.id, instances=booting or idle,
                 reason="a pool launch (decided on the queue this job was taken from) appeared while its slot was "
                        "claimed: the claim is withdrawn and the job waits for it" if booting else
                        "an instance came idle while its slot was claimed: the claim is withdrawn and the job adopts it")
        self._abandon_intent(job_id, False, "yielded to a pool launch")
        return None, booting, bool(idle)

    def _claim_slot(self, job_id: str, records: list[GpuRecord]) -> GpuRecord | None:
        """Create the "launching" record of a free slot (the intent, written before the
        launch call); None when all MAX_GPUS slots are in use."""
        taken = {r.slot for r in records}
        free = [k for k in range(self.settings.max_gpus) if k not in taken]
        self.rng.shuffle(free)  # workers starting together mostly try different slots
        expires = self.launches.choose_expires(records)
        for slot in free:
            try:
                intent = self.registry.create_intent(self.worker_id, expires, self.settings.workload_type, slot)
            except SlotTaken:
                continue
            except ClientError as exc:  # no intent, no launch: an unrecorded instance could be orphaned
                code = exc.response["Error"].get("Code")
                raise GpuError(f"Could not record the GPU launch intent in table {self.registry.table}: "
                               f"{code}; no GPU was launched",
                               public=f"Could not record the GPU launch intent ({code}); no GPU was launched") from None
            with self._lock:
                self.held.intents[job_id] = intent
            return intent
        return None

    def _record_launch(self, job_id: str, workload: str, node: str) -> GpuRecord:
        now = self.clock()
        with self._lock:
            intent = self.held.intents.pop(job_id, None)
            try:
                if intent is None:
                    raise RecordLost("launch intent", None)
                self.held.current = self.registry.update(intent, state=RUNNING, workload=workload, node=node,
                                                     launched_at=now, last_used=now, busy=True, heartbeat=now,
                                                     metered_at=now)
                return self.held.current
            except RecordLost as exc:
                lost = exc
        self.log.error("gpu.launch_unrecorded", workload=workload, reason=str(lost))
        try:
            self.client.stop(workload)
        except Comput3Error as exc:
            self.log.warning("gpu.stop_failed", workload=workload, error=str(exc),
                             reason="left to the worker that claimed the intent")
        raise GpuError(f"GPU instance {workload} could not be recorded ({lost}); it was stopped",
                       public="The new GPU instance could not be recorded; it was stopped")

    def _abandon_intent(self, job_id: str, maybe_launched: bool, why: str) -> None:
        with self._lock:
            intent = self.held.intents.pop(job_id, None)
        if intent is not None:
            self.launches.abandon(intent, maybe_launched, why)

    # -- health -------------------------------------------------------------------
    def _health(self, record: GpuRecord, wait: Wait) -> str | None:
        """Listed as running by the workloads API, and the node answers; up to
        GPU_HEALTH_ATTEMPTS attempts. None when healthy, else why not. The listing is
        shared (one control-plane call per GPU_HEALTH_INTERVAL for the whole worker);
        only a retry after "not listed" asks again."""
        base = self.launches.node(record).base_url
        attempt = 0

        def once() -> str | None:
            nonlocal attempt
            attempt += 1
            try:
                listed = self._listing.contains(record.workload or "", fresh=attempt > 1)
            except Comput3Error as exc:  # inconclusive: the node check decides
                self.log.warning("gpu.workloads_unavailable", workload=record.workload, error=str(exc))
                listed = True
            if not listed:
                return f"workload {record.workload} {NOT_LISTED}"
            return self.client.node_health(base, self.settings.health_timeout)

        s = self.settings
        return with_attempts(once, s.health_attempts, s.health_retry_delay, wait)

    def _instance_failed(self, node: Node, token: CancelToken, reason: str) -> None:
        message = (f"GPU instance {node.workload} on node {node.name} failed its health check "
                   f"({self.settings.health_attempts} attempts): {reason}; the instance was stopped")
        public = (f"The GPU node failed its health check during the job ({_health_public(reason)}, "
                  f"{self.settings.health_attempts} attempts); the instance was stopped")
        self.log.error("gpu.unhealthy", workload=node.workload, node=node.name, reason=reason)
        token.cancel(message, Stop.NODE_FAILED, public=public)
        self._retire(node.workload, f"failed its health check during a job: {reason}")

    def _idle_if_cancelled(self, record: GpuRecord, token: CancelToken) -> None:
        if not token.cancelled:
            return
        with self._lock:
            if self.held.current is not None and self.held.current.id == record.id:
                self.held.write_current(busy=False, last_used=self.clock())
        token.raise_if_cancelled()

    def _retire(self, workload: str, reason: str) -> bool:
        """Stop this worker's instance (if it still is ours) and delete its record."""
        with self._lock:
            record = self.held.current
            if record is None or record.workload != workload:
                return False
            self.held.current = None
            claimed = self.reaper.claim(record, reason)
        self.log.info("gpu.stopping", workload=workload, node=record.node, reason=reason)
        return claimed is not None and self.reaper.finish(claimed)


NOT_LISTED = "is no longer listed by the Comput3 workloads API"


def _health_public(problem: str) -> str:
    """A failed health check as a tenant reads it: what failed, not where (``_health``'s
    reasons name the workload or the node's URL)."""
    return f"the instance {NOT_LISTED}" if NOT_LISTED in problem else "its health endpoint did not answer 200 OK"


def _draining(records: list[GpuRecord], now: float) -> list[GpuRecord]:
    return [r for r in records if r.state == RUNNING and r.draining_until is not None and r.draining_until > now]


def _no_phase(phase: str) -> None:
    """acquire() without a listener."""
