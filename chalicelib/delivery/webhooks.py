"""Webhook payloads and delivery (retries, Standard Webhooks signatures).

Delivery failures are logged and returned, never raised: a receiver that is down
must not change a job's status.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any, Callable

import requests
from urllib3.exceptions import HTTPError

from chalicelib.jobs.links import ResultLinks
from chalicelib.jobs.models import JobStatus
from chalicelib.jobs.record import Job
from chalicelib.jobs.results import ResultStore, result_fields
from chalicelib.platform.egress import AddressRefused, Deadline, DeadlineExceeded, egress_session
from chalicelib.platform.logs import get_logger

log = get_logger("c3.webhooks")


def webhook_payload(job: Job, results: ResultStore, links: ResultLinks | None = None) -> dict[str, Any]:
    """The seed's payload: result_url (media) or text on success, error otherwise."""
    payload: dict[str, Any] = {"id": job.id, "status": job.status.value}
    if job.status is JobStatus.SUCCESS:
        payload.update(result_fields(job, results, links))
    else:
        payload["error"] = job.error or f"Job {job.status.value}"
    return payload


def _secret_bytes(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):])
    return secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """``webhook-signature`` value per the Standard Webhooks spec (v1, HMAC-SHA256)."""
    digest = hmac.new(
        _secret_bytes(secret), f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256
    ).digest()
    return "v1," + base64.b64encode(digest).decode()


class WebhookSender:
    def __init__(
        self,
        attempts: int = 5,
        interval: float = 5.0,
        timeout: float = 10.0,
        secret: str | None = None,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
        allow_private: bool = True,
    ):
        self.attempts = attempts
        self.interval = interval
        self.timeout = timeout
        self.secret = secret
        self._session = session or egress_session(allow_private)
        self._clock = clock

    def attempt(self, url: str, payload: dict[str, Any], attempt: int = 1) -> tuple[bool, str]:
        """One POST of ``payload``: (delivered, outcome). Retries are the caller's:
        they are driven by durable state (see chalicelib/delivery/deliveries.py), not by a loop here."""
        body = json.dumps(payload, separators=(",", ":"))
        # The id stays the same across attempts so a receiver can deduplicate.
        msg_id = f"msg_{payload['id']}_{payload['status']}"
        headers = {"Content-Type": "application/json", "User-Agent": "c3-render-webhook/1",
                   "webhook-id": msg_id}
        if self.secret:
            ts = int(self._clock())
            headers.update({"webhook-timestamp": str(ts),
                            "webhook-signature": sign(self.secret, msg_id, ts, body)})
        started = self._clock()
        # One hard deadline for connect + send + the whole answer: a receiver that
        # trickles its answer cannot hold the call past it (and so past the lease).
        deadline = Deadline(self.timeout)
        try:
            with deadline:
                with self._session.post(url, data=body, headers=headers, stream=True, allow_redirects=False,
                                        timeout=(deadline.left(), deadline.left())) as resp:
                    resp.raw.read(ANSWER_BYTES)  # the answer, read (a bounded part of it)
            if deadline.expired:  # the body's read was cut short by the deadline
                raise DeadlineExceeded(f"answer not complete within {self.timeout:g} s")
            ok, outcome = 200 <= resp.status_code < 300, f"HTTP {resp.status_code}"
            detail = outcome
        except (requests.RequestException, OSError, HTTPError) as exc:
            if deadline.expired and not isinstance(exc, AddressRefused):
                exc = DeadlineExceeded(str(exc))
            ok, outcome, detail = False, tenant_outcome(exc, self.timeout), _detail(exc)
        log.info("webhook.attempt", job_id=payload["id"], status=payload["status"], attempt=attempt,
                 of=self.attempts, delivered=ok, outcome=outcome, detail=detail,
                 seconds=round(self._clock() - started, 3))
        return ok, outcome


ANSWER_BYTES = 64 * 1024  # how much of a receiver's answer is read; the rest is not waited for


def tenant_outcome(exc: Exception, timeout: float) -> str:
    """What ``webhook.last_error`` says of a failed POST: the field and the rule, never
    the address it resolved to, whether a port was open, or the library's message
    (those are in the log line's ``detail``)."""
    if isinstance(exc, AddressRefused):
        return f"notify_url: {exc}"
    if isinstance(exc, requests.Timeout):
        return f"notify_url: no complete answer within {timeout:g} s"
    return "notify_url: the connection failed or broke off"


def _detail(exc: Exception) -> str:
    text = exc.detail if isinstance(exc, AddressRefused) else str(exc)
    return f"{type(exc).__name__}: {text}"[:500]
