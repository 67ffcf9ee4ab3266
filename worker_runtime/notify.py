"""Final-state notifications, delivered off the main loop.

Only the writer that won a job's terminal transition calls ``job_finished``, so
each job gets exactly one final webhook (and one completion event)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from chalicelib.job import Job
from chalicelib.logs import get_logger
from chalicelib.results import ResultStore
from chalicelib.webhooks import WebhookSender, webhook_payload

log = get_logger("c3.notify")


class Notifier:
    def __init__(self, webhooks: WebhookSender, results: ResultStore, events: Any = None,
                 threads: int = 4):
        self.webhooks = webhooks
        self.results = results
        self.events = events
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="webhook")
        self._pending: set[Any] = set()

    def job_finished(self, job: Job) -> None:
        if self.events is not None:
            try:
                self.events.publish(job)
            except Exception:  # noqa: BLE001 - an event failure must not affect the job
                log.error("events.publish_failed", job_id=job.id, exc_info=True)
        if job.notify_url:
            payload = webhook_payload(job, self.results)
            future = self._pool.submit(self.webhooks.deliver, job.notify_url, payload)
            self._pending.add(future)
            future.add_done_callback(self._pending.discard)

    def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` for deliveries in flight; returns how many remain."""
        _, not_done = wait(list(self._pending), timeout=timeout)
        self._pool.shutdown(wait=False, cancel_futures=False)
        return len(not_done)
