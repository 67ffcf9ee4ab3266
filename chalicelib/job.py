"""The job record: what DynamoDB holds for one job, and its public views."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from .models import JobStatus, JobType


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Job:
    id: str
    type: JobType
    params: dict[str, Any]
    status: JobStatus
    owner: str
    created_at: float
    complete_by: float
    max_time: int
    expires_at: int  # DynamoDB TTL attribute (epoch seconds)
    attempts: int = 0
    queued_at: float | None = None
    started_at: float | None = None
    first_started_at: float | None = None
    finished_at: float | None = None
    updated_at: float | None = None
    error: str | None = None
    result_key: str | None = None
    result_content_type: str | None = None
    result_text: str | None = None
    worker: str | None = None
    lease_expires: float | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    reply_to: str | None = None
    source: str = "http"
    # The outbox (see chalicelib/outbox.py): which message this job is owed
    # ("dispatch" while queued or running, "notify" once final until delivered),
    # when the reconciler should re-send it, and how often it already did.
    outbox: str | None = None
    outbox_at: float | None = None
    outbox_sends: int = 0
    # Final webhook delivery: pending | delivered | failed (only with a notify_url).
    webhook: str | None = None
    webhook_attempts: int = 0
    webhook_error: str | None = None
    webhook_lease: float | None = None
    event_sent_at: float | None = None
    inflight_owner: str | None = None  # the owner while queued or running (the per-key cap's index)
    retry_of: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def notify_url(self) -> str | None:
        return self.params.get("notify_url")

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> "Job":
        data = dict(item)
        data["type"] = JobType(data["type"])
        data["status"] = JobStatus(data["status"])
        data["params"] = json.loads(data["params"])
        known = cls.__dataclass_fields__.keys()
        extra = {k: data.pop(k) for k in list(data) if k not in known}
        return cls(**data, extra=extra)

    def to_item(self) -> dict[str, Any]:
        item = asdict(self)
        item.pop("extra")
        item["type"] = self.type.value
        item["status"] = self.status.value
        item["params"] = json.dumps(self.params, separators=(",", ":"), sort_keys=True)
        return {k: v for k, v in item.items() if v is not None}

    def status_view(self) -> dict[str, Any]:
        view: dict[str, Any] = {"id": self.id, "status": self.status.value}
        if self.error:
            view["error"] = self.error
        view.update(
            {
                "type": self.type.value,
                "attempts": self.attempts,
                "created_at": iso(self.created_at),
                "started_at": iso(self.started_at),
                "finished_at": iso(self.finished_at),
                "complete_by": iso(self.complete_by),
                "max_time": self.max_time,
            }
        )
        if self.retry_of:
            view["retry_of"] = self.retry_of
        if self.webhook:
            hook: dict[str, Any] = {"status": self.webhook, "attempts": self.webhook_attempts}
            if self.webhook_error:
                hook["last_error"] = self.webhook_error
            view["webhook"] = hook
        return {k: v for k, v in view.items() if v is not None}
