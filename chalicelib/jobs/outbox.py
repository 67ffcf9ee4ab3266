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

from dataclasses import dataclass, field
from typing import Any, Callable

from chalicelib.jobs.models import JobStatus
from chalicelib.jobs.record import Job
from chalicelib.jobs.store import DISPATCH, NOTIFY, JobStore
from chalicelib.platform.logs import get_logger
from chalicelib.platform.queue import JobQueue
from chalicelib.platform.retry import retry_transient

log = get_logger("c3.outbox")


class Outbox:
    """Sends the messages jobs are owed: the job message and the delivery message."""

    def __init__(self, jobs_queue: JobQueue, webhooks_queue: JobQueue):
        self.queues = {DISPATCH: jobs_queue, NOTIFY: webhooks_queue}

    def send(self, kind: str, job_id: str, *, delay: int = 0) -> None:
        """Send, retrying transient errors; raises when it still fails."""
        queue = self.queues[kind]
        retry_transient(queue.send, job_id, delay=delay, attempts=4, max_wait=2.0, what=f"send_{kind}")

    def try_send(self, kind: str, job: Job | str, *, delay: int = 0) -> bool:
        """Send, but never raise: a failed send is logged and healed by the reconciler."""
        job_id = job if isinstance(job, str) else job.id
        try:
            self.send(kind, job_id, delay=delay)
            return True
        except Exception as exc:  # noqa: BLE001 - the outbox entry makes this recoverable
            log.error("outbox.send_failed", job_id=job_id, kind=kind,
                      reason=f"{type(exc).__name__}: {exc}; the reconciler re-sends it when due")
            return False

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
                 grace: float, max_backoff: float, batch: int = 100):
        self.store = store
        self.outbox = outbox
        self.clock = clock
        self.grace = grace
        self.max_backoff = max_backoff
        self.batch = batch

    def next_due(self, sends: int) -> float:
        return self.clock() + min(self.grace * 2 ** min(sends + 1, 20), self.max_backoff)

    def run_once(self) -> ReconcileReport:
        report = ReconcileReport()
        for kind in (DISPATCH, NOTIFY):
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
