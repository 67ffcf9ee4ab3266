"""Final-state deliveries, driven by the webhooks queue and the job record.

Each message names a final job. Handling it settles what the job is still owed:

1. its job event (events queue, or its ``reply_to``), once;
2. its webhook, one attempt per message: the attempt is claimed with a conditional
   write (``webhook_lease``), so two copies of the message never POST at the same
   time; a failure schedules the next attempt (a delayed message, WEBHOOK_INTERVAL
   later) until WEBHOOK_ATTEMPTS are spent, then ``webhook: failed``.

The record holds the schedule (attempts, last error, due time), so a handler that
dies loses nothing: its message, or the reconciler, brings the job back."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

from .batch import partial_batch
from .events import EventPublisher
from .job import Job
from .links import ResultLinks
from .logs import get_logger
from .outbox import Outbox
from .results import ResultStore
from .store import NOTIFY, JobStore
from .webhooks import WebhookSender, webhook_payload
from .queue import job_id_of

log = get_logger("c3.delivery")

# How long an attempt may hold the webhook beyond its HTTP timeout.
HOLD_SLACK = 5.0


class DeliveryHandler:
    def __init__(self, store: JobStore, outbox: Outbox, events: EventPublisher | None,
                 webhooks: WebhookSender, results: ResultStore, clock: Callable[[], float],
                 grace: float, links: ResultLinks | None = None):
        self.store = store
        self.outbox = outbox
        self.events = events
        self.webhooks = webhooks
        self.results = results
        self.clock = clock
        self.grace = grace
        self.links = links

    def handle_batch(self, records: Iterable[dict[str, Any]]) -> dict[str, Any]:
        """Lambda SQS records in (delivered concurrently: one slow receiver must not hold
        up the batch); ``batchItemFailures`` out for the ones to deliver again."""
        return partial_batch(records, lambda r: self.handle(r.get("body", "")), log, "delivery.retry",
                             concurrency=10)

    def handle(self, body: str) -> str:
        """Settle one job; returns what happened (for logs and tests)."""
        job_id = job_id_of(body)
        if job_id is None:
            log.warning("delivery.malformed", body=body[:200], reason="no job id; dropped")
            return "malformed"
        job = self.store.get(job_id)
        if job is None or not job.status.is_terminal or job.outbox != NOTIFY:
            return "nothing_owed"
        fields: dict[str, Any] = {}
        event_done = job.event_sent_at is not None
        if not event_done and self.events is not None:
            event_done = self.events.publish(job)
            if event_done:
                fields["event_sent_at"] = self.clock()
        elif self.events is None:
            event_done = True
        if job.webhook != "pending":
            self.store.settle(job.id, fields, done=event_done, next_at=self.clock() + self.grace)
            return "settled" if event_done else "event_pending"
        return self._attempt(job, fields, event_done)

    def _attempt(self, job: Job, fields: dict[str, Any], event_done: bool) -> str:
        held = self.store.take_webhook_lease(job.id, self.webhooks.timeout + HOLD_SLACK)
        if held is None:
            if fields:
                self.store.settle(job.id, fields, done=False)
            current = self.store.get(job.id)
            if current is not None and current.webhook == "pending" and current.webhook_lease:
                # Another attempt holds it (in flight, or its deliverer died mid-call):
                # look again when that hold ends rather than waiting for the reconciler.
                wait = math.ceil(max(0.0, current.webhook_lease - self.clock())) + 1
                self.outbox.try_send(NOTIFY, job.id, delay=wait)
            return "held"
        attempt = held.webhook_attempts
        ok, outcome = self.webhooks.attempt(held.notify_url or "", webhook_payload(held, self.results, self.links), attempt)
        now = self.clock()
        interval = self.webhooks.interval
        if ok:
            fields.update(webhook="delivered")
            self.store.settle(job.id, fields, done=event_done, next_at=now + self.grace,
                              remove=["webhook_lease", "webhook_error"])
            return "delivered"
        fields["webhook_error"] = outcome
        if attempt >= self.webhooks.attempts:
            fields["webhook"] = "failed"
            self.store.settle(job.id, fields, done=event_done, next_at=now + self.grace,
                              remove=["webhook_lease"])
            log.warning("webhook.gave_up", job_id=job.id, attempts=attempt, last_error=outcome,
                        reason="no 2xx answer after every attempt; the job's status is unchanged")
            return "failed"
        # The next attempt: no sooner than most of an interval (even for a duplicate
        # message), and due for the reconciler should the delayed message be lost.
        fields["webhook_lease"] = now + interval * 0.8
        self.store.settle(job.id, fields, done=False, next_at=now + interval + self.grace)
        self.outbox.try_send(NOTIFY, job.id, delay=math.ceil(interval))
        return "retrying"
