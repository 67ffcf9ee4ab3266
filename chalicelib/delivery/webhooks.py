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
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Callable

import requests
from urllib3.exceptions import HTTPError

from chalicelib.jobs.links import ResultLinks
from chalicelib.jobs.models import JobStatus
from chalicelib.jobs.record import Job, webhook_id
from chalicelib.jobs.results import ResultStore, result_fields
from chalicelib.platform.egress import AddressRefused, Deadline, DeadlineExceeded, egress_session
from chalicelib.platform.logs import get_logger

log = get_logger("c3.webhooks")


def webhook_payload(job: Job, results: ResultStore, links: ResultLinks | None = None) -> dict[str, Any]:
    """The seed's payload: result_url (media) or text on success, error otherwise; and the
    job's cost receipt."""
    payload: dict[str, Any] = {"id": job.id, "status": job.status.value}
    if job.status is JobStatus.SUCCESS:
        payload.update(result_fields(job, results, links))
    else:
        payload["error"] = job.error or f"Job {job.status.value}"
    if job.status.is_terminal:
        payload["cost"] = job.cost_view()
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


# A receiver's Retry-After is honoured up to this many seconds.
MAX_RETRY_AFTER = 86400.0


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP-date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, when - now), MAX_RETRY_AFTER)


@dataclass(frozen=True)
class Delivery:
    """One POST's outcome: the HTTP status (or the error class when none came back)."""

    ok: bool
    outcome: str  # "HTTP 503" or "ConnectTimeout: ..." (the record's last_error)
    webhook_id: str
    seconds: float
    status: int | None = None
    error: str | None = None  # the exception's class name
    retry_after: float | None = None  # seconds asked for by a 429/503 answer

    @property
    def gone(self) -> bool:
        """410 Gone: the receiver asks for no more deliveries."""
        return self.status == 410


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
        """One POST of ``payload``: (delivered, outcome)."""
        result = self.deliver(url, payload, attempt)
        return result.ok, result.outcome

    def deliver(self, url: str, payload: dict[str, Any], attempt: int = 1) -> Delivery:
        """One POST of ``payload`` (waiting at most WEBHOOK_TIMEOUT for the answer). Retries
        are the caller's: they are driven by durable state (see chalicelib/delivery/deliveries.py),
        not by a loop here."""
        body = json.dumps(payload, separators=(",", ":"))
        msg_id = webhook_id(payload)
        headers = {"Content-Type": "application/json", "User-Agent": "c3-render-webhook/1",
                   "webhook-id": msg_id}
        if self.secret:
            ts = int(self._clock())
            headers.update({"webhook-timestamp": str(ts),
                            "webhook-signature": sign(self.secret, msg_id, ts, body)})
        started = time.monotonic()
        status = error = retry_after = None
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
            status = resp.status_code
            ok, outcome = 200 <= status < 300, f"HTTP {status}"
            detail = outcome
            if status in (429, 503):
                retry_after = retry_after_seconds(resp.headers.get("Retry-After"), self._clock())
        except (requests.RequestException, OSError, HTTPError) as exc:
            if deadline.expired and not isinstance(exc, AddressRefused):
                exc = DeadlineExceeded(str(exc))
            ok, outcome, detail = False, tenant_outcome(exc, self.timeout), _detail(exc)
            error = error_class(exc)
        seconds = round(time.monotonic() - started, 3)
        log.info("webhook.attempt", job_id=payload["id"], status=payload["status"], attempt=attempt,
                 delivered=ok, outcome=outcome, detail=detail, seconds=seconds, webhook_id=msg_id,
                 retry_after=retry_after)
        return Delivery(ok, outcome, msg_id, seconds, status, error, retry_after)


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


def error_class(exc: Exception) -> str:
    """The delivery log's error class of a failed POST: as coarse as ``tenant_outcome``
    (a refused connection and a silent port look the same), so it is no port scanner."""
    if isinstance(exc, AddressRefused):
        return "address_refused"
    if isinstance(exc, requests.Timeout):
        return "timeout"
    return "connection_failed"


def _detail(exc: Exception) -> str:
    text = exc.detail if isinstance(exc, AddressRefused) else str(exc)
    return f"{type(exc).__name__}: {text}"[:500]
