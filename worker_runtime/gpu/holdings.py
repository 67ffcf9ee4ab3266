"""What one worker holds in the GPU registry, and the one lock over it.

The locking rule, for every part of the worker's GPU code (manager, keeper, heartbeat,
monitor callbacks): ``Holdings.lock`` guards ``current``, ``intents`` and ``ahead`` and every
registry write about them, so no thread acts on a stale record version. Comput3 calls that
may take long (launch, stop, health checks) happen outside the lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from chalicelib.fleet.registry import RUNNING, GpuRecord, GpuRegistry, RecordLost
from chalicelib.platform.logs import EventLogger


@dataclass
class Holdings:
    registry: GpuRegistry
    log: EventLogger
    lock: threading.RLock = field(default_factory=threading.RLock)
    current: GpuRecord | None = None  # this worker's launched instance
    # Launches in flight for jobs, by job id: one per job, so a cancelled job's launch that
    # answers late never takes the intent of the next job's launch.
    intents: dict[str, GpuRecord] = field(default_factory=dict)
    ahead: dict[str, GpuRecord] = field(default_factory=dict)  # launches for the pool (no job yet), until they boot
    # Instances busy with a cancelled job's work (by record id), until it ends: no job gets them.
    draining: dict[str, GpuRecord] = field(default_factory=dict)

    def write_current(self, **changes: object) -> GpuRecord | None:
        """Update this worker's record (lock held); forgets it if another worker took it."""
        record = self.current
        assert record is not None
        try:
            self.current = self.registry.update(record, **changes)
        except RecordLost as exc:
            self.current = None
            if exc.current is not None and exc.current.state == RUNNING:
                self.log.info("gpu.handed_over", record=record.id, workload=record.workload,
                              reason=f"{exc}: another worker adopted it while it sat idle")
            elif record.idle:
                self.log.info("gpu.stopped_by_pool", record=record.id, workload=record.workload,
                              reason=f"{exc}: the pool stopped it while it sat idle")
            else:
                self.log.error("gpu.lost", record=record.id, workload=record.workload,
                               reason=f"{exc}: another worker took it over while this one was silent")
        return self.current

    def forget_stopped(self, stopped: list[GpuRecord]) -> None:
        """The pool stopped some idle instances: this worker no longer holds any of them."""
        with self.lock:
            if self.current is not None and any(r.serial == self.current.serial for r in stopped):
                self.current = None
