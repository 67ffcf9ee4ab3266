"""The API's answers as pydantic models. They mirror the server's views in spirit (the client
imports nothing from the server) and accept fields they do not know, so a newer server does
not break an older client."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def is_terminal(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


class JobType(str, Enum):
    CSM = "csm"
    WHISPER = "whisper"
    PORTRAIT = "portrait"
    ANALYZE = "analyze"


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class WebhookState(_Model):
    status: str
    attempts: int = 0
    last_error: str | None = None


class Cost(_Model):
    """A finished job's cost receipt (``cost`` in its status view)."""

    queued_seconds: float = 0.0
    cold_start: bool = False
    cold_start_seconds: float = 0.0
    gpu_seconds: float = 0.0
    billed_gpu_seconds: float = 0.0
    instance_type: str | None = None
    usd: float | None = None  # None: the server has no price configured


class Job(_Model):
    """A job's status view (``GET /status/{id}``). A submission without ``wait`` answers
    only ``id`` and ``status``; every other field is then None."""

    id: str
    status: JobStatus
    type: JobType | None = None
    attempts: int | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    complete_by: datetime | None = None
    max_time: int | None = None
    error: str | None = None
    webhook: WebhookState | None = None
    queue_position: int | None = None
    queue_position_approximate: bool | None = None
    retry_of: str | None = None
    priority: str | None = None
    batch_id: str | None = None
    phase: str | None = None
    phases: dict[str, datetime] | None = None
    progress: float | None = Field(None, ge=0, le=1)
    cost: Cost | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    @property
    def succeeded(self) -> bool:
        return self.status is JobStatus.SUCCESS


class JobPage(_Model):
    """One page of ``GET /jobs``, newest first."""

    jobs: list[Job] = []
    next_cursor: str | None = None


class Result(_Model):
    """``GET /result/{id}``: a presigned ``result_url`` (and a durable ``result_link``) for
    media jobs, ``text`` for text jobs."""

    result_url: str | None = None
    result_link: str | None = None
    text: str | None = None

    @property
    def is_media(self) -> bool:
        return self.result_url is not None or self.result_link is not None


class DeliveryAttempt(_Model):
    """One webhook attempt (``GET /jobs/{id}/deliveries``)."""

    at: datetime
    event: str
    attempt: int
    webhook_id: str
    seconds: float
    outcome: str
    status: int | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None


class Deliveries(_Model):
    id: str
    deliveries: list[DeliveryAttempt] = []


class Redelivery(_Model):
    """``POST /jobs/{id}/redeliver``: the webhook queued again, with its webhook-id."""

    id: str
    event: str
    status: str
    webhook_id: str


class UsageLine(_Model):
    day: str
    type: str
    jobs: int = 0
    gpu_seconds: float = 0.0
    billed_gpu_seconds: float = 0.0
    usd: float = 0.0


class Usage(_Model):
    """``GET /usage``: this key's jobs, GPU seconds and USD by day and job type."""

    from_: str = Field(alias="from")
    to: str
    usage: list[UsageLine] = []
    total: dict[str, Any] = {}


class Message(_Model):
    message: str = ""


class Health(_Model):
    status: str
    queue: dict[str, Any] = {}
    jobs: dict[str, Any] = {}
    workers: dict[str, Any] = {}
    gpus: dict[str, Any] = {}


class BatchItemAnswer(_Model):
    """One item's answer to ``POST /batch``: its job ``id`` (and ``status``), or the ``error``,
    HTTP ``code`` and ``details`` (the field named as ``items.<index>.<field>``) that refused it."""

    index: int
    id: str | None = None
    status: JobStatus | None = None
    error: str | None = None
    code: int | None = None
    details: list[dict[str, Any]] = []

    @property
    def accepted(self) -> bool:
        return self.id is not None


class BatchSubmitted(_Model):
    """``POST /batch``: the batch's ``id`` (None when no item was accepted) and every item's
    answer, in order."""

    id: str | None = None
    accepted: int = 0
    rejected: int = 0
    items: list[BatchItemAnswer] = []


class Batch(_Model):
    """``GET /batch/{id}``: its members' counts by status and their ids."""

    id: str
    total: int = 0
    counts: dict[str, int] = {}
    completed: bool = False
    created_at: datetime | None = None
    completed_at: datetime | None = None
    jobs: list[str] = []
    webhook: WebhookState | None = None

    @property
    def finished(self) -> int:
        """Members that are final (removed ones included)."""
        return sum(n for status, n in self.counts.items() if status not in ("queued", "running"))
