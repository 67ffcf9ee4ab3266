"""Webhook and event deliveries, driven by the webhooks queue and the job record.

Each message names a job. Handling it settles what the job is still owed:

1. its start webhook (``start`` in webhook_events_filter), owed from the first claim,
   which also sends the message; it goes before the final webhook, so a final job
   whose start webhook is still pending delivers that first (the outbox guarantees
   the final job's handling, so a lost start message cannot lose the start webhook);
2. once final, its job event (events queue, or its ``reply_to``), once;
3. its final webhook (``completed``), one attempt per message.

Each webhook attempt is claimed with a conditional write (``<hook>_lease``), so two
copies of the message never POST at the same time; a failure schedules the next
attempt (a delayed message, WEBHOOK_INTERVAL later) until WEBHOOK_ATTEMPTS are spent,
then ``<hook>: failed``. The record holds the schedule (attempts, last error, due
time), so a handler that dies loses nothing: its message, or the reconciler, brings
the job back."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from chalicelib.delivery.batch import partial_batch
from chalicelib.delivery.batch_hooks import BatchHooks
from chalicelib.delivery.events import EventPublisher
from chalicelib.delivery.webhooks import WebhookSender, webhook_payload
from chalicelib.jobs.batches import BatchService
from chalicelib.jobs.links import ResultLinks
from chalicelib.jobs.outbox import Outbox
from chalicelib.jobs.record import Job
from chalicelib.jobs.results import ResultStore
from chalicelib.jobs.store import NOTIFY, JobStore
from chalicelib.platform.logs import get_logger
from chalicelib.platform.metrics import METRICS
from chalicelib.platform.queue import job_id_of

log = get_logger("c3.delivery")

# How much longer the lease of an attempt lasts than its hard deadline (WEBHOOK_TIMEOUT,
# connect + send + whole answer): an attempt always ends inside its lease.
HOLD_SLACK = 5.0


class DeliveryHandler:
    def __init__(self, store: JobStore, outbox: Outbox, events: EventPublisher | None,
                 webhooks: WebhookSender, results: ResultStore, clock: Callable[[], float],
                 grace: float, links: ResultLinks | None = None, batches: BatchService | None = None,
                 batch_hooks: BatchHooks | None = None):
        self.store = store
        self.outbox = outbox
        self.events = events
        self.webhooks = webhooks
        self.results = results
        self.clock = clock
        self.grace = grace
        self.links = links
        # Batches (chalicelib/jobs/batches.py): a member's final delivery checks its batch's
        # completion; a message naming a batch delivers its batch.completed webhook.
        self.batches = batches
        self.batch_hooks = batch_hooks

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
        if job is None and self.batch_hooks is not None:
            outcome = self.batch_hooks.handle(job_id)
            if outcome is not None:
                return f"batch_{outcome}"
        if job is not None and job.start_webhook == "pending":
            started = self._attempt(job, START, {}, True)
            job = self.store.get(job_id)
            if job is not None and job.start_webhook == "pending":
                return f"start_{started}"  # the final webhook waits for the start webhook
        if job is None or not job.status.is_terminal or job.outbox != NOTIFY:
            return "nothing_owed"
        if job.counted_at is None:
            self.store.count_finished(job.id)
        if job.batch_id and self.batches is not None:
            self.batches.check(job.batch_id)
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
        return self._attempt(job, FINAL, fields, event_done)

    def _payload(self, hook: "Hook", job: Job) -> dict[str, Any]:
        if hook is START:
            return {"id": job.id, "status": "running"}
        return webhook_payload(job, self.results, self.links)

    def _record(self, hook: "Hook", job_id: str, fields: dict[str, Any], *, done: bool,
                next_at: float, lease: float, remove: Iterable[str] = ()) -> bool:
        """Record an attempt's outcome, only while the lease this deliverer took is still
        the hook's (False: it lapsed and another deliverer took it over, whose outcome
        counts). The start webhook may be owed by a running job (no outbox entry)."""
        held = (hook.attr, lease)
        if hook is START:
            recorded = self.store.record_hook(job_id, fields, remove=remove, lease=held)
        else:
            recorded = self.store.settle(job_id, fields, done=done, next_at=next_at, remove=remove, lease=held)
        if recorded is None:
            log.warning("webhook.lease_lost", job_id=job_id, hook=hook.event,
                        reason="the attempt outlasted its lease and another deliverer took the webhook; "
                               "this outcome is not recorded")
            if "event_sent_at" in fields:
                self.store.settle(job_id, {"event_sent_at": fields["event_sent_at"]}, done=False)
        return recorded is not None

    def _attempt(self, job: Job, hook: "Hook", fields: dict[str, Any], event_done: bool) -> str:
        name = hook.attr
        held = self.store.take_webhook_lease(job.id, self.webhooks.timeout + HOLD_SLACK, name)
        if held is None:
            if fields:
                self.store.settle(job.id, fields, done=False)
            current = self.store.get(job.id)
            lease = getattr(current, f"{name}_lease", None) if current is not None else None
            if current is not None and getattr(current, name) == "pending" and lease:
                # Another attempt holds it (in flight, or its deliverer died mid-call):
                # look again when that hold ends rather than waiting for the reconciler.
                wait = math.ceil(max(0.0, lease - self.clock())) + 1
                self.outbox.try_send(NOTIFY, job.id, delay=wait)
            return "held"
        attempt = getattr(held, f"{name}_attempts")
        lease = getattr(held, f"{name}_lease")
        ok, outcome = self.webhooks.attempt(held.notify_url or "", self._payload(hook, held), attempt)
        now = self.clock()
        interval = self.webhooks.interval
        if ok:
            fields[name] = "delivered"
            if not self._record(hook, job.id, fields, done=event_done, next_at=now + self.grace, lease=lease,
                                remove=[f"{name}_lease", f"{name}_error"]):
                return "lease_lost"
            METRICS.webhook("delivered", job.id, hook.event)
            return "delivered"
        fields[f"{name}_error"] = outcome
        if attempt >= self.webhooks.attempts:
            fields[name] = "failed"
            if not self._record(hook, job.id, fields, done=event_done, next_at=now + self.grace, lease=lease,
                                remove=[f"{name}_lease"]):
                return "lease_lost"
            METRICS.webhook("gave_up", job.id, hook.event)
            log.warning("webhook.gave_up", job_id=job.id, hook=hook.event, attempts=attempt, last_error=outcome,
                        reason="no 2xx answer after every attempt; the job's status is unchanged")
            return "failed"
        METRICS.webhook("refused", job.id, hook.event)
        # The next attempt: no sooner than most of an interval (even for a duplicate
        # message), and due for the reconciler should the delayed message be lost.
        fields[f"{name}_lease"] = now + interval * 0.8
        if not self._record(hook, job.id, fields, done=False, next_at=now + interval + self.grace, lease=lease):
            return "lease_lost"
        self.outbox.try_send(NOTIFY, job.id, delay=math.ceil(interval))
        return "retrying"


@dataclass(frozen=True)
class Hook:
    """A webhook a job may owe: its webhook_events_filter name and its record attribute."""

    event: str
    attr: str


START = Hook("start", "start_webhook")
FINAL = Hook("completed", "webhook")
