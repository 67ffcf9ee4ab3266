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

from chalicelib.jobs.links import ResultLinks
from chalicelib.jobs.models import JobStatus
from chalicelib.jobs.record import Job
from chalicelib.jobs.results import ResultStore, result_fields
from chalicelib.platform.egress import egress_session
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
        try:
            resp = self._session.post(url, data=body, headers=headers, timeout=self.timeout,
                                      allow_redirects=False)
            ok, outcome = 200 <= resp.status_code < 300, f"HTTP {resp.status_code}"
        except requests.RequestException as exc:
            ok, outcome = False, f"{type(exc).__name__}: {exc}"[:500]
        log.info("webhook.attempt", job_id=payload["id"], status=payload["status"], attempt=attempt,
                 of=self.attempts, delivered=ok, outcome=outcome,
                 seconds=round(self._clock() - started, 3))
        return ok, outcome
