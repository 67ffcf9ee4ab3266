"""Where a running job is: its phase and the node's progress, written to the job record
from the worker process without ever holding up the task.

    downloading -> [waiting_for_gpu | waiting_for_node] -> [launching_gpu] -> rendering -> uploading

The claim enters "downloading" (chalicelib/jobs/store.py); the GPU task and the manager report
the rest through ``TaskContext.report`` (from a task's child process, through its pipe:
worker_runtime/isolation.py). A background thread writes them: every phase change as one
conditional UpdateItem (the job still running and held by this worker), progress at most
once per PROGRESS_INTERVAL, only the latest value. A write that fails is logged and
dropped: where a job is never decides how it ends."""

from __future__ import annotations

import math
import threading
import time
from typing import Callable

from chalicelib.jobs.store import JobStore, TransitionConflict
from chalicelib.platform.logs import EventLogger

PROGRESS_INTERVAL = 2.0


class PhaseReporter:
    def __init__(self, store: JobStore, job_id: str, worker: str, log: EventLogger,
                 interval: float = PROGRESS_INTERVAL, monotonic: Callable[[], float] = time.monotonic):
        self.store = store
        self.job_id = job_id
        self.worker = worker
        self.log = log
        self.interval = interval
        self.monotonic = monotonic
        self._cv = threading.Condition()
        self._phases: list[str] = []
        self._last_phase: str | None = None
        self._progress: float | None = None
        self._progress_due = -math.inf
        self._writing = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"phases-{job_id[:8]}")
        self._thread.start()

    def report(self, phase: str | None = None, progress: float | None = None) -> None:
        """Never blocks: the write happens on the reporter's thread."""
        with self._cv:
            if phase is not None and phase != self._last_phase:
                self._last_phase = phase
                self._phases.append(phase)
                self._progress = None  # progress belongs to the phase it was reported in
            if progress is not None:
                self._progress = min(1.0, max(0.0, float(progress)))
            self._cv.notify()

    def close(self, timeout: float = 2.0) -> None:
        """Write what is pending (waiting at most ``timeout``), then stop."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                phase, progress = self._next()
                while phase is None and progress is None:
                    if self._closed:
                        return
                    wait = None if self._progress is None else max(0.01, self._progress_due - self.monotonic())
                    self._cv.wait(wait)
                    phase, progress = self._next()
            self._write(phase, progress)

    def _next(self) -> tuple[str | None, float | None]:
        """The next write (lock held): a phase change first, else progress when due."""
        if self._phases:
            return self._phases.pop(0), None
        if self._progress is not None and (self.monotonic() >= self._progress_due or self._closed):
            progress, self._progress = self._progress, None
            self._progress_due = self.monotonic() + self.interval
            return None, progress
        return None, None

    def _write(self, phase: str | None, progress: float | None) -> None:
        try:
            self.store.mark_phase(self.job_id, self.worker, phase, progress)
        except TransitionConflict as exc:
            state = exc.current.status.value if exc.current else "missing"
            self.log.info("job.phase_skipped", phase=phase, progress=progress, state=state,
                          reason="the job is no longer running under this worker")
        except Exception as exc:  # noqa: BLE001 - never fails the job
            self.log.warning("job.phase_write_failed", phase=phase, progress=progress,
                             reason=f"{type(exc).__name__}: {exc}; the job goes on")

