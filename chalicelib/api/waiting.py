"""``Prefer: wait=N`` (RFC 7240): answer as soon as the job is final, or after N seconds
with its current state. Reads back off from 0.1 s to 0.5 s: a 25 s wait costs about
fifty consistent reads (0.5 RCU each), and the answer comes within half a second of the
final write."""

from __future__ import annotations

import time
from typing import Callable

from chalicelib.jobs.record import Job
from chalicelib.platform.errors import InvalidRequest

MAX_WAIT = 25  # API Gateway answers at 29 s
MAX_DELAY = 0.5


def preferred_wait(header: str | None) -> int | None:
    """N from a ``Prefer`` header carrying ``wait=N`` (other preferences are ignored)."""
    if not header:
        return None
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        value = value.strip().strip('"')
        if not value.isdigit() or not 1 <= int(value) <= MAX_WAIT:
            raise InvalidRequest("Invalid Prefer header",
                                 [{"field": "Prefer", "message": f"wait must be a whole number of seconds "
                                                                 f"from 1 to {MAX_WAIT}"}])
        return int(value)
    return None


def wait_final(load: Callable[[], Job], seconds: float, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> Job:
    deadline = clock() + seconds
    delay = 0.1
    job = load()
    while not job.status.is_terminal:
        left = deadline - clock()
        if left <= 0:
            break
        sleep(min(delay, left))
        delay = min(delay * 2, MAX_DELAY)
        job = load()
    return job
