"""Worker settings: the shared settings plus the worker's own knobs (spec defaults)."""

from __future__ import annotations

import os
import socket
import uuid
from functools import lru_cache

from pydantic import Field

from chalicelib.platform.settings import Settings


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class WorkerSettings(Settings):
    worker_id: str = Field(default_factory=_default_worker_id, validation_alias="WORKER_ID")
    output_dir: str = Field("/app/output", validation_alias="OUTPUT_DIR")
    # Lease = the message's visibility timeout and the record's lease_expires.
    lease_seconds: int = Field(60, ge=2, le=43200, validation_alias="LEASE_SECONDS")
    receive_wait_seconds: int = Field(20, ge=0, le=20, validation_alias="RECEIVE_WAIT_SECONDS")
    # How often cancel, max_time and complete_by are checked while a job runs.
    polling_interval: float = Field(5.0, gt=0, validation_alias="RENDER_POLLING_INTERVAL")
    max_render_time: int = Field(1800, ge=1, validation_alias="MAX_RENDER_TIME")
    shutdown_grace: float = Field(20.0, ge=0, validation_alias="SHUTDOWN_GRACE")
    # Where the task implementations come from ("module:attribute").
    tasks: str = Field("worker_runtime.tasks:default_tasks", validation_alias="WORKER_TASKS")
    health_file: str | None = Field(None, validation_alias="WORKER_HEALTH_FILE")
    # Task steps run in a child process: its address-space cap (0 = none), and how long
    # it gets to stop after a cancel before it is killed.
    task_memory_limit_mb: int = Field(1024, ge=0, validation_alias="TASK_MEMORY_LIMIT_MB")
    task_wind_down: float = Field(5.0, gt=0, validation_alias="TASK_WIND_DOWN")
    # true: the worker that writes a job's final state POSTs its webhook itself (the queue's
    # delayed copy as the fallback: worker_runtime/direct_delivery.py), a queue hop faster,
    # but a worker killed between the receiver's 200 and recording it leaves the webhook to
    # be sent again. false: the Webhooks function delivers it from the queue, sent at once.
    webhook_direct: bool = Field(False, validation_alias="WEBHOOK_DIRECT")

    @property
    def heartbeat_interval(self) -> float:
        """Renew well before the lease lapses, and at least every polling interval."""
        return min(self.polling_interval, self.lease_seconds / 3)


@lru_cache(maxsize=1)
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()
