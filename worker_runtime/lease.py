"""One received message as a lease on one job.

The lease lives in two places that are renewed together: the SQS message's
visibility timeout (so the message reappears if this worker dies) and the job
record's ``lease_expires`` (so another worker may take the job over only after
this one has gone silent)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from chalicelib.jobs.record import Job
from chalicelib.jobs.store import JobStore, TransitionConflict
from chalicelib.platform.logs import EventLogger
from chalicelib.platform.queue import Message, Queue


class LeaseLost(Exception):
    """The record says the job is no longer ours: ``current`` tells why."""

    def __init__(self, current: Job | None):
        super().__init__("lease lost")
        self.current = current


class Lease:
    def __init__(self, queue: Queue, store: JobStore, message: Message, job_id: str,
                 worker: str, seconds: int):
        self.queue = queue
        self.store = store
        self.message = message
        self.job_id = job_id
        self.worker = worker
        self.seconds = seconds

    def renew(self) -> Job:
        """Extend both halves; raises LeaseLost when the record moved on (cancel,
        takeover, or the job finished elsewhere)."""
        try:
            job = self.store.renew_lease(self.job_id, self.worker, self.seconds)
        except TransitionConflict as exc:
            raise LeaseLost(exc.current) from exc
        self.queue.set_visibility(self.message.receipt, self.seconds)
        return job

    @contextmanager
    def kept(self, interval: float, log: EventLogger) -> Iterator[None]:
        """Renew every ``interval`` s while the block runs (the result's upload and the final
        write, which take as long as S3 and DynamoDB take): a slow upload never lets the
        lease lapse and another worker take the job over. A lost lease ends the renewals;
        the block's own conditional write then finds out."""
        done = threading.Event()

        def renew() -> None:
            while not done.wait(interval):
                try:
                    self.renew()
                except LeaseLost:
                    log.info("lease.lost_while_finishing", reason="the record moved on; the final write is refused")
                    return
                except Exception as exc:  # noqa: BLE001 - a transient AWS error: retried at the next interval
                    log.warning("lease.renew_failed", reason=f"{type(exc).__name__}: {exc}; retried")

        thread = threading.Thread(target=renew, name=f"lease-{self.job_id[:8]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=interval)

    def ack(self) -> None:
        """The final state is written: the message is done."""
        self.queue.delete(self.message.receipt)

    def release_message(self, delay: int = 0) -> None:
        """Make the message visible again (after ``delay`` seconds)."""
        self.queue.set_visibility(self.message.receipt, delay)
