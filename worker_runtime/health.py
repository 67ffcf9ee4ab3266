"""Liveness check for the worker container (Docker HEALTHCHECK, ECS health check).

    python -m worker_runtime.health      # exit 0 = alive, 1 = stale or missing

The worker loop touches ``WORKER_HEALTH_FILE`` before every receive. Between two
touches lie one long poll and at most one job, so the file may legitimately be as
old as RECEIVE_WAIT_SECONDS + MAX_RENDER_TIME + a setup margin (GPU launch,
downloads, upload). That is the default limit; WORKER_HEALTH_MAX_AGE overrides it.
A stricter limit would have the platform kill healthy workers in the middle of
long jobs; the leases already hand a silent worker's job to another one.
"""

from __future__ import annotations

import os
import sys
import time

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .settings import WorkerSettings


class HealthSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    max_age: float | None = Field(None, gt=0, validation_alias="WORKER_HEALTH_MAX_AGE")
    # Time a job may spend outside the supervised run limit: GPU launch, downloads, upload.
    setup_margin: float = Field(600.0, ge=0, validation_alias="WORKER_HEALTH_SETUP_MARGIN")


def allowed_age(worker: WorkerSettings, health: HealthSettings) -> float:
    if health.max_age is not None:
        return health.max_age
    return worker.receive_wait_seconds + worker.max_render_time + health.setup_margin


def check(path: str | None, max_age: float, now: float | None = None) -> tuple[bool, str]:
    """(alive, why) for the health file at ``path``."""
    if not path:
        return False, "WORKER_HEALTH_FILE is not set: the worker writes no liveness signal"
    try:
        touched = os.stat(path).st_mtime
    except FileNotFoundError:
        return False, f"{path} does not exist yet (worker starting, or never reached its loop)"
    age = (time.time() if now is None else now) - touched
    if age > max_age:
        return False, f"{path} is {age:.0f} s old; the limit is {max_age:.0f} s (worker loop stuck?)"
    return True, f"{path} touched {age:.0f} s ago (limit {max_age:.0f} s)"


def main() -> int:
    worker = WorkerSettings()
    alive, why = check(worker.health_file, allowed_age(worker, HealthSettings()))
    print(("healthy: " if alive else "unhealthy: ") + why)
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())

