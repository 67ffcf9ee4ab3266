"""``Prefer: wait=N`` (RFC 7240): answer as soon as the job is final, or after N seconds
with its current state.

The record is read (strongly consistent: a read sees the final write the moment it has
landed) every READ_INTERVAL, 0.1 s: the answer comes within 0.1 s plus one read of the
final write. DynamoDB has no change notification an API request could block on (Streams
feed Lambdas, not a waiting request), so the wait reads: a full 25 s wait is 250 reads of
one small item, 1 RCU each, about $0.00003 on demand; the request's Lambda is billed for
the wait's duration either way."""

from __future__ import annotations

import time
from typing import Callable

from chalicelib.jobs.record import Job
from chalicelib.platform.numbers import ascii_int

MAX_WAIT = 25  # API Gateway answers at 29 s
READ_INTERVAL = 0.1


def preferred_wait(header: str | None) -> int | None:
    """N from a ``Prefer`` header carrying ``wait=N`` (other preferences are ignored).

    RFC 7240: a preference the server cannot honour does not fail the request. A wait
    longer than MAX_WAIT is clamped to it (Preference-Applied says so); ``wait=0`` asks
    for no wait and gets none (None: the plain answer). A value that is not a number of
    seconds in ASCII digits (``wait=²``, ``wait=-1``, 5,000 digits) is malformed: 400
    naming Prefer. Callers parse it before any write, so a 400 has no side effect."""
    if not header:
        return None
    for part in header.split(","):
        name, _, value = part.partition(";")[0].strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        seconds = ascii_int(value, "Prefer", "wait must be a whole number of seconds in ASCII digits "
                                             f"(at most 10 digits; above {MAX_WAIT} it is clamped to {MAX_WAIT})")
        return min(seconds, MAX_WAIT) or None
    return None


def wait_final(load: Callable[[], Job], seconds: float, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> Job:
    deadline = clock() + seconds
    job = load()
    while not job.status.is_terminal:
        left = deadline - clock()
        if left <= 0:
            break
        sleep(min(READ_INTERVAL, left))
        job = load()
    return job
