"""HTTP with bounded retries.

What is retried, and why it is safe:
- 429 and 503, on every request: the server took nothing (too many jobs in flight, or AWS
  unavailable). A 429's ``Retry-After`` is waited for; one longer than
  ``RetryPolicy.max_retry_after`` is not, and the ``RateLimited`` error carries it.
- other 5xx and connections that broke after the request went out: only idempotent requests
  (GET, and submissions, which always carry an ``Idempotency-Key``), since the server may have
  acted on the first copy.
- connections refused or not made at all: on every request (nothing reached the server).
Never a 4xx other than 429. Pauses grow exponentially with jitter; attempts are bounded.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Callable, TypeVar

import httpx

from .errors import C3RenderError, ConnectionFailed, error_from_response

log = logging.getLogger("c3render")
T = TypeVar("T")
# Failures where the request certainly never reached the server.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # tries in all, the first included
    backoff: float = 0.5  # the first pause; it doubles after each try, with jitter
    max_backoff: float = 8.0
    max_retry_after: float = 60.0  # a longer Retry-After is not waited for

    def pause(self, retry: int) -> float:
        return min(self.max_backoff, self.backoff * 2 ** (retry - 1)) * random.uniform(0.5, 1.0)


NO_RETRIES = RetryPolicy(attempts=1)


def retry_after_seconds(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """``Retry-After`` as seconds: a number of seconds, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now())
    except (TypeError, ValueError):
        return None


def decoded_body(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text


def raise_for_status(resp: httpx.Response) -> httpx.Response:
    if resp.status_code >= 400:
        resp.read()
        raise error_from_response(resp.status_code, decoded_body(resp),
                                  retry_after_seconds(resp.headers.get("Retry-After")))
    return resp


class Retrying:
    def __init__(self, policy: RetryPolicy, sleep: Callable[[float], None] = time.sleep):
        self.policy = policy
        self.sleep = sleep

    def __call__(self, call: Callable[[], T], idempotent: bool, what: str) -> T:
        """Run ``call`` (which raises C3RenderError for an error answer) with retries."""
        attempt = 0
        while True:
            attempt += 1
            final = attempt >= self.policy.attempts
            try:
                return call()
            except httpx.TransportError as exc:
                if final or not (idempotent or isinstance(exc, _NOT_SENT)):
                    raise ConnectionFailed(f"{what}: {type(exc).__name__}: {exc}") from exc
                pause, reason = self.policy.pause(attempt), type(exc).__name__
            except C3RenderError as exc:
                status = exc.status or 0
                if final or not (status in (429, 503) or (status >= 500 and idempotent)):
                    raise
                retry_after = getattr(exc, "retry_after", None)
                if retry_after is not None and retry_after > self.policy.max_retry_after:
                    raise
                pause, reason = (retry_after if retry_after is not None else self.policy.pause(attempt),
                                 f"HTTP {status}")
            log.info("c3render.retry %s: %s; attempt %d of %d in %.2fs", what, reason, attempt + 1,
                     self.policy.attempts, pause)
            self.sleep(pause)
