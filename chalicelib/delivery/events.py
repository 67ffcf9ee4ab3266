"""Job events on SQS, for integrations that have no HTTP endpoint.

Every terminal state (and, for queue-submitted jobs, the submission) becomes one
JSON message on the events queue, or on the job's ``reply_to`` queue when it has
one. The body is the webhook payload plus ``type``, ``event_id`` and timestamps:

    {"type": "job.success", "event_id": "<id>:success", "id": ..., "status": "success",
     "result_url" | "text" | "error": ..., "job_type": "csm", "time": "...",
     "created_at": "...", "started_at": "...", "finished_at": "...", ...}

Delivery is at least once: ``event_id`` is stable for a job and state, so a
consumer that sees it twice can drop the copy.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from chalicelib.delivery.webhooks import webhook_payload
from chalicelib.jobs.record import Job, iso
from chalicelib.jobs.results import ResultStore
from chalicelib.platform.logs import get_logger
from chalicelib.platform.queue import Queue

log = get_logger("c3.events")

SUBMITTED = "job.submitted"
REJECTED = "intake.rejected"


def job_event(job: Job, results: ResultStore, now: float) -> dict[str, Any]:
    """A terminal state as an event: the webhook payload plus type and timestamps."""
    event: dict[str, Any] = {
        "type": f"job.{job.status.value}",
        "event_id": f"{job.id}:{job.status.value}",
        **webhook_payload(job, results),
    }
    event.update(_job_fields(job, now))
    return event


def submitted_event(job: Job, now: float) -> dict[str, Any]:
    """The submission of a queue-driven job (what a POST answers, plus timestamps)."""
    event: dict[str, Any] = {
        "type": SUBMITTED,
        "event_id": f"{job.id}:submitted",
        "id": job.id,
        "status": job.status.value,
    }
    event.update(_job_fields(job, now))
    return event


def rejected_event(error: str, details: list[dict[str, str]], now: float,
                   message_id: str | None = None,
                   idempotency_key: str | None = None) -> dict[str, Any]:
    """An intake message that created no job: each detail names a field and the rule it broke."""
    event: dict[str, Any] = {
        "type": REJECTED,
        "event_id": f"{message_id}:rejected" if message_id else None,
        "error": error,
        "details": details,
        "message_id": message_id,
        "idempotency_key": idempotency_key,
        "time": iso(now),
    }
    return {k: v for k, v in event.items() if v is not None}


def _job_fields(job: Job, now: float) -> dict[str, Any]:
    fields = {
        "job_type": job.type.value,
        "source": job.source,
        "idempotency_key": job.idempotency_key,
        "time": iso(now),
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "complete_by": iso(job.complete_by),
        "attempts": job.attempts,
    }
    return {k: v for k, v in fields.items() if v is not None}


class EventPublisher:
    """Sends events to the events queue or to a job's ``reply_to`` queue (a name or URL).

    ``publish`` is what the job service, the worker's notifier and the DLQ handler
    call: it logs failures and never raises, because an event that could not be sent
    must not change a job's state. ``send`` raises, for callers that retry (intake)."""

    def __init__(self, sqs: Any, events_queue: str, results: ResultStore,
                 clock: Callable[[], float] = time.time):
        self._sqs = sqs
        self._results = results
        self._clock = clock
        self.events_queue = events_queue
        self._queues: dict[str, Queue] = {}
        self._lock = threading.Lock()

    def queue_for(self, reply_to: str | None) -> Queue:
        name = reply_to or self.events_queue
        with self._lock:
            if name not in self._queues:
                self._queues[name] = Queue(self._sqs, name)
            return self._queues[name]

    def send(self, event: dict[str, Any], reply_to: str | None = None) -> str:
        queue = self.queue_for(reply_to)
        message_id = queue.send_json(event)
        log.info("event.sent", job_id=event.get("id"), type=event["type"], queue=queue.name,
                 message_id=message_id)
        return message_id

    def publish(self, job: Job) -> bool:
        """Publish a job's current (terminal) state; True once SQS accepted it.

        A ``reply_to`` queue that refuses the event (deleted, no permission) does not
        lose it: the event goes to the events queue instead."""
        event = job_event(job, self._results, self._clock())
        targets = [job.reply_to, None] if job.reply_to else [None]
        for target in targets:
            try:
                self.send(event, target)
                return True
            except Exception as exc:  # noqa: BLE001 - never let an event failure touch the job
                log.error("event.send_failed", job_id=job.id, status=job.status.value,
                          queue=target or self.events_queue,
                          reason=f"{type(exc).__name__}: {exc}",
                          next="falling back to the events queue" if target else "event dropped")
        return False

    def submitted(self, job: Job) -> str:
        """Announce a queue-driven submission; raises so the intake message is retried."""
        return self.send(submitted_event(job, self._clock()), job.reply_to)

    def rejected(self, event: dict[str, Any], reply_to: str | None) -> str:
        return self.send(event, reply_to)
