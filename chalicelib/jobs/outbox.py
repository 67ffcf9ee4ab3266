"""The outbox: every message a job is owed is recorded on the job itself.

A job record carries ``outbox`` (what it is owed) and ``outbox_at`` (by when that
must have shown progress), kept in the same conditional writes that change its
state, and indexed by a sparse GSI:

    queued            -> "dispatch", due created/requeued + grace
    running           -> "dispatch", due lease_expires + grace (renewed with the lease)
    final (any)       -> "notify",   due finished + grace, until its webhook and
                                     event are settled (delivery.py)

The API and the worker send the message right after the write, as before. When a
process dies between the write and the send, or a message is lost, the scheduled
reconciler finds the entry past due and sends it again.

Only what is really missing is re-sent. A queued job whose message was sent (the
sender records it: ``mark_dispatched``) waits in the queue, however long the backlog:
its entry is due again only when that message could have outlived the queue's
retention (``OUTBOX_QUEUED_RESEND`` windows of the job's age, keyed on its creation, so
the index keeps queued jobs in submission order). An entry whose send was never
recorded is due at its creation + grace, and re-sent within one reconcile interval.
A running job's entry (due at its lease + grace: its holder went silent) is re-sent
with growing pauses (grace, 2x, 4x ... up to OUTBOX_MAX_BACKOFF), as is a delivery.
Extra copies are harmless: claims, deliveries and settles are conditional."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from chalicelib.jobs.models import JobStatus
from chalicelib.jobs.lanes import LOW, NORMAL, LaneQueues, lane_now
from chalicelib.jobs.record import Job
from chalicelib.jobs.store import DISPATCH, NOTIFY, JobStore
from chalicelib.platform.logs import get_logger
from chalicelib.platform.queue import JobQueue
from chalicelib.platform.retry import retry_transient

log = get_logger("c3.outbox")


class Outbox:
    """Sends the messages jobs are owed: the job message (to the job's lane, see
    lanes.py) and the delivery message."""

    def __init__(self, jobs_queue: JobQueue, webhooks_queue: JobQueue, lanes: LaneQueues | None = None,
                 clock: Callable[[], float] | None = None, low_max_wait: float = 600.0):
        self.queues = {DISPATCH: jobs_queue, NOTIFY: webhooks_queue}
        self.lanes = lanes
        self.clock = clock
        self.low_max_wait = low_max_wait

    def _queue(self, kind: str, lane: str | None) -> JobQueue:
        if kind == DISPATCH and self.lanes is not None and lane is not None:
            return self.lanes[lane]
        return self.queues[kind]

    def send(self, kind: str, job_id: str, *, delay: int = 0, lane: str | None = None) -> None:
        """Send, retrying transient errors; raises when it still fails."""
        queue = self._queue(kind, lane)
        retry_transient(queue.send, job_id, delay=delay, attempts=4, max_wait=2.0, what=f"send_{kind}")

    def try_send(self, kind: str, job: Job | str, *, delay: int = 0, lane: str | None = None) -> bool:
        """Send, but never raise: a failed send is logged and healed by the reconciler."""
        job_id = job if isinstance(job, str) else job.id
        if lane is None and kind == DISPATCH and isinstance(job, Job):
            lane = self.lane_of(job.priority, job.created_at)
        try:
            self.send(kind, job_id, delay=delay, lane=lane)
            return True
        except Exception as exc:  # noqa: BLE001 - the outbox entry makes this recoverable
            log.error("outbox.send_failed", job_id=job_id, kind=kind, lane=lane,
                      reason=f"{type(exc).__name__}: {exc}; the reconciler re-sends it when due")
            return False

    def lane_of(self, priority: str | None, created_at: float) -> str:
        now = self.clock() if self.clock is not None else created_at
        return lane_now(priority, created_at, now, self.low_max_wait)

    def dispatch(self, job: Job) -> bool:
        return self.dispatch_queued(job.id, job.priority, job.created_at)

    def dispatch_queued(self, job_id: str, priority: str | None, created_at: float) -> bool:
        """A queued job's message, to the lane it is in now; a low job not yet promoted also
        gets its promotion: a copy in the normal lane, delayed until LOW_PRIORITY_MAX_WAIT
        after its submission. True only when every send went out: otherwise the job stays
        owed a dispatch and the reconciler sends both again."""
        lane = self.lane_of(priority, created_at)
        sent = self.try_send(DISPATCH, job_id, lane=lane)
        if lane == LOW and self.lanes is not None:
            now = self.clock() if self.clock is not None else created_at
            wait = max(1, math.ceil(created_at + self.low_max_wait - now))
            sent = self.try_send(DISPATCH, job_id, lane=NORMAL, delay=wait) and sent
        return sent

    def notify(self, job: Job) -> bool:
        """A job became final: queue its delivery (webhook + event)."""
        return self.try_send(NOTIFY, job)


@dataclass
class ReconcileReport:
    resent: dict[str, int] = field(default_factory=lambda: {DISPATCH: 0, NOTIFY: 0})
    failed: int = 0


class Reconciler:
    """Re-sends what past-due outbox entries are owed (run on a schedule)."""

    def __init__(self, store: JobStore, outbox: Outbox, clock: Callable[[], float],
                 grace: float, max_backoff: float, batch: int = 100,
                 handlers: dict[str, Callable[[dict[str, Any]], bool]] | None = None):
        self.store = store
        self.outbox = outbox
        self.clock = clock
        self.grace = grace
        self.max_backoff = max_backoff
        self.batch = batch
        # Other kinds of outbox entries and what a due one gets (a batch: chalicelib/jobs/batches.py).
        self.handlers = handlers or {}

    def next_due(self, sends: int) -> float:
        return self.clock() + min(self.grace * 2 ** min(sends + 1, 20), self.max_backoff)

    def run_once(self) -> ReconcileReport:
        report = ReconcileReport()
        for kind in (DISPATCH, NOTIFY, *self.handlers):
            for entry in self.store.due(kind, self.batch):
                report.failed += not self._resend(kind, entry, report)
        if any(report.resent.values()) or report.failed:
            log.info("outbox.reconciled", resent=report.resent, failed=report.failed)
        return report

    def _resend(self, kind: str, entry: dict[str, Any], report: ReconcileReport) -> bool:
        job_id, sends = entry["id"], int(entry.get("outbox_sends") or 0)
        # Postpone first: the conditional write decides which reconciler sends.
        retry_at = self.next_due(sends)
        if not self.store.postpone(job_id, kind, entry["outbox_at"], retry_at):
            return True
        if kind in self.handlers:
            try:
                ok = self.handlers[kind](entry)
            except Exception as exc:  # noqa: BLE001 - due again after its pause
                log.error("outbox.handler_failed", job_id=job_id, kind=kind,
                          reason=f"{type(exc).__name__}: {exc}; due again after its pause")
                return False
            report.resent[kind] = report.resent.get(kind, 0) + 1
            return ok
        created_at = float(entry.get("created_at") or 0)
        if kind == DISPATCH and entry.get("status") == JobStatus.QUEUED.value:
            ok = self.outbox.dispatch_queued(job_id, entry.get("priority"), created_at)
        elif kind == DISPATCH:  # running, its holder silent: a copy to the lane it is in now
            ok = self.outbox.try_send(kind, job_id, lane=self.outbox.lane_of(entry.get("priority"), created_at))
        else:
            ok = self.outbox.try_send(kind, job_id)
        if ok:
            report.resent[kind] += 1
            log.warning("outbox.resent", job_id=job_id, kind=kind, status=entry.get("status"),
                        resends=sends + 1,
                        reason="past due: its message was never sent, or outlived the queue's retention, "
                               "or its holder went silent")
            if kind == DISPATCH and entry.get("status") == JobStatus.QUEUED.value:
                # Sent now: the copy waits in the queue; none is owed before the next window.
                job = self.store.get(job_id)
                if job is not None:
                    self.store.mark_dispatched(job_id, retry_at, job.created_at)
        return ok
