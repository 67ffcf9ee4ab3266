"""The job record: what DynamoDB holds for one job, and its public views."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from chalicelib.jobs.models import DEFAULT_WEBHOOK_EVENTS, JobStatus, JobType


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds")


@dataclass(kw_only=True)
class OwedMessages:
    """What a record (a job, or a batch: chalicelib/jobs/batches.py) owes and how its final
    webhook went; the outbox, the reconciler and the deliverer treat both alike."""

    # The outbox (see chalicelib/jobs/outbox.py): which message the record is owed
    # ("dispatch" while a job is queued or running, "notify" once final until delivered),
    # when the reconciler should re-send it, and how often it already did.
    outbox: str | None = None
    outbox_at: float | None = None
    outbox_sends: int = 0
    # Final webhook delivery: pending | delivered | failed (only with a notify_url).
    webhook: str | None = None
    webhook_attempts: int = 0
    webhook_error: str | None = None
    webhook_lease: float | None = None


@dataclass
class Job(OwedMessages):
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
    priority: str = "normal"  # the lane (chalicelib/jobs/lanes.py); also in params
    batch_id: str | None = None  # the batch it was submitted in (chalicelib/jobs/batches.py)
    # The start webhook ("start" in webhook_events_filter): the same states and lease,
    # set pending by the job's first claim.
    start_webhook: str | None = None
    start_webhook_attempts: int = 0
    start_webhook_error: str | None = None
    start_webhook_lease: float | None = None
    # Every webhook attempt, oldest first (chalicelib/delivery/deliveries.py; GET /jobs/{id}/deliveries),
    # and, per hook, the attempts made before the current round (a redelivery starts a round).
    deliveries: list[dict[str, Any]] | None = None
    webhook_base: int | None = None
    start_webhook_base: int | None = None
    webhook_gone_at: float | None = None  # the receiver answered 410 Gone: no more attempts
    # Where the job is (worker_runtime/phases.py): the current phase of the running job,
    # when each phase was entered (epoch seconds) and the node's progress (0-1).
    phase: str | None = None
    phases: dict[str, float] | None = None
    progress: float | None = None
    event_sent_at: float | None = None
    counted_at: float | None = None  # when the JobsFinished metric counted it (chalicelib/platform/metrics.py)
    inflight_owner: str | None = None  # the owner while queued or running (the per-key cap's index)
    retry_of: str | None = None
    # What the job's GPU use cost (JobStore.add_gpu_use): every attempt that held an instance adds
    # the seconds it was charged for (its work, and the boot of a launch it waited for), priced.
    cost_instance_type: str | None = None
    cost_gpu_seconds: float | None = None
    cost_launch_seconds: float | None = None
    cost_cold_start: bool | None = None
    cost_cold_start_seconds: float | None = None
    cost_usd: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def notify_url(self) -> str | None:
        return self.params.get("notify_url")

    def wants_webhook(self, event: str) -> bool:
        """Whether notify_url gets the ``event`` webhook ("start" or "completed")."""
        events = self.params.get("webhook_events_filter") or DEFAULT_WEBHOOK_EVENTS
        return bool(self.notify_url) and event in events

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
        item["created_day"] = created_day(self.created_at)  # the operators' index (store.DAY_INDEX)
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
        view["priority"] = self.priority
        if self.batch_id:
            view["batch_id"] = self.batch_id
        if self.retry_of:
            view["retry_of"] = self.retry_of
        if self.status.is_terminal:
            view["cost"] = self.cost_view()
        view.update(self._where())
        for hook in HOOKS:
            state = getattr(self, hook)
            if state:
                shown: dict[str, Any] = {"status": state, "attempts": getattr(self, f"{hook}_attempts")}
                if getattr(self, f"{hook}_error"):
                    shown["last_error"] = getattr(self, f"{hook}_error")
                view[hook] = shown
        return {k: v for k, v in view.items() if v is not None}

    def cost_view(self) -> dict[str, Any]:
        """A finished job's receipt (README, "What a job cost"): seconds queued, the cold start
        it waited for, its own GPU seconds, the GPU seconds billed to it (its work plus the boot
        of the launch it caused) and their price. A job that used no GPU costs nothing."""
        left_queue = self.first_started_at if self.first_started_at is not None else self.finished_at
        work, launch = self.cost_gpu_seconds or 0.0, self.cost_launch_seconds or 0.0
        instance_type = self.cost_instance_type
        usd = (None if self.cost_usd is None else round(self.cost_usd, 6)) if instance_type else 0.0
        return {
            "queued_seconds": round(max(0.0, (left_queue or self.created_at) - self.created_at), 3),
            "cold_start": bool(self.cost_cold_start),
            "cold_start_seconds": round(self.cost_cold_start_seconds or 0.0, 3),
            "gpu_seconds": round(work, 3),
            "billed_gpu_seconds": round(work + launch, 3),
            "instance_type": instance_type,
            "usd": usd,
        }

    def deliveries_view(self) -> list[dict[str, Any]]:
        """``GET /jobs/{id}/deliveries``: every webhook attempt, oldest first."""
        out = []
        for entry in self.deliveries or []:
            shown = dict(entry)
            shown["at"] = iso(entry.get("at"))
            if entry.get("next_attempt_at") is not None:
                shown["next_attempt_at"] = iso(entry["next_attempt_at"])
            out.append(shown)
        return out

    def _where(self) -> dict[str, Any]:
        """``phase``, ``phases`` and ``progress``: queued, then what the worker reported
        while running; a final job is "delivering" until its webhooks are settled, then
        shows no phase."""
        entered = {"queued": self.created_at, **(self.phases or {})}
        where: dict[str, Any] = {"phases": {name: iso(at) for name, at in entered.items()}}
        if self.status is JobStatus.QUEUED:
            where["phase"] = "queued"
        elif self.status is JobStatus.RUNNING:
            where["phase"] = self.phase or "queued"
            if self.progress is not None and self.phase == "rendering":
                where["progress"] = self.progress
        elif "pending" in (self.webhook, self.start_webhook):
            where["phase"] = "delivering"
        return where


def webhook_id(payload: dict[str, Any]) -> str:
    """The ``webhook-id`` of a webhook payload (``id`` and ``status``): the same across
    attempts and redeliveries of one event, so a receiver can deduplicate."""
    return f"msg_{payload['id']}_{payload['status']}"


# The webhooks a job may owe (chalicelib/delivery/deliveries.py): each has <name>, <name>_attempts,
# <name>_error and <name>_lease on the record, and is shown in the status view as <name>.
HOOKS = ("start_webhook", "webhook")


def created_day(created_at: float) -> str:
    """The UTC day a job was created, ``YYYY-MM-DD``: the partition of store.DAY_INDEX."""
    return datetime.fromtimestamp(created_at, timezone.utc).strftime("%Y-%m-%d")
