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
then ``<hook>: failed``. WEBHOOK_SCHEDULE may set another schedule (chalicelib/platform/retry_schedule.py);
a 429/503's Retry-After stretches a wait; a 410 Gone ends every webhook of the job. Each
attempt is appended to the job's ``deliveries`` log in the same write. A redelivery
(``JobStore.redeliver``) makes a hook pending again, with a new round of attempts, and
puts the job back in the outbox. The record holds the schedule (attempts, last error, due
time), so a handler that dies loses nothing: its message, or the reconciler, brings
the job back."""

from __future__ import annotations

import math
import random
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
from chalicelib.jobs.usage import UsageBook
from chalicelib.platform.logs import get_logger
from chalicelib.platform.metrics import METRICS
from chalicelib.platform.queue import job_id_of
from chalicelib.platform.retry_schedule import MAX_MESSAGE_DELAY, RetrySchedule, hold_for

log = get_logger("c3.delivery")

# How much longer the lease of an attempt lasts than its hard deadline (WEBHOOK_TIMEOUT,
# connect + send + whole answer): an attempt always ends inside its lease.
HOLD_SLACK = 5.0


class DeliveryHandler:
    def __init__(self, store: JobStore, outbox: Outbox, events: EventPublisher | None,
                 webhooks: WebhookSender, results: ResultStore, clock: Callable[[], float],
                 grace: float, links: ResultLinks | None = None, batches: BatchService | None = None,
                 batch_hooks: BatchHooks | None = None, schedule: RetrySchedule | None = None,
                 rng: random.Random | None = None, usage: UsageBook | None = None):
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
        self.schedule = schedule or RetrySchedule.parse("seed", webhooks.attempts, webhooks.interval)
        self.rng = rng or random.Random()
        self.usage = usage

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
        if job.counted_at is None and self.store.count_finished(job.id):
            self._account(job)
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

    def _account(self, job: Job) -> None:
        """The job's cost, counted once with JobsFinished: its key's usage for the day
        (GET /usage) and its billed GPU seconds per instance type in the metrics. A failure
        is logged, never a reason to hold up the delivery."""
        cost = job.cost_view()
        if cost["instance_type"]:
            METRICS.job_billed(cost["instance_type"], cost["billed_gpu_seconds"], job.id)
        if self.usage is None:
            return
        try:
            self.usage.record(job)
        except Exception as exc:  # noqa: BLE001 - usage is bookkeeping; the webhook still goes out
            log.error("usage.record_failed", job_id=job.id, reason=f"{type(exc).__name__}: {exc}; "
                      "GET /usage misses this job")

    def _payload(self, hook: "Hook", job: Job) -> dict[str, Any]:
        if hook is START:
            return {"id": job.id, "status": "running"}
        return webhook_payload(job, self.results, self.links)

    def _record(self, hook: "Hook", job_id: str, fields: dict[str, Any], *, done: bool,
                next_at: float, lease: float | None, remove: Iterable[str] = (),
                attempt: dict[str, Any] | None = None) -> bool:
        """Record an attempt's outcome (``attempt``: its entry in the job's delivery log), only
        while the lease this deliverer took is still the hook's (False: it lapsed and another
        deliverer took it over, whose outcome counts; None: no lease was taken). The start
        webhook may be owed by a running job (no outbox entry)."""
        held = (hook.attr, lease) if lease is not None else None
        if hook is START:
            recorded = self.store.record_hook(job_id, fields, remove=remove, lease=held, attempt=attempt)
        else:
            recorded = self.store.settle(job_id, fields, done=done, next_at=next_at, remove=remove, lease=held,
                                         attempt=attempt)
        if recorded is None:
            log.warning("webhook.lease_lost", job_id=job_id, hook=hook.event,
                        reason="the attempt outlasted its lease and another deliverer took the webhook; "
                               "this outcome is not recorded")
            if "event_sent_at" in fields:
                self.store.settle(job_id, {"event_sent_at": fields["event_sent_at"]}, done=False)
        return recorded is not None

    def _attempt(self, job: Job, hook: "Hook", fields: dict[str, Any], event_done: bool) -> str:
        name = hook.attr
        if job.webhook_gone_at is not None:
            # The receiver answered 410 Gone to an earlier attempt: none of the job's webhooks is tried again.
            fields[name] = "failed"
            self._record(hook, job.id, fields, done=event_done, next_at=self.clock() + self.grace, lease=None,
                         remove=[f"{name}_lease"])
            return "gone"
        held = self.store.take_webhook_lease(job.id, self.webhooks.timeout + HOLD_SLACK, name)
        if held is None:
            if fields:
                self.store.settle(job.id, fields, done=False)
            current = self.store.get(job.id)
            lease = getattr(current, f"{name}_lease", None) if current is not None else None
            if current is not None and getattr(current, name) == "pending" and lease:
                # Another attempt holds it (in flight, or its deliverer died mid-call), or the
                # next attempt is not due yet: look again when that hold ends (a chain of
                # delayed messages for waits beyond SQS's longest delay).
                wait = min(MAX_MESSAGE_DELAY, math.ceil(max(0.0, lease - self.clock())) + 1)
                self.outbox.try_send(NOTIFY, job.id, delay=wait)
            return "held"
        attempt = getattr(held, f"{name}_attempts")
        lease = getattr(held, f"{name}_lease")
        in_round = attempt - (getattr(held, f"{name}_base") or 0)
        result = self.webhooks.deliver(held.notify_url or "", self._payload(hook, held), attempt)
        now = self.clock()
        entry: dict[str, Any] = {"at": now, "event": hook.event, "attempt": attempt,
                                 "webhook_id": result.webhook_id, "seconds": result.seconds}
        if result.status is not None:
            entry["status"] = result.status
        if result.error is not None:
            entry["error"] = result.error
        if result.ok:
            fields[name] = "delivered"
            entry["outcome"] = "delivered"
            if not self._record(hook, job.id, fields, done=event_done, next_at=now + self.grace, lease=lease,
                                remove=[f"{name}_lease", f"{name}_error"], attempt=entry):
                return "lease_lost"
            METRICS.webhook("delivered", job.id, hook.event)
            return "delivered"
        fields[f"{name}_error"] = result.outcome
        delay = None if result.gone else self.schedule.delay_after(in_round, self.rng)
        if delay is None:
            fields[name] = "failed"
            if result.gone:
                fields["webhook_gone_at"] = now
                for other in HOOKS_BY_ATTR.values():  # nothing more for this receiver from this job
                    if other is not hook and getattr(held, other.attr) == "pending":
                        fields[other.attr] = "failed"
                        fields[f"{other.attr}_error"] = "not sent: the receiver answered 410 Gone"
            entry["outcome"] = "gone" if result.gone else "failed"
            if not self._record(hook, job.id, fields, done=event_done, next_at=now + self.grace, lease=lease,
                                remove=[f"{name}_lease"], attempt=entry):
                return "lease_lost"
            METRICS.webhook("gave_up", job.id, hook.event)
            log.warning("webhook.gave_up", job_id=job.id, hook=hook.event, attempts=attempt, last_error=result.outcome,
                        reason="the receiver answered 410 Gone: no more attempts for this job" if result.gone
                        else "no 2xx answer after every attempt of the schedule; the job's status is unchanged")
            return "gone" if result.gone else "failed"
        METRICS.webhook("refused", job.id, hook.event)
        if result.retry_after is not None and result.retry_after > delay:
            delay = result.retry_after  # the receiver's Retry-After (429/503), when longer
        # The next attempt: held off for most of the delay (even against a duplicate
        # message), and due for the reconciler should the delayed message be lost.
        due = now + delay
        fields[f"{name}_lease"] = now + hold_for(delay)
        entry["outcome"] = "retrying"
        entry["next_attempt_at"] = due
        if not self._record(hook, job.id, fields, done=False, next_at=due + self.grace, lease=lease, attempt=entry):
            return "lease_lost"
        self.outbox.try_send(NOTIFY, job.id, delay=min(MAX_MESSAGE_DELAY, math.ceil(delay)))
        return "retrying"


@dataclass(frozen=True)
class Hook:
    """A webhook a job may owe: its webhook_events_filter name and its record attribute."""

    event: str
    attr: str


START = Hook("start", "start_webhook")
FINAL = Hook("completed", "webhook")
HOOKS_BY_ATTR = {hook.attr: hook for hook in (START, FINAL)}
