"""When a refused webhook is tried again (WEBHOOK_SCHEDULE).

    seed       WEBHOOK_ATTEMPTS attempts, WEBHOOK_INTERVAL seconds apart (the default: 5 x 5 s)
    standard   Standard Webhooks' published schedule: at once, then 5 s, 5 min, 30 min,
               2 h, 5 h, 10 h, 14 h, 20 h and 24 h after each failed attempt, each delay
               jittered by up to +-JITTER
    "5,60,600" at once, then these delays (seconds), jittered like ``standard``

The waits become delayed messages on the webhooks queue (chained, since SQS delays a
message by MAX_MESSAGE_DELAY at most); the job record holds when the next attempt is due."""

from __future__ import annotations

import random
from dataclasses import dataclass

STANDARD_DELAYS = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)
JITTER = 0.1
MAX_MESSAGE_DELAY = 900  # SQS DelaySeconds upper bound


@dataclass(frozen=True)
class RetrySchedule:
    delays: tuple[float, ...]  # the wait before attempt 2, 3, ...
    jitter: float = 0.0
    name: str = "seed"

    @property
    def attempts(self) -> int:
        return len(self.delays) + 1

    def delay_after(self, attempt: int, rng: random.Random | None = None) -> float | None:
        """The wait after failed attempt ``attempt`` (1-based, within the current round),
        or None when it was the last."""
        if attempt >= self.attempts:
            return None
        delay = self.delays[attempt - 1]
        if self.jitter and delay:
            delay *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
        return delay

    @classmethod
    def parse(cls, spec: str, attempts: int, interval: float) -> "RetrySchedule":
        """From WEBHOOK_SCHEDULE (with WEBHOOK_ATTEMPTS/WEBHOOK_INTERVAL for ``seed``);
        ValueError naming the rule otherwise."""
        spec = spec.strip().lower()
        if spec in ("", "seed"):
            return cls(tuple(float(interval) for _ in range(attempts - 1)))
        if spec == "standard":
            return cls(STANDARD_DELAYS, JITTER, "standard")
        try:
            delays = tuple(float(part) for part in spec.split(","))
        except ValueError:
            raise ValueError("WEBHOOK_SCHEDULE must be seed, standard or comma-separated delays in seconds") from None
        if any(d < 0 for d in delays) or len(delays) > 30:
            raise ValueError("WEBHOOK_SCHEDULE delays must be at least 0 and at most 30 of them")
        return cls(delays, JITTER, "custom")


def hold_for(delay: float) -> float:
    """How long the record holds off other attempts after a failure: most of the delay
    (a duplicate message may not cut it short by more than 20 %, nor more than a minute),
    while the delayed message, sent for the whole delay, finds the hold over."""
    return max(delay * 0.8, delay - 60.0)
