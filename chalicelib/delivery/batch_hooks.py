"""The ``batch.completed`` webhook: one per batch, driven by the batch's record.

The completion's conditional write (chalicelib/jobs/batches.py) puts the batch in the outbox
as owed this webhook and sends a message naming it on the webhooks queue; the deliveries
handler, finding no job under that id, hands it here. As for a job's webhook, each
attempt is claimed with a conditional write (``webhook_lease``), so two copies of the
message never POST at once, a refused attempt schedules the next (a delayed message,
WEBHOOK_INTERVAL later) until WEBHOOK_ATTEMPTS are spent, and a lost message is re-sent
by the reconciler. The ``webhook-id`` is ``msg_<batch id>_completed`` on every attempt."""

from __future__ import annotations

import math
from typing import Any, Callable

from chalicelib.delivery.webhooks import WebhookSender
from chalicelib.jobs.batches import Batch, BatchStore
from chalicelib.jobs.outbox import Outbox
from chalicelib.jobs.record import iso
from chalicelib.jobs.store import NOTIFY
from chalicelib.platform.dynamo import Expr
from chalicelib.platform.logs import get_logger

log = get_logger("c3.batch_hooks")
HOLD_SLACK = 5.0


def batch_payload(batch: Batch) -> dict[str, Any]:
    return {"id": batch.id, "type": "batch.completed", "status": "completed",
            "completed_at": iso(batch.completed_at), "total": len(batch.members),
            "counts": batch.counts or {}, "jobs": batch.job_ids}


class BatchHooks:
    def __init__(self, store: BatchStore, outbox: Outbox, webhooks: WebhookSender,
                 clock: Callable[[], float], grace: float):
        self.store = store
        self.outbox = outbox
        self.webhooks = webhooks
        self.clock = clock
        self.grace = grace

    def handle(self, batch_id: str) -> str | None:
        """Deliver the batch's webhook if it is owed; None when ``batch_id`` is no batch."""
        batch = self.store.get(batch_id)
        if batch is None:
            return None
        if batch.outbox != NOTIFY or batch.webhook != "pending":
            return "nothing_owed"
        now = self.clock()
        expr = Expr()
        lease = expr.name("webhook_lease")
        expr.conditions.append(f"{expr.name('webhook')} = {expr.value('pending', 'pending')}")
        expr.conditions.append(f"{expr.name('outbox')} = {expr.value('kind', NOTIFY)}")
        expr.conditions.append(f"attribute_not_exists({lease}) OR {lease} < {expr.value('now', now)}")
        expr.set("webhook_lease", now + self.webhooks.timeout + HOLD_SLACK)
        attempts = expr.name("webhook_attempts")
        expr.sets.append(f"{attempts} = if_not_exists({attempts}, {expr.value('zero', 0)}) + {expr.value('one', 1)}")
        held = self.store.update(batch_id, expr)
        if held is None:
            current = self.store.get(batch_id)
            if current is not None and current.webhook == "pending" and current.webhook_lease:
                self.outbox.try_send(NOTIFY, batch_id, delay=math.ceil(max(0.0, current.webhook_lease - now)) + 1)
            return "held"
        ok, outcome = self.webhooks.attempt(held.notify_url or "", batch_payload(held), held.webhook_attempts)
        now = self.clock()
        expr = Expr()
        expr.conditions.append(f"{expr.name('outbox')} = {expr.value('kind', NOTIFY)}")
        if ok or held.webhook_attempts >= self.webhooks.attempts:
            expr.set("webhook", "delivered" if ok else "failed")
            expr.removes.extend(["outbox", "outbox_at", "webhook_lease"])
            if not ok:
                expr.set("webhook_error", outcome)
                log.warning("batch.webhook_gave_up", batch_id=batch_id, attempts=held.webhook_attempts,
                            last_error=outcome, reason="no 2xx answer after every attempt")
            self.store.update(batch_id, expr)
            return "delivered" if ok else "failed"
        interval = self.webhooks.interval
        expr.set("webhook_error", outcome)
        expr.set("webhook_lease", now + interval * 0.8)
        expr.set("outbox_at", now + interval + self.grace)
        self.store.update(batch_id, expr)
        self.outbox.try_send(NOTIFY, batch_id, delay=math.ceil(interval))
        return "retrying"
