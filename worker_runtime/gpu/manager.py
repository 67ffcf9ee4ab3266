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
    release(job_id, node_fault)   the job's task has ended: idle again; stopped when the
                                  node failed it or the instance is past GPU_REFRESH_AFTER
    maintain()                    starts the keeper thread (the pool's scale-in and
                                  scale-out, chalicelib/gpu_pool.py, every second or when
                                  a job asks for an instance) and the heartbeat thread
                                  (registry liveness); orphans are the API's scheduled
                                  gpu_reaper's (chalicelib/gpu_reaper.py)
    shutdown()                    stops this worker's instance (SIGTERM, exit)

Locking: ``_lock`` guards ``_current``/``_intent`` and every registry write about them,
so the keeper, the monitor and the job thread never act on a stale record version.
Comput3 calls that may take long happen outside the lock.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Callable

from botocore.exceptions import ClientError

from chalicelib.gpu_pool import Demand, demand_reader, slots_to_launch
from chalicelib.logs import EventLogger, get_logger
from chalicelib.metrics import METRICS

from ..cancel import CancelToken
from ..comput3 import Comput3Client, Comput3Error, LaunchAborted, Wait, with_attempts
from ..node import Node
from ..stops import Stop
from ..tasks.base import NodeFault, TaskError
from .monitor import Listing, Monitor
from .reaper import Reaper
from .registry import LAUNCHING, RUNNING, GpuRecord, GpuRegistry, RecordLost, SlotTaken
from .settings import GpuSettings


class GpuError(TaskError):
    """No usable GPU instance; the message becomes the job's error verbatim."""


class GpuManager:
    def __init__(self, settings: GpuSettings, client: Comput3Client, registry: GpuRegistry, worker_id: str,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 demand: Callable[[], Demand] | None = None):
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
        self.reaper = Reaper(client, registry, settings, worker_id, clock, self.log)
        # The jobs queue's depth; without it the pool keeps to the idle timeout, launches nothing ahead.
        self.demand: Callable[[], Demand | None] = demand_reader(demand, self.log) if demand else (lambda: None)
        self._lock = threading.RLock()
        self._current: GpuRecord | None = None  # this worker's launched instance
        self._intent: GpuRecord | None = None  # a launch in flight
        self._ahead: dict[str, GpuRecord] = {}  # launches for the pool (no job yet), until they boot
        self._nudge = threading.Event()  # wakes the keeper: a job wants an instance
        self._monitors: dict[str, Monitor] = {}  # by job id
        self._bound: dict[str, str] = {}  # job id -> workload, from acquire to release
        self._listing = Listing(lambda: [w.workload for w in client.workloads()], settings.health_interval)
        self._closed = threading.Event()
        self._keeper: threading.Thread | None = None

    # -- what the worker calls ----------------------------------------------------
    def maintain(self) -> None:
        with self._lock:
            if self._keeper is None and not self._closed.is_set():
                self._keeper = threading.Thread(target=self._keep, name="gpu-keeper", daemon=True)
                self._keeper.start()
                threading.Thread(target=self._beat, name="gpu-heartbeat", daemon=True).start()

    def acquire(self, job_id: str, token: CancelToken, log: EventLogger,
                on_phase: Callable[[str], None] | None = None) -> Node:
        """An instance bound to ``job_id`` until ``release(job_id, ...)``. Never one whose
        earlier job's task is still alive: that binding ends only when its task has ended.
        ``on_phase`` hears "waiting_for_gpu" (every slot taken) and "launching_gpu" (a
        launch in flight, until the new node answers); a warm instance reports neither."""
        self.maintain()
        if self._closed.is_set():
            raise GpuError("the worker is shutting down; no GPU instance is launched")
        self._nudge.set()  # the keeper looks at the queue now: more jobs may need instances
        with self._lock:
            held = [other for other in self._bound if other != job_id]
        if held:
            raise GpuError(f"this worker's GPU instance is still bound to job {held[0]}, whose task "
                           "has not ended; no instance is shared with a live task")
        node = self._reuse(token, log)
        node = node if node is not None else self._launch(token, log, on_phase or _no_phase)
        with self._lock:
            self._bound[job_id] = node.workload
        return node

    def watch(self, job_id: str, node: Node, token: CancelToken) -> None:
        with self._lock:
            record = self._current
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

    def release(self, job_id: str, node_fault: NodeFault | None) -> bool:
        """``job_id``'s task has ended: its instance is idle again, or stopped when the
        node failed it (or it is past GPU_REFRESH_AFTER). Anything else that ended the job
        (a bad input, the client's cancel, a max_time the node honoured) keeps it.
        Returns True when the job's instance is no longer running (stopped now or before)."""
        self.unwatch(job_id)
        with self._lock:
            workload = self._bound.pop(job_id, None)
            if workload is None:
                return False  # never bound, or released already
            record = self._current
            if record is None or record.workload != workload:
                return True  # already stopped (monitor, shutdown) or taken over
            now = self.clock()
            if node_fault is not None:
                reason = f"the node failed job {job_id}: {node_fault}"
            elif record.age(now) >= self.settings.refresh_after:
                reason = (f"up for {record.age(now):.0f} s, past GPU_REFRESH_AFTER="
                          f"{self.settings.refresh_after:g}: the next job gets a fresh instance")
            else:
                self._write_current(busy=False, last_used=now, heartbeat=now)
                return False
        self._retire(workload, reason)
        return True

    def shutdown(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            monitors = list(self._monitors.values())
            self._monitors.clear()
            current, intent = self._current, self._intent
            ahead = list(self._ahead)
        for monitor in monitors:
            monitor.stop()
        if current is not None:
            self._retire(current.workload, "the worker is shutting down")
        if intent is not None:
            self.log.warning("gpu.launch_in_flight", record=intent.id,
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
            record = self._current
            if record is None:
                return None
            age = record.age(self.clock())
            if age < self.settings.refresh_after:
                record = self._write_current(busy=True, heartbeat=self.clock())
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
        return self._node(record)

    def _adopt(self, records: list[GpuRecord], token: CancelToken, log: EventLogger) -> Node | None:
        """Take over an idle instance from the registry, whichever worker left it (one that
        scaled in or died included): the conditional write lets exactly one worker have it."""
        now = self.clock()
        idle = [r for r in records if r.idle and r.expires > now + self.settings.health_interval]
        for record in sorted(idle, key=lambda r: r.launched_at or r.created_at, reverse=True):
            if record.age(now) >= self.settings.refresh_after:
                self.reaper.stop(record, f"idle and up for {record.age(now):.0f} s, past GPU_REFRESH_AFTER="
                                         f"{self.settings.refresh_after:g}")
                continue
            with self._lock:
                if self._current is not None or self._closed.is_set():
                    return None
                try:
                    adopted = self.registry.update(record, require_idle=True, owner=self.worker_id, busy=True,
                                                   heartbeat=self.clock(), ahead=False)
                except RecordLost:
                    continue  # another worker adopted or claimed it first
                self._current = adopted
            problem = self._health(adopted, token.wait)
            self._idle_if_cancelled(adopted, token)
            if problem:
                self._retire(adopted.workload, f"failed its health check before adoption: {problem}")
                continue
            log.info("gpu.adopted", workload=adopted.workload, node=adopted.node, previous_owner=record.owner,
                     age=round(adopted.age(now), 1), reason="an idle instance in the registry; no launch needed")
            return self._node(adopted)
        return None

    def _launch(self, token: CancelToken, log: EventLogger, on_phase: Callable[[str], None]) -> Node:
        s = self.settings
        records = self.registry.all()
        booting = self._booting_for_pool(records)
        intent = None if booting else self._claim_slot(records)
        while intent is None:  # a pool launch is booting, or all MAX_GPUS slots are in use
            on_phase("launching_gpu" if booting else "waiting_for_gpu")
            if booting:
                log.info("gpu.awaiting_pool_launch", records=booting, retry_in=s.boot_poll,
                         reason="instances launched ahead of the queue are booting; the first idle one is taken")
            else:
                log.info("gpu.at_capacity", max_gpus=s.max_gpus, retry_in=s.capacity_poll,
                         reason="every launch slot is taken; waiting for an idle instance or a free slot")
            if token.wait(s.boot_poll if booting else s.capacity_poll):
                token.raise_if_cancelled()
            if self._closed.is_set():
                raise GpuError("the worker is shutting down; no GPU instance is launched")
            records = self.registry.all()
            node = self._adopt(records, token, log)
            if node is not None:
                return node
            booting = self._booting_for_pool(records)
            intent = None if booting else self._claim_slot(records)
        on_phase("launching_gpu")
        log.info("gpu.launching", record=intent.id, workload_type=s.workload_type, expires=intent.expires,
                 reason="intent recorded first, so a crash mid-launch leaves a trace to reconcile")
        try:
            launch = self.client.launch(s.workload_type, intent.expires, wait=token.wait)
        except Comput3Error as exc:
            self._abandon_intent(getattr(exc, "maybe_launched", False), str(exc))
            if isinstance(exc, LaunchAborted):
                token.raise_if_cancelled()
            log.error("gpu.launch_failed", error=str(exc))
            METRICS.gpu_launch(False, job_id=log.fields.get("job_id"), error=str(exc)[:200])
            raise GpuError(str(exc)) from None
        METRICS.gpu_launch(True, workload=launch.workload.workload, job_id=log.fields.get("job_id"))
        record = self._record_launch(launch.workload.workload, launch.workload.node)
        log.info("gpu.launched", record=record.id, workload=record.workload, node=record.node,
                 launch_attempts=launch.attempts, expires=record.expires)
        if launch.maybe_duplicated:
            self._sweep_duplicates(record)
        if self._closed.is_set():
            self._retire(record.workload, "the worker began shutting down during the launch")
            raise GpuError("the worker is shutting down; the new GPU instance was stopped")
        problem = self._await_boot(record, token.wait)
        self._idle_if_cancelled(record, token)
        if problem:
            METRICS.gpu_launch(False, workload=record.workload, error=f"health check: {problem}"[:200])
            self._retire(record.workload, f"failed its first health check: {problem}")
            raise GpuError(f"New GPU instance {record.workload} on {record.node} failed its health check "
                           f"after launch ({problem}); it was stopped")
        log.info("gpu.ready", workload=record.workload, node=record.node,
                 boot_seconds=round(self.clock() - (record.launched_at or record.created_at), 2))
        return self._node(record)

    def _claim_slot(self, records: list[GpuRecord]) -> GpuRecord | None:
        """Create the "launching" record of a free slot (the intent, written before the
        launch call); None when all MAX_GPUS slots are in use."""
        taken = {r.slot for r in records}
        free = [k for k in range(self.settings.max_gpus) if k not in taken]
        self.rng.shuffle(free)  # workers starting together mostly try different slots
        expires = self._choose_expires(records)
        for slot in free:
            try:
                intent = self.registry.create_intent(self.worker_id, expires, self.settings.workload_type, slot)
            except SlotTaken:
                continue
            except ClientError as exc:  # no intent, no launch: an unrecorded instance could be orphaned
                raise GpuError(f"Could not record the GPU launch intent in table {self.registry.table}: "
                               f"{exc.response['Error'].get('Code')}; no GPU was launched") from None
            with self._lock:
                self._intent = intent
            return intent
        return None

    def _await_boot(self, record: GpuRecord, wait: Wait) -> str | None:
        """Poll the new node's own health URL until it answers (no control-plane calls),
        for up to GPU_BOOT_TIMEOUT: the job starts within GPU_BOOT_POLL of the boot."""
        s = self.settings
        base = self._node(record).base_url
        deadline = time.monotonic() + s.boot_timeout
        while True:
            problem = self.client.node_health(base, s.health_timeout)
            if problem is None:
                return None
            if time.monotonic() >= deadline:
                return f"{problem} (still not ready after GPU_BOOT_TIMEOUT={s.boot_timeout:g} s)"
            if wait(s.boot_poll):
                return None  # cancelled: the caller raises

    def _record_launch(self, workload: str, node: str) -> GpuRecord:
        now = self.clock()
        with self._lock:
            intent, self._intent = self._intent, None
            try:
                if intent is None:
                    raise RecordLost("launch intent", None)
                self._current = self.registry.update(intent, state=RUNNING, workload=workload, node=node,
                                                     launched_at=now, last_used=now, busy=True, heartbeat=now,
                                                     metered_at=now)
                return self._current
            except RecordLost as exc:
                lost = exc
        self.log.error("gpu.launch_unrecorded", workload=workload, reason=str(lost))
        try:
            self.client.stop(workload)
        except Comput3Error as exc:
            self.log.warning("gpu.stop_failed", workload=workload, error=str(exc),
                             reason="left to the worker that claimed the intent")
        raise GpuError(f"GPU instance {workload} could not be recorded ({lost}); it was stopped")

    def _abandon_intent(self, maybe_launched: bool, why: str) -> None:
        with self._lock:
            intent, self._intent = self._intent, None
        if intent is not None:
            self._abandon(intent, maybe_launched, why)

    def _abandon(self, intent: GpuRecord, maybe_launched: bool, why: str) -> None:
        if not maybe_launched:
            try:
                self.registry.delete(intent)
            except RecordLost:
                pass
            return
        # An attempt may have started an instance after all: find it by its expires.
        self.reaper.stop(intent, f"launch failed ({why}); stopping anything it started anyway")

    def _sweep_duplicates(self, record: GpuRecord) -> None:
        try:
            self.reaper.sweep(record.expires, exclude_id=record.id, since=record.created_at)
        except Exception as exc:  # noqa: BLE001 - best effort; the launch itself succeeded
            self.log.warning("gpu.duplicate_check_failed", workload=record.workload, error=str(exc))

    def _choose_expires(self, records: list[GpuRecord]) -> int:
        """now + GPU_LIFETIME, made unique among records: ``expires`` is how an unrecorded
        launch is recognised in the workloads list."""
        taken = {r.expires for r in records}
        expires = int(self.clock()) + self.settings.lifetime
        while expires in taken:
            expires -= 1
        return expires

    def _node(self, record: GpuRecord) -> Node:
        assert record.workload and record.node
        return Node(workload=record.workload, name=record.node, api_key=self.client.api_key,
                    urls=self.settings.node_urls)

    # -- health -------------------------------------------------------------------
    def _health(self, record: GpuRecord, wait: Wait) -> str | None:
        """Listed as running by the workloads API, and the node answers; up to
        GPU_HEALTH_ATTEMPTS attempts. None when healthy, else why not. The listing is
        shared (one control-plane call per GPU_HEALTH_INTERVAL for the whole worker);
        only a retry after "not listed" asks again."""
        base = self._node(record).base_url
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
                return f"workload {record.workload} is no longer listed by the Comput3 workloads API"
            return self.client.node_health(base, self.settings.health_timeout)

        s = self.settings
        return with_attempts(once, s.health_attempts, s.health_retry_delay, wait)

    def _instance_failed(self, node: Node, token: CancelToken, reason: str) -> None:
        message = (f"GPU instance {node.workload} on node {node.name} failed its health check "
                   f"({self.settings.health_attempts} attempts): {reason}; the instance was stopped")
        self.log.error("gpu.unhealthy", workload=node.workload, node=node.name, reason=reason)
        token.cancel(message, Stop.NODE_FAILED)
        self._retire(node.workload, f"failed its health check during a job: {reason}")

    # -- keeping records current ------------------------------------------------
    def _write_current(self, **changes: object) -> GpuRecord | None:
        """Update this worker's record (lock held); forgets it if another worker took it."""
        record = self._current
        assert record is not None
        try:
            self._current = self.registry.update(record, **changes)
        except RecordLost as exc:
            self._current = None
            if exc.current is not None and exc.current.state == RUNNING:
                self.log.info("gpu.handed_over", record=record.id, workload=record.workload,
                              reason=f"{exc}: another worker adopted it while it sat idle")
            elif record.idle:
                self.log.info("gpu.stopped_by_pool", record=record.id, workload=record.workload,
                              reason=f"{exc}: the pool stopped it while it sat idle")
            else:
                self.log.error("gpu.lost", record=record.id, workload=record.workload,
                               reason=f"{exc}: another worker took it over while this one was silent")
        return self._current

    def _idle_if_cancelled(self, record: GpuRecord, token: CancelToken) -> None:
        if not token.cancelled:
            return
        with self._lock:
            if self._current is not None and self._current.id == record.id:
                self._write_current(busy=False, last_used=self.clock())
        token.raise_if_cancelled()

    def _retire(self, workload: str, reason: str) -> bool:
        """Stop this worker's instance (if it still is ours) and delete its record."""
        with self._lock:
            record = self._current
            if record is None or record.workload != workload:
                return False
            self._current = None
            claimed = self.reaper.claim(record, reason)
        self.log.info("gpu.stopping", workload=workload, node=record.node, reason=reason)
        return claimed is not None and self.reaper.finish(claimed)

    def _keep(self) -> None:
        """The keeper thread: the pool's scale-in and scale-out (chalicelib/gpu_pool.py)
        every tick, and at once when a job asks for an instance. Stopping may take long
        (a slow Comput3); heartbeats have their own thread."""
        s = self.settings
        tick = max(0.05, min(2.0, s.surplus_idle / 4, s.idle_timeout / 4))
        while not self._closed.is_set():
            self._nudge.wait(tick)
            self._nudge.clear()
            if self._closed.is_set():
                return
            self._safely(self._pool_pass, "pool pass")

    def _beat(self) -> None:
        """The heartbeat thread: only short registry writes, so no stop, launch or health
        check of this worker can make its records look abandoned."""
        while not self._closed.wait(self.settings.heartbeat_interval):
            self._safely(self._heartbeat, "heartbeat")

    def _safely(self, step: Callable[[], object], what: str) -> None:
        try:
            step()
        except Exception:  # noqa: BLE001 - the keeper must outlive a DynamoDB or Comput3 hiccup
            self.log.error("gpu.keeper_step_failed", step=what, exc_info=True, reason="retried next time")

    def _heartbeat(self) -> None:
        with self._lock:
            if self._current is not None:
                self._write_current(heartbeat=self.clock())
            if self._intent is not None:
                try:
                    self._intent = self.registry.update(self._intent, heartbeat=self.clock())
                except RecordLost as exc:
                    self._intent = None
                    self.log.error("gpu.intent_lost", reason=f"{exc}: another worker is reconciling it")
            for record_id, record in list(self._ahead.items()):
                try:
                    self._ahead[record_id] = self.registry.update(record, heartbeat=self.clock())
                except RecordLost as exc:
                    del self._ahead[record_id]
                    self.log.error("gpu.intent_lost", reason=f"{exc}: another worker is reconciling it")

    def _pool_pass(self) -> None:
        demand = self.demand()
        records = self.registry.all()
        stopped = self.reaper.stop_idle(records, demand)
        if stopped:
            with self._lock:
                if self._current is not None and any(r.serial == self._current.serial for r in stopped):
                    self._current = None
        if demand is not None:
            self._scale_out([r for r in records if r not in stopped], demand)

    # -- launching ahead of the queue ----------------------------------------------
    def _booting_for_pool(self, records: list[GpuRecord]) -> list[str]:
        """Pool launches not yet idle whose launcher is alive: a job waits for one of
        these rather than launch another instance."""
        now = self.clock()
        return [r.id for r in records if r.ahead and not r.idle and r.state in (LAUNCHING, RUNNING)
                and r.silent_for(now) <= self.settings.owner_grace]

    def _scale_out(self, records: list[GpuRecord], demand: Demand) -> None:
        slots, why = slots_to_launch(records, demand, self.settings.max_gpus)
        expires = self._choose_expires(records)
        for position, slot in enumerate(slots):
            if self._closed.is_set():
                return
            try:  # the same lowest free slots (and expires) for every decider: one launch per slot
                intent = self.registry.create_intent(self.worker_id, expires - position,
                                                     self.settings.workload_type, slot, ahead=True)
            except SlotTaken:
                continue
            with self._lock:
                self._ahead[intent.id] = intent
            self.log.info("gpu.pool_launching", record=intent.id, expires=intent.expires, reason=why)
            threading.Thread(target=self._safely, args=(lambda i=intent: self._launch_ahead(i), "pool launch"),
                             name=f"gpu-launch-{slot}", daemon=True).start()

    def _launch_ahead(self, intent: GpuRecord) -> None:
        """Launch, record and boot one instance for the pool, then leave it idle for any job."""
        try:
            launch = self.client.launch(self.settings.workload_type, intent.expires, wait=self._closed.wait)
        except Comput3Error as exc:
            with self._lock:
                intent = self._ahead.pop(intent.id, intent)
            self.log.error("gpu.launch_failed", record=intent.id, error=str(exc), reason="pool launch")
            METRICS.gpu_launch(False, error=str(exc)[:200], pool=True)
            self._abandon(intent, getattr(exc, "maybe_launched", False), str(exc))
            return
        now = self.clock()
        workload, node = launch.workload.workload, launch.workload.node
        METRICS.gpu_launch(True, workload=workload, pool=True)
        with self._lock:
            try:
                record = self.registry.update(self._ahead.pop(intent.id, intent), state=RUNNING, workload=workload,
                                              node=node, launched_at=now, last_used=now, busy=True, heartbeat=now,
                                              metered_at=now)
                self._ahead[record.id] = record
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
            self._sweep_duplicates(record)
        problem = self._await_boot(record, self._closed.wait)
        if self._closed.is_set():
            problem = "the worker began shutting down during the launch"
        with self._lock:
            record = self._ahead.pop(record.id, record)
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


def _no_phase(phase: str) -> None:
    """acquire() without a listener."""
