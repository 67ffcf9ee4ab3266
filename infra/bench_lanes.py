"""`make bench` section "lanes": what the priority lanes and batches cost or buy.

- dispatch latency, idle receiver: a message sent -> received, by a single long poll on one
  queue (the worker before the lanes) against the worker's three-lane receiver
  (worker_runtime/receiver.py: a short-poll sweep, then a long poll per lane at once), with
  the message in each lane in turn. Medians over BENCH_LANE_JOBS messages, per run.
- submissions/s through the API (Chalice's local server on the moto server): one POST /batch
  of 100 jobs against 100 single POST /csm requests, one client. Medians over BENCH_RUNS.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import requests

from chalicelib.context import Context
from chalicelib.jobs.lanes import LANES
from chalicelib.platform.logs import get_logger
from chalicelib.platform.settings import Settings
from infra.local import processes
from infra.local.stack import create_stack
from worker_runtime.receiver import LaneReceiver


RUNS = int(os.environ.get("BENCH_RUNS", "3"))
LANE_JOBS = int(os.environ.get("BENCH_LANE_JOBS", "15"))
BATCH = 100


def _latency(receive: Callable[[], list[Any]], send: Callable[[int], None]) -> list[float]:
    """Per message: the receiver is already waiting (idle) when the message is sent."""
    out = []
    for n in range(LANE_JOBS):
        got: list[Any] = []
        waiting = threading.Thread(target=lambda: got.extend(receive()))
        waiting.start()
        time.sleep(0.3)  # the receiver is in its long poll
        sent = time.perf_counter()
        send(n)
        waiting.join(30)
        if not got:
            raise RuntimeError("the receiver got nothing within its long poll")
        out.append(time.perf_counter() - sent)
        for message in got:
            message.origin.delete(message.receipt)
    return out


def dispatch(env: dict[str, str]) -> dict[str, float]:
    settings = Settings(**env)
    create_stack(settings)
    ctx = Context(settings)
    one = ctx.lanes["normal"]
    single = _latency(lambda: one.receive(wait_seconds=20, visibility=30), lambda n: one.send(f"j{n}"))
    receiver = LaneReceiver(ctx.lanes, 20, 30, get_logger("bench.lanes"))
    lanes = _latency(receiver.receive, lambda n: ctx.lanes[LANES[n % 3]].send(f"j{n}"))
    return {"one_queue_ms": statistics.median(single) * 1000, "three_lanes_ms": statistics.median(lanes) * 1000}


def submissions(env: dict[str, str], work: Path, run: int) -> dict[str, float]:
    create_stack(Settings(**env))
    port = processes.free_port()
    api = processes.start_api(port, env, work / f"api-lanes{run}.log")
    base = f"http://127.0.0.1:{port}"
    try:
        with requests.Session() as s:
            started = time.perf_counter()
            for n in range(BATCH):
                assert s.post(f"{base}/csm", json={"text": f"single {n}"}, timeout=30).status_code == 200
            single = BATCH / (time.perf_counter() - started)
            items = [{"type": "csm", "params": {"text": f"batched {n}"}} for n in range(BATCH)]
            started = time.perf_counter()
            resp = s.post(f"{base}/batch", json={"items": items}, timeout=120)
            batched = BATCH / (time.perf_counter() - started)
            assert resp.status_code == 200 and resp.json()["accepted"] == BATCH, resp.text[:300]
    finally:
        processes.stop(api)
    return {"single_requests": single, "one_batch": batched}


def lanes_report(work: Path) -> dict[str, Any]:
    latency: dict[str, list[float]] = {"one_queue_ms": [], "three_lanes_ms": []}
    rates: dict[str, list[float]] = {"single_requests": [], "one_batch": []}
    for run in range(RUNS):
        prefix = f"bl{run}{uuid.uuid4().hex[:6]}"
        env = {"JOBS_TABLE": f"{prefix}-jobs", "JOBS_QUEUE": f"{prefix}-jobs", "JOBS_DLQ": f"{prefix}-dlq",
               "RESULTS_BUCKET": f"{prefix}-results", "GPU_TABLE": f"{prefix}-gpus", "LOG_LEVEL": "WARNING"}
        for k, v in dispatch(env).items():
            latency[k].append(v)
        for k, v in submissions({**env, "JOBS_TABLE": f"{prefix}-sjobs", "JOBS_QUEUE": f"{prefix}-sjobs"},
                                work, run).items():
            rates[k].append(v)
    med = {k: round(statistics.median(v), 1) for k, v in {**latency, **rates}.items()}
    return {"dispatch_idle_receiver_ms_median": {k: med[k] for k in latency},
            "dispatch_three_vs_one_ratio": round(med["three_lanes_ms"] / med["one_queue_ms"], 2),
            "submissions_per_s_median": {k: med[k] for k in rates},
            "batch_vs_single_ratio": round(med["one_batch"] / med["single_requests"], 2),
            "runs": RUNS, "messages_per_run": LANE_JOBS, "jobs_per_batch": BATCH}
