"""A webhook attempt settles only under the lease it took: an attempt that outlived its
lease (another deliverer took the webhook over meanwhile) records nothing. Real moto
server, a real local receiver that holds the first POST's answer."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from chalicelib.context import Context
from chalicelib.delivery.deliveries import DeliveryHandler
from chalicelib.jobs.models import JobStatus
from chalicelib.platform.settings import Settings
from chalicelib.delivery.webhooks import WebhookSender
from tests.support.harness import submit, wait_until

pytestmark = pytest.mark.integration


class HoldingReceiver:
    """Holds the first POST's 200 until ``release``; answers every later POST 500."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.posts = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.posts += 1
                first = receiver.posts == 1
                if first:
                    receiver.release.wait(10)
                self.send_response(200 if first else 500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def deliverer(ctx: Context) -> DeliveryHandler:
    sender = WebhookSender(attempts=5, interval=0.05, timeout=5, allow_private=True)
    return DeliveryHandler(ctx.store, ctx.outbox, None, sender, ctx.results, ctx.clock, 30)


def test_an_attempt_that_outlived_its_lease_records_nothing(stack_env):
    receiver = HoldingReceiver()
    try:
        ctx = Context(Settings(**stack_env))
        job_id = submit(ctx, "csm", {"text": "hi", "notify_url": receiver.url})
        ctx.store.claim(job_id, "w1", 60)
        ctx.store.transition(job_id, JobStatus.SUCCESS, worker="w1", fields={"result_text": "x"})
        body = f'{{"id": "{job_id}"}}'
        first: list[str] = []
        a = threading.Thread(target=lambda: first.append(deliverer(ctx).handle(body)), daemon=True)
        a.start()
        wait_until(lambda: receiver.posts == 1)
        # Later (its clock 60 s on), a second copy finds the first lease lapsed, takes the
        # webhook and gets a 500.
        later = Context(ctx.settings, clock=lambda: time.time() + 60)
        assert deliverer(later).handle(body) == "retrying"
        receiver.release.set()  # the first attempt's 200 arrives, under a lease it no longer holds
        a.join(10)
        assert first == ["lease_lost"]
        job = ctx.store.get(job_id)
        assert (job.webhook, job.webhook_attempts, job.webhook_error) == ("pending", 2, "HTTP 500")
    finally:
        receiver.stop()
