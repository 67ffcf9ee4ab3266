"""GET /stats: the per-minute counters written when jobs are counted final and when the reaper
samples the GPU instances, read back for the last hour (one BatchGetItem), on a moto server."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from chalice.test import Client

from chalicelib.api.routes import create_app
from chalicelib.context import Context
from chalicelib.jobs.record import Job
from chalicelib.jobs.models import JobStatus, JobType
from chalicelib.platform.settings import Settings
from chalicelib.jobs.stats import BOUNDS, percentile

pytestmark = pytest.mark.integration


def test_percentiles_come_from_the_histogram() -> None:
    counts = [0] * len(BOUNDS)
    assert percentile(counts, 0.5) is None
    counts[3] = 10  # ten values in (5, 10]
    assert percentile(counts, 0.5) == pytest.approx(7.5) and percentile(counts, 0.95) == pytest.approx(9.75)
    counts[-1] = 90  # most above an hour: the open bucket answers its lower bound
    assert percentile(counts, 0.95) == 3600


def final_job(status: JobStatus, waited: float, ran: float, finished_at: float) -> Job:
    started = finished_at - ran
    return Job(id=str(uuid.uuid4()), type=JobType.CSM, params={"text": "x"}, status=status, owner="anonymous",
               created_at=started - waited, complete_by=finished_at + 3600, max_time=600,
               expires_at=int(finished_at) + 86400, attempts=1, started_at=started, first_started_at=started,
               finished_at=finished_at)


def test_finished_jobs_and_gpu_samples_show_in_the_last_hour(stack_env) -> None:
    now = (time.time() // 60) * 60 + 30  # mid-minute: "now - 1" is this minute whenever the test runs
    ctx = Context(Settings(**stack_env), clock=lambda: now)
    jobs = [final_job(JobStatus.SUCCESS, 3, 15, now - 1), final_job(JobStatus.SUCCESS, 4, 25, now - 1),
            final_job(JobStatus.FAILED, 40, 0.5, now - 1), final_job(JobStatus.CANCELLED, 1, 2, now - 180)]
    for job in jobs:
        ctx.store.create(job)
        assert ctx.store.count_finished(job.id)
    assert not ctx.store.count_finished(jobs[0].id)  # counted once: no second point either
    ctx.stats.gpu_sample(rented=2, busy=1)
    with Client(create_app(ctx)) as client:
        resp = client.http.get("/stats")
    assert resp.status_code == 200
    stats = json.loads(resp.body)
    minutes = stats["minutes"]
    assert len(minutes) == 60 and minutes == sorted(minutes, key=lambda m: m["t"])
    last = minutes[-1]
    assert last["finished"] == {"success": 2, "failed": 1, "cancelled": 0, "timed_out": 0}
    assert last["gpu"] == {"billed_seconds": 120.0, "busy_seconds": 60.0}
    assert 2 < last["queue_wait"]["p50"] <= 5 and 20 < last["queue_wait"]["p95"] <= 60
    assert 10 < last["run_time"]["p50"] <= 20 and 20 < last["run_time"]["p95"] <= 30
    assert minutes[-4]["finished"]["cancelled"] == 1 or minutes[-3]["finished"]["cancelled"] == 1
    assert stats["hour"]["finished"] == {"success": 2, "failed": 1, "cancelled": 1, "timed_out": 0}
    assert stats["hour"]["gpu"] == {"billed_seconds": 120.0, "busy_seconds": 60.0}
    assert minutes[0]["finished"] == {"success": 0, "failed": 0, "cancelled": 0, "timed_out": 0}
    assert minutes[0]["queue_wait"] == {"p50": None, "p95": None}


def test_a_stats_table_that_fails_costs_a_point_not_the_count(stack_env) -> None:
    ctx = Context(Settings(**{**stack_env, "STATS_TABLE": "no-such-table"}))
    job = final_job(JobStatus.SUCCESS, 1, 1, time.time())
    ctx.store.create(job)
    assert ctx.store.count_finished(job.id)  # the stats write failed, was logged, and did not raise
    assert ctx.store.get(job.id).counted_at is not None
