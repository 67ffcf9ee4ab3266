"""GpuManager: the one object the worker asks for GPU instances.

    acquire(job_id, token, log) -> Node   this worker's running instance, else a new one,
                                  bound to the job: random pre-launch delay -> intent
                                  -> launch -> record -> init wait -> health check
    watch(job_id, node, token)    health monitor while the job runs; on failure it
                                  cancels the job ("node_failed") and stops the instance
    unwatch(job_id)
    release(job_id, node_fault)   the job's task has ended: idle again; stopped when the
                                  node failed it or the instance is past GPU_REFRESH_AFTER
    maintain()                    starts the keeper thread: heartbeats, idle shutdown,
                                  orphan reaping (at start and every GPU_REAP_INTERVAL)
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

from chalicelib.logs import EventLogger, get_logger

from ..cancel import CancelToken
from ..comput3 import Comput3Client, Comput3Error, LaunchAborted, Wait, with_attempts
from ..node import Node
from ..stops import Stop
from ..tasks.base import NodeFault, TaskError
from .monitor import Monitor
from .reaper import Reaper
from .registry import RUNNING, GpuRecord, GpuRegistry, RecordLost
from .settings import GpuSettings


class GpuError(TaskError):
    """No usable GPU instance; the message becomes the job's error verbatim."""


class GpuManager:
    def __init__(self, settings: GpuSettings, client: Comput3Client, registry: GpuRegistry, worker_id: str,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None):
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
        self.reaper = Reaper(client, registry, settings, worker_id, clock, self.log, self._live_ids)
        self._lock = threading.RLock()
        self._current: GpuRecord | None = None  # this worker's launched instance
        self._intent: GpuRecord | None = None  # a launch in flight
        self._monitors: dict[str, Monitor] = {}  # by job id
        self._bound: dict[str, str] = {}  # job id -> workload, from acquire to release
        self._closed = threading.Event()
        self._keeper: threading.Thread | None = None

    # -- what the worker calls ----------------------------------------------------
    def maintain(self) -> None:
        with self._lock:
            if self._keeper is None and not self._closed.is_set():
                self._keeper = threading.Thread(target=self._keep, name="gpu-keeper", daemon=True)
                self._keeper.start()

    def acquire(self, job_id: str, token: CancelToken, log: EventLogger) -> Node:
        """An instance bound to ``job_id`` until ``release(job_id, ...)``. Never one whose
        earlier job's task is still alive: that binding ends only when its task has ended."""
        self.maintain()
        if self._closed.is_set():
            raise GpuError("the worker is shutting down; no GPU instance is launched")
        with self._lock:
            held = [other for other in self._bound if other != job_id]
        if held:
            raise GpuError(f"this worker's GPU instance is still bound to job {held[0]}, whose task "
                           "has not ended; no instance is shared with a live task")
        node = self._reuse(token, log)
        node = node if node is not None else self._launch(token, log)
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
        for monitor in monitors:
            monitor.stop()
        if current is not None:
            self._retire(current.workload, "the worker is shutting down")
        if intent is not None:
            self.log.warning("gpu.launch_in_flight", record=intent.id,
                             reason="a launch is still in flight at shutdown; if it outlives this process, "
                                    "another worker reaps its intent after GPU_OWNER_GRACE")
        if self._keeper is not None:
            self._keeper.join(timeout=5)
        self.log.info("gpu.manager_stopped")

    # -- getting an instance -----------------------------------------------------
    def _reuse(self, token: CancelToken, log: EventLogger) -> Node | None:
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

    def _launch(self, token: CancelToken, log: EventLogger) -> Node:
        s = self.settings
        delay = self.rng.uniform(s.pre_launch_min, s.pre_launch_max)
        log.info("gpu.pre_launch_delay", seconds=round(delay, 2),
                 reason="randomized so that workers starting together do not all launch at once")
        if token.wait(delay):
            token.raise_if_cancelled()
        try:
            intent = self.registry.create_intent(self.worker_id, self._choose_expires(), s.workload_type)
        except ClientError as exc:  # no intent, no launch: an unrecorded instance could be orphaned
            raise GpuError(f"Could not record the GPU launch intent in table {self.registry.table}: "
                           f"{exc.response['Error'].get('Code')}; no GPU was launched") from None
        with self._lock:
            self._intent = intent
        log.info("gpu.launching", record=intent.id, workload_type=s.workload_type, expires=intent.expires,
                 reason="intent recorded first, so a crash mid-launch leaves a trace to reconcile")
        try:
            launch = self.client.launch(s.workload_type, intent.expires, wait=token.wait)
        except Comput3Error as exc:
            self._abandon_intent(getattr(exc, "maybe_launched", False), str(exc))
            if isinstance(exc, LaunchAborted):
                token.raise_if_cancelled()
            log.error("gpu.launch_failed", error=str(exc))
            raise GpuError(str(exc)) from None
        record = self._record_launch(launch.workload.workload, launch.workload.node)
        log.info("gpu.launched", record=record.id, workload=record.workload, node=record.node,
                 launch_attempts=launch.attempts, expires=record.expires)
        if launch.maybe_duplicated:
            self._sweep_duplicates(record)
        if self._closed.is_set():
            self._retire(record.workload, "the worker began shutting down during the launch")
            raise GpuError("the worker is shutting down; the new GPU instance was stopped")
        problem = None
        if not token.wait(s.init_wait):
            problem = self._health(record, token.wait)
        self._idle_if_cancelled(record, token)
        if problem:
            self._retire(record.workload, f"failed its first health check: {problem}")
            raise GpuError(f"New GPU instance {record.workload} on {record.node} failed its health check "
                           f"after launch ({problem}); it was stopped")
        log.info("gpu.ready", workload=record.workload, node=record.node)
        return self._node(record)

    def _record_launch(self, workload: str, node: str) -> GpuRecord:
        now = self.clock()
        with self._lock:
            intent, self._intent = self._intent, None
            try:
                if intent is None:
                    raise RecordLost("launch intent", None)
                self._current = self.registry.update(intent, state=RUNNING, workload=workload, node=node,
                                                     launched_at=now, last_used=now, busy=True, heartbeat=now)
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
        if intent is None:
            return
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
            self.reaper.sweep(record.expires, exclude_id=record.id)
        except Exception as exc:  # noqa: BLE001 - best effort; the launch itself succeeded
            self.log.warning("gpu.duplicate_check_failed", workload=record.workload, error=str(exc))

    def _choose_expires(self) -> int:
        """now + GPU_LIFETIME, made unique among records: ``expires`` is how an unrecorded
        launch is recognised in the workloads list."""
        taken = {r.expires for r in self.registry.all()}
        expires = int(self.clock()) + self.settings.lifetime
        while expires in taken:
            expires -= 1
        return expires

    def _live_ids(self) -> set[str]:
        with self._lock:
            return {r.id for r in (self._current, self._intent) if r is not None}

    def _node(self, record: GpuRecord) -> Node:
        assert record.workload and record.node
        return Node(workload=record.workload, name=record.node, api_key=self.client.api_key,
                    urls=self.settings.node_urls)

    # -- health -------------------------------------------------------------------
    def _health(self, record: GpuRecord, wait: Wait) -> str | None:
        """Listed as running by the workloads API, and the node answers; up to
        GPU_HEALTH_ATTEMPTS attempts. None when healthy, else why not."""
        base = self._node(record).base_url

        def once() -> str | None:
            try:
                listed = any(w.workload == record.workload for w in self.client.workloads())
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
        s = self.settings
        tick = max(0.05, min(1.0, s.heartbeat_interval / 2, s.reap_interval / 2,
                             s.idle_timeout / 4 if s.idle_timeout else 1.0))
        self._safely(self.reaper.reap_pass, "startup reap")
        next_beat = time.monotonic() + s.heartbeat_interval
        next_reap = time.monotonic() + s.reap_interval
        while not self._closed.wait(tick):
            now = time.monotonic()
            if now >= next_beat:
                self._safely(self._heartbeat, "heartbeat")
                next_beat = now + s.heartbeat_interval
            self._safely(self._idle_check, "idle check")
            if now >= next_reap:
                self._safely(self.reaper.reap_pass, "reap")
                next_reap = now + s.reap_interval

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

    def _idle_check(self) -> None:
        with self._lock:
            record = self._current
            if record is None or record.busy or record.last_used is None:
                return
            idle = self.clock() - record.last_used
            if idle < self.settings.idle_timeout:
                return
            # Decided under the lock: acquire() cannot mark it busy in between.
            self._current = None
            reason = f"idle for {idle:.0f} s (GPU_IDLE_TIMEOUT={self.settings.idle_timeout:g})"
            claimed = self.reaper.claim(record, reason)
        self.log.info("gpu.stopping", workload=record.workload, node=record.node, reason=reason)
        if claimed is not None:
            self.reaper.finish(claimed)
