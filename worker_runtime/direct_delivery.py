"""A final job's webhook and event, straight from the worker that wrote the final state.

The webhooks queue stays the durable path; this only takes the hop through it (the send,
the deliverer's receive) off the common case. The winner of the final write:

1. sends the job's delivery message with a delay of the longest an attempt may hold the
   webhook lease (WEBHOOK_TIMEOUT + HOLD_SLACK) plus SETTLE_MARGIN: should this
   process die before or during its attempt, the deliverer takes the job from there (and
   the job's outbox entry brings it back to the reconciler should that message be lost);
2. hands the job to the deliveries handler (chalicelib/delivery/deliveries.py) in a thread
   of its own, at once: the same code the deliverer runs, so the same conditional webhook
   lease means one attempt POSTs at a time, a delivered webhook is never sent again, and a
   refused attempt schedules the next one on the queue as any other.

The fallback message that finds the job settled finds nothing owed and is dropped. A batch
member's delivery also completes its batch (chalicelib/jobs/batches.py), which is the
deliverer's: the worker queues those at once instead (worker_runtime/worker.py)."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from chalicelib.delivery.deliveries import HOLD_SLACK, DeliveryHandler
from chalicelib.delivery.events import EventPublisher
from chalicelib.delivery.webhooks import WebhookSender
from chalicelib.jobs.record import Job
from chalicelib.jobs.store import NOTIFY
from chalicelib.platform.logs import get_logger

log = get_logger("c3.worker.delivery")
SETTLE_MARGIN = 20.0  # seconds past the attempt's lease before the fallback copy is delivered


class DirectDelivery:
    def __init__(self, handler: DeliveryHandler, outbox: Any, webhook_timeout: float, threads: int = 2):
        self.handler = handler
        self.outbox = outbox
        # SQS: 900 s at most. Past the attempt's lease, the margin leaves the direct attempt's
        # settle write time to land (its throttle retries, a descheduled thread on a loaded
        # host) before the fallback may find the lease lapsed and send an accepted webhook again.
        self.fallback_delay = min(900, math.ceil(webhook_timeout + HOLD_SLACK + SETTLE_MARGIN))
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="deliver")

    def final(self, job: Job) -> None:
        """``job`` was just made final by this process (its outbox entry says notify)."""
        self.outbox.try_send(NOTIFY, job, delay=self.fallback_delay)
        self._pool.submit(self._deliver, job.id)

    def _deliver(self, job_id: str) -> None:
        try:
            outcome = self.handler.handle(json.dumps({"id": job_id}))  # the queue message's body
        except Exception as exc:  # noqa: BLE001 - the fallback message delivers it
            log.warning("delivery.direct_failed", job_id=job_id,
                        reason=f"{type(exc).__name__}: {exc}; the delayed queue message delivers it")
            return
        log.info("delivery.direct", job_id=job_id, outcome=outcome)

    def close(self) -> None:
        """At the worker's exit: attempts in flight end (within WEBHOOK_TIMEOUT, each attempt's
        hard deadline); queued ones are dropped (their delayed messages deliver them)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def build_direct_delivery(ctx: Any) -> DirectDelivery:
    """The deliveries handler as the API's app builds it (chalicelib/api/routes.py), on the
    worker's clients."""
    s = ctx.settings
    events = EventPublisher(ctx.sqs, s.events_queue, ctx.results, ctx.clock)
    webhooks = WebhookSender(s.webhook_attempts, s.webhook_interval, s.webhook_timeout, s.webhook_secret,
                             allow_private=s.allow_private_urls)
    handler = DeliveryHandler(ctx.store, ctx.outbox, events, webhooks, ctx.results, ctx.clock,
                              s.outbox_grace, ctx.links)
    return DirectDelivery(handler, ctx.outbox, s.webhook_timeout)
