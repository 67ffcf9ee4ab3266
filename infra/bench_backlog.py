"""`make bench` (BENCH_SECTIONS=backlog): the reconciler's re-sends for a backlog.

200 queued jobs and no worker for one simulated hour (an injected clock; the reconciler
runs once per simulated minute, as its schedule does), on the moto server. "before" is
the policy of main before issue 21, reproduced by not recording sends (every queued
job past OUTBOX_GRACE was owed a copy, with growing pauses); "after" records them, so
only a lost send is re-sent. Both report the re-sends, the messages left on the jobs
queue and whether queue_position follows submission order."""

from __future__ import annotations

import uuid
from typing import Any

from chalicelib.context import Context
from chalicelib.jobs.service import JobService
from chalicelib.jobs.models import JobType
from chalicelib.jobs.outbox import Reconciler
from chalicelib.platform.settings import Settings
from infra.local.stack import create_stack

JOBS = 200
HOUR = 3600.0
RECONCILE_EVERY = 60.0


class _Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _run(record_sends: bool) -> dict[str, Any]:
    prefix = f"bb{uuid.uuid4().hex[:8]}"
    env = {"JOBS_TABLE": f"{prefix}-jobs", "JOBS_QUEUE": f"{prefix}-jobs", "JOBS_DLQ": f"{prefix}-dlq",
           "RESULTS_BUCKET": f"{prefix}-results", "GPU_TABLE": f"{prefix}-gpus", "LOG_LEVEL": "ERROR"}
    settings = Settings(**env)
    create_stack(settings)
    clock = _Clock()
    ctx = Context(settings, clock=clock)
    if not record_sends:
        ctx.store.mark_dispatched = lambda *args, **kwargs: False  # type: ignore[method-assign]
    service = JobService(ctx.store, ctx.outbox, ctx.results, clock, queries=ctx.queries)
    reconciler = Reconciler(ctx.store, ctx.outbox, clock, settings.outbox_grace, settings.outbox_max_backoff,
                            batch=JOBS)
    ids = []
    for n in range(JOBS):
        clock.now += 0.5
        ids.append(service.submit(JobType.CSM, {"text": f"backlog {n}"}, "anonymous")[0].id)
    resent = 0
    start = clock.now
    while clock.now - start < HOUR:
        clock.now += RECONCILE_EVERY
        resent += reconciler.run_once().resent["dispatch"]
    depth = ctx.jobs_queue.depth()
    probe = ids[:: JOBS // 10]
    positions = [service.view(ctx.store.get(job_id)).get("queue_position") for job_id in probe]
    return {"resends": resent, "messages_on_queue": depth["messages"] + depth["delayed"] + depth["in_flight"],
            "queue_position_in_submission_order": positions == sorted(positions) and len(set(positions)) == len(probe)}


def backlog_report() -> dict[str, Any]:
    return {"jobs": JOBS, "simulated_seconds": HOUR, "before": _run(record_sends=False),
            "after": _run(record_sends=True)}
