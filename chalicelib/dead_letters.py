"""Jobs whose messages ended in the dead-letter queue are failed, with a webhook,
so that no job stays queued or running forever."""

from __future__ import annotations

import json

from .logs import get_logger
from .models import JobStatus
from .store import JobStore, TransitionConflict
from .webhooks import WebhookSender, webhook_payload
from .results import ResultStore

log = get_logger("c3.dlq")

DEAD_LETTER_ERROR = "Job could not be processed: its message failed {count} deliveries and was moved to the dead-letter queue"


def fail_dead_letter(
    body: str, receive_count: int, store: JobStore, results: ResultStore, webhooks: WebhookSender,
    events: object | None = None,
) -> str:
    """Fail the job a dead-lettered message names. Returns what happened, for logs and tests."""
    try:
        job_id = json.loads(body).get("id")
    except (ValueError, AttributeError):
        job_id = None
    if not isinstance(job_id, str):
        log.warning("dlq.malformed_message", reason="body has no job id; dropped", body=body[:200])
        return "malformed"
    try:
        job = store.transition(
            job_id,
            JobStatus.FAILED,
            from_states=[JobStatus.QUEUED, JobStatus.RUNNING],
            fields={"error": DEAD_LETTER_ERROR.format(count=receive_count)},
        )
    except TransitionConflict as exc:
        state = exc.current.status.value if exc.current else "missing"
        log.info("dlq.already_final", job_id=job_id, state=state,
                 reason="job already finished or gone; nothing to fail")
        return state
    log.warning("dlq.job_failed", job_id=job_id, receive_count=receive_count)
    if events is not None:
        events.publish(job)  # type: ignore[attr-defined]
    if job.notify_url:
        webhooks.deliver(job.notify_url, webhook_payload(job, results))
    return "failed"
