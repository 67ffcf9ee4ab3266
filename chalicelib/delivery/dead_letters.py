"""Jobs whose messages ended in the dead-letter queue are failed (with their webhook
through the outbox), so that no job stays queued or running forever.

Lease-aware: a dead-lettered copy of a job that a worker is still running (its
lease is live) is only a duplicate and is dropped; so is one of a finished job."""

from __future__ import annotations

from typing import Any, Iterable

from chalicelib.delivery.batch import partial_batch
from chalicelib.jobs.outbox import Outbox
from chalicelib.jobs.stats import record_quietly
from chalicelib.jobs.store import JobStore, TransitionConflict
from chalicelib.platform.logs import get_logger
from chalicelib.platform.queue import job_id_of

log = get_logger("c3.dlq")

DEAD_LETTER_ERROR = "Job could not be processed: its message failed {count} deliveries and was moved to the dead-letter queue"


def fail_dead_letter(body: str, receive_count: int, store: JobStore, outbox: Outbox) -> str:
    """Fail the job a dead-lettered message names, if nobody is working on it.
    Returns what happened, for logs and tests; raises on transient AWS errors."""
    outcome = _fail(body, receive_count, store, outbox)
    stats = store.stats
    if stats is not None:  # the operators' page lists the last hour's dead letters
        entry = {"job_id": job_id_of(body) or "", "receive_count": receive_count, "outcome": outcome}
        record_quietly(lambda: stats.incident("dead_letters", entry), "dead_letter", entry["job_id"] or None)
    return outcome


def _fail(body: str, receive_count: int, store: JobStore, outbox: Outbox) -> str:
    job_id = job_id_of(body)
    if job_id is None:
        log.warning("dlq.malformed_message", reason="body has no job id; dropped", body=body[:200])
        return "malformed"
    try:
        job = store.fail_stranded(job_id, DEAD_LETTER_ERROR.format(count=receive_count))
    except TransitionConflict as exc:
        current = exc.current
        state = current.status.value if current else "missing"
        log.info("dlq.dropped", job_id=job_id, state=state, holder=current.worker if current else None,
                 reason="job finished, gone, or still held by a live worker: only a copy died")
        return state
    log.warning("dlq.job_failed", job_id=job_id, receive_count=receive_count,
                reason="no worker holds it and its message kept failing")
    outbox.notify(job)
    return "failed"


def handle_dead_letters(records: Iterable[dict[str, Any]], store: JobStore, outbox: Outbox) -> dict[str, Any]:
    """Lambda SQS records in; ``batchItemFailures`` for the ones a transient error stopped."""
    def one(record: dict[str, Any]) -> str:
        count = int(record.get("attributes", {}).get("ApproximateReceiveCount", "0"))
        return fail_dead_letter(record.get("body", ""), count, store, outbox)

    return partial_batch(records, one, log, "dlq.retry")
