"""Liveness check for the worker container (Docker HEALTHCHECK, ECS health check).

    python -m worker_runtime.health      # exit 0 = alive, 1 = stale or missing

The worker touches ``WORKER_HEALTH_FILE`` before every receive and at every lease
heartbeat while a job runs (GPU launch and downloads included). Between two touches
lie at most one long poll, a heartbeat interval, or the work outside the supervised
run (result upload, final write), so the default limit is RECEIVE_WAIT_SECONDS +
3 heartbeat intervals + a margin for that work; WORKER_HEALTH_MAX_AGE overrides it.
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
    # Time a job may spend outside the supervised run: result upload and final write.
    setup_margin: float = Field(300.0, ge=0, validation_alias="WORKER_HEALTH_SETUP_MARGIN")


def allowed_age(worker: WorkerSettings, health: HealthSettings) -> float:
    if health.max_age is not None:
        return health.max_age
    return worker.receive_wait_seconds + 3 * worker.heartbeat_interval + health.setup_margin


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

