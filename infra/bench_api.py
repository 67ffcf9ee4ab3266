"""`make bench` (BENCH_SECTIONS=features): what the API features cost.

- ``Prefer: wait`` overhead: from the moment a job becomes final to the moment a waiting
  ``GET /status`` answers (median of several jobs finished at random points of the wait);
- ``GET /jobs`` latency (median, one page of 20, and a filtered page) with 10,000 jobs of
  one key in the table."""

from __future__ import annotations

import random
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from chalicelib.context import Context
from chalicelib.jobs.models import JobStatus, JobType
from chalicelib.jobs.record import Job
from chalicelib.platform.dynamo import encode_item
from chalicelib.platform.settings import Settings
from infra.local import processes
from infra.local.stack import create_stack

WAIT_JOBS = 12
LIST_JOBS = 10_000
LIST_RUNS = 20


def _fill(ctx: Context, owner: str, count: int) -> None:
    """``count`` finished jobs of ``owner``, written 25 at a time (BatchWriteItem)."""
    now = time.time() - count
    items = []
    for n in range(count):
        job = Job(id=str(uuid.uuid4()), type=JobType.CSM, params={"text": "x"},
                  status=JobStatus.FAILED if n % 50 == 0 else JobStatus.SUCCESS, owner=owner,
                  created_at=now + n, complete_by=now + n + 3600, max_time=1200,
                  expires_at=int(now + 86400), finished_at=now + n + 1, result_text="x")
        items.append({"PutRequest": {"Item": encode_item(job.to_item())}})
    for start in range(0, len(items), 25):
        batch = {ctx.settings.jobs_table: items[start:start + 25]}
        while batch:
            batch = ctx.dynamodb.batch_write_item(RequestItems=batch).get("UnprocessedItems") or None


def features_report(work: Path) -> dict[str, Any]:
    env = {"JOBS_TABLE": "bf-jobs", "JOBS_QUEUE": "bf-jobs", "JOBS_DLQ": "bf-dlq", "RESULTS_BUCKET": "bf-results",
           "GPU_TABLE": "bf-gpus", "WEBHOOKS_QUEUE": "bf-webhooks", "C3_RENDER_API_KEY": "bench-key",
           "LOG_LEVEL": "WARNING"}
    settings = Settings(**env)
    create_stack(settings)
    ctx = Context(settings)
    port = processes.free_port()
    api = processes.start_api(port, env, work / "api-features.log")
    base, key = f"http://127.0.0.1:{port}", {"X-C3-RENDER-KEY": "bench-key"}
    try:
        overheads = []
        for _ in range(WAIT_JOBS):
            job_id = requests.post(f"{base}/csm", json={"text": "wait"}, headers=key, timeout=10).json()["id"]
            finished: dict[str, float] = {}

            def finish(job_id: str = job_id, box: dict[str, float] = finished) -> None:
                ctx.store.claim(job_id, "bench", 60)
                ctx.store.transition(job_id, JobStatus.SUCCESS, worker="bench", fields={"result_text": "x"})
                box["at"] = time.time()

            threading.Timer(random.uniform(0.5, 4.0), finish).start()
            resp = requests.get(f"{base}/status/{job_id}", headers={**key, "Prefer": "wait=20"}, timeout=30)
            answered = time.time()
            assert resp.json()["status"] == "success"
            overheads.append(answered - finished["at"])
        owner = ctx.store.get(job_id).owner  # the key's owner hash
        started = time.time()
        _fill(ctx, owner, LIST_JOBS)
        filled = time.time() - started

        def timed(path: str) -> float:
            t0 = time.perf_counter()
            resp = requests.get(f"{base}{path}", headers=key, timeout=30)
            assert resp.status_code == 200, resp.text
            return time.perf_counter() - t0

        first_page = [timed("/jobs?limit=20") for _ in range(LIST_RUNS)]
        filtered = [timed("/jobs?status=failed&limit=20") for _ in range(LIST_RUNS)]
    finally:
        processes.stop(api)
    return {
        "prefer_wait_overhead_ms": {"median": round(statistics.median(overheads) * 1000),
                                    "max": round(max(overheads) * 1000), "jobs": WAIT_JOBS},
        "list_jobs_ms": {"jobs_in_table": LIST_JOBS + WAIT_JOBS, "fill_seconds": round(filled, 1),
                         "first_page_median": round(statistics.median(first_page) * 1000, 1),
                         "filtered_status_failed_median": round(statistics.median(filtered) * 1000, 1)},
    }
