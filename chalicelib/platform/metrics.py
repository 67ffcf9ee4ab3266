"""Operational metrics in CloudWatch's embedded metric format (EMF), through Powertools.

Each event prints one EMF JSON object on its own line on stdout. On Lambda, stdout goes
to CloudWatch Logs, which turns the line into metrics; the worker's container log does
the same (infra/aws/README.md); locally the lines land in each process's log. The job id
rides along as metadata: searchable in the logs, never a dimension.

Dimensions stay few so the bill stays small: every metric is published without
dimensions (or per ``outcome``/``phase``) and, where it helps, per job ``type`` too. The
catalog (names, units, dimension sets) is the list below; infra/aws's alarms and
dashboard name these metrics.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from enum import Enum
from typing import Any, Iterable, Protocol

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit


class Job(Protocol):
    """What the job metrics read of a job record (chalicelib.jobs.record.Job): metrics sit
    below the jobs package, so they name the fields, not the class."""

    id: str
    type: Enum
    status: Enum
    attempts: int
    created_at: float
    started_at: float | None
    first_started_at: float | None
    finished_at: float | None
    updated_at: float | None
    phases: dict[str, float] | None

DEFAULT_NAMESPACE = "C3Render"
COUNT, SECONDS = MetricUnit.Count, MetricUnit.Seconds

# name -> (unit, dimension sets); [] is the metric without dimensions.
CATALOG: dict[str, tuple[MetricUnit, list[list[str]]]] = {
    "JobsSubmitted": (COUNT, [[], ["type"]]),
    "JobsFinished": (COUNT, [["outcome"], ["type", "outcome"]]),
    "QueueWait": (SECONDS, [[], ["type"]]),
    "RunTime": (SECONDS, [[], ["type"]]),
    "Attempts": (COUNT, [[], ["type"]]),
    "PhaseTime": (SECONDS, [["phase"]]),
    "Takeovers": (COUNT, [[]]),
    "WebhookDeliveries": (COUNT, [["outcome"]]),
    "GpuLaunches": (COUNT, [[]]),
    "GpuLaunchFailures": (COUNT, [[]]),
    "GpuBilledSeconds": (SECONDS, [[]]),
    "GpuIdleSeconds": (SECONDS, [[]]),
    # Per instance type (chalicelib/fleet/books.py): a stopped instance's billed seconds and the
    # part no job was charged; the jobs' billed seconds as they finish. Billed = jobs + idle.
    "FleetBilledSeconds": (SECONDS, [["fleet"]]),
    "FleetIdleSeconds": (SECONDS, [["fleet"]]),
    "JobBilledGpuSeconds": (SECONDS, [["fleet"]]),
    "BadInputRejections": (COUNT, [[], ["field"]]),
    "WorkerHeartbeats": (COUNT, [[]]),
}


class Metrics:
    """Writes EMF lines; thread-safe (one lock around each whole line)."""

    def __init__(self, namespace: str | None = None, stream: Any = None, enabled: bool | None = None):
        self.namespace = namespace or os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or DEFAULT_NAMESPACE
        self._stream = stream  # None: sys.stdout as it is at each write (pytest's capture swaps it)
        if enabled is None:
            enabled = os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() not in ("1", "true")
        self.enabled = enabled
        self._lock = threading.Lock()

    # -- the events ---------------------------------------------------------------
    def job_submitted(self, job: Job) -> None:
        self.put({"JobsSubmitted": 1}, job_type=job.type.value, job_id=job.id)

    def job_claimed(self, job: Job, takeover: bool) -> None:
        """A worker's claim: queue wait on the first one, a takeover when it took the job
        from a holder whose lease had lapsed."""
        if job.attempts == 1 and job.started_at is not None:
            self.put({"QueueWait": max(0.0, job.started_at - job.created_at)}, job_type=job.type.value,
                     job_id=job.id)
        if takeover:
            self.put({"Takeovers": 1}, job_id=job.id, attempt=job.attempts)

    def job_finished(self, job: Job) -> None:
        """A job reached its final state (called once per job, by JobStore.count_finished):
        its outcome, and for a job that ran, its run time, attempts and phases."""
        self.put({"JobsFinished": 1}, job_type=job.type.value, split={"outcome": job.status.value},
                 job_id=job.id)
        end = job.finished_at or job.updated_at
        if not job.attempts or end is None:
            return
        ran: dict[str, float] = {"Attempts": job.attempts}
        if job.first_started_at is not None:
            ran["RunTime"] = max(0.0, end - job.first_started_at)
        self.put(ran, job_type=job.type.value, job_id=job.id)
        for phase, seconds in phase_durations(job.phases or {}, end):
            self.put({"PhaseTime": seconds}, split={"phase": phase}, job_id=job.id)

    def webhook(self, outcome: str, job_id: str, hook: str) -> None:
        """One delivery attempt's outcome: delivered, refused (to be retried) or gave_up."""
        self.put({"WebhookDeliveries": 1}, split={"outcome": outcome}, job_id=job_id, hook=hook)

    def gpu_launch(self, ok: bool, **meta: Any) -> None:
        self.put({"GpuLaunches" if ok else "GpuLaunchFailures": 1}, **meta)

    def gpu_billed(self, billed: float, idle: float, **meta: Any) -> None:
        values = {"GpuBilledSeconds": max(0.0, billed)}
        if idle > 0:
            values["GpuIdleSeconds"] = idle
        self.put(values, **meta)

    def fleet_closed(self, fleet: str, billed: float, idle: float, **meta: Any) -> None:
        """An instance stopped: its rental's billed seconds and the part no job was charged."""
        self.put({"FleetBilledSeconds": billed, "FleetIdleSeconds": idle}, split={"fleet": fleet}, **meta)

    def job_billed(self, fleet: str, seconds: float, job_id: str) -> None:
        """A finished job's billed GPU seconds on an instance of type ``fleet``."""
        self.put({"JobBilledGpuSeconds": seconds}, split={"fleet": fleet}, job_id=job_id)

    def bad_input(self, fields: Iterable[str], source: str, known: Iterable[str] = ()) -> None:
        """A request refused for bad input, once per field it names. A field outside
        ``known`` (a client's made-up key or query parameter) counts as "other", so a
        caller cannot mint new metrics."""
        allowed = set(known)
        names = {_field_root(f) for f in fields} or {"body"}
        for field in sorted({n if n in allowed else "other" for n in names}):
            self.put({"BadInputRejections": 1}, by={"field": field}, source=source)

    def heartbeat(self, worker_id: str) -> None:
        self.put({"WorkerHeartbeats": 1}, worker=worker_id)

    # -- the writing ----------------------------------------------------------------
    def put(self, values: dict[str, float], job_type: str | None = None, split: dict[str, str] | None = None,
            by: dict[str, str] | None = None, **metadata: Any) -> None:
        """One EMF line with ``values`` (metrics of one dimension shape). ``split`` is the
        primary dimension set (none by default); a second set adds ``type`` (with
        ``job_type``) or ``by``."""
        if not self.enabled:
            return
        emf = EphemeralMetrics(namespace=self.namespace)
        for name, value in values.items():
            emf.add_metric(name=name, unit=CATALOG[name][0], value=round(float(value), 3))
        for key, value in (split or {}).items():
            emf.add_dimension(name=key, value=value)
        extra = {**({"type": job_type} if job_type else {}), **(split or {}), **(by or {})}
        if extra != (split or {}):
            emf.add_dimensions(**extra)
        for key, value in metadata.items():
            if value is not None:
                emf.add_metadata(key=key, value=value)
        line = json.dumps(emf.serialize_metric_set(), separators=(",", ":"), default=str) + "\n"
        stream = self._stream or sys.stdout
        with self._lock:
            stream.write(line)  # one write per line: never torn by another thread's log line
            stream.flush()


def _field_root(field: str) -> str:
    """``params.voice_url`` / ``text.0`` -> the field a client set (``voice_url`` / ``text``)."""
    parts = [p for p in str(field).split(".") if p and p != "params"]
    return parts[0] if parts else "params"


def phase_durations(phases: dict[str, float], end: float) -> list[tuple[str, float]]:
    """Seconds spent in each phase: from its entry to the next phase's (the last to ``end``)."""
    ordered = sorted(phases.items(), key=lambda item: item[1])
    out = []
    for i, (phase, entered) in enumerate(ordered):
        leave = ordered[i + 1][1] if i + 1 < len(ordered) else end
        out.append((phase, max(0.0, leave - entered)))
    return out


METRICS = Metrics()
