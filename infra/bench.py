"""`make bench`: throughput and dispatch figures on the local stack.

Reports medians of several runs (this machine is small and noisy):
- submissions/s from one API process (Chalice's local server) against the moto server, beside the same
  submit loop in-process (the moto-bound ceiling),
  with 1 and with 8 concurrent clients;
- dispatch latency: job submitted -> claimed by an idle worker in a long poll;
- worker memory (RSS) before and after a batch of jobs;
- the GPU fleet on the Comput3 simulator (infra/bench_gpu.py): cold-start overhead, billed/busy
  GPU seconds, makespan and launches per bad input on a bursty trace.

- the API features (infra/bench_api.py): Prefer: wait overhead, GET /jobs latency with 10,000 jobs.
- the reconciler on a backlog (infra/bench_backlog.py): re-sends for 200 queued jobs and no worker
  over one simulated hour, before and after issue 21.
- priority lanes and batches (infra/bench_lanes.py): dispatch latency of an idle receiver with three
  lanes vs one queue; submissions/s of one batch of 100 vs 100 single requests.
- the GPU idle policy (infra/bench_idle.py): fixed 30/60/120/300 s against adaptive on the bursty,
  Poisson and quiet traces (billed/busy, p50/p95, cold starts), a replay through the real policy code.
- one job's latency step by step, warm and cold, on the simulator (infra/bench_latency.py).

BENCH_SECTIONS=api,dispatch,features,gpu,backlog,lanes,idle,latency (default: all) picks what runs.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from chalicelib.context import Context
from chalicelib.platform import aws
from chalicelib.platform.settings import Settings
from infra.local import processes
from infra.local.stack import create_stack

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
SUBMISSIONS = int(os.environ.get("BENCH_SUBMISSIONS", "300"))
DISPATCH_JOBS = int(os.environ.get("BENCH_DISPATCH_JOBS", "20"))
MEMORY_JOBS = int(os.environ.get("BENCH_MEMORY_JOBS", "300"))
SECTIONS = set(os.environ.get("BENCH_SECTIONS", "api,dispatch,features,gpu,backlog,lanes,idle,latency").split(","))


def submissions_per_second(base: str, clients: int) -> float:
    session_per_thread: dict[int, requests.Session] = {}

    def one(_: int) -> int:
        import threading

        s = session_per_thread.setdefault(threading.get_ident(), requests.Session())
        return s.post(f"{base}/csm", json={"text": "bench"}, timeout=10).status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        codes = list(pool.map(one, range(SUBMISSIONS)))
    elapsed = time.perf_counter() - started
    assert codes.count(200) == SUBMISSIONS, codes[:5]
    return SUBMISSIONS / elapsed


def in_process_submissions_per_second(settings: Settings) -> float:
    from chalicelib.jobs.models import JobType
    from chalicelib.jobs.service import JobService

    ctx = Context(settings)
    service = JobService(ctx.store, ctx.outbox, ctx.results, time.time)
    started = time.perf_counter()
    for _ in range(SUBMISSIONS):
        service.submit(JobType.CSM, {"text": "bench"}, "anonymous")
    return SUBMISSIONS / (time.perf_counter() - started)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="c3-bench-"))
    moto_port = processes.free_port()
    moto = processes.start_moto(moto_port, work / "moto.log")
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{moto_port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    aws.reset_clients()
    children = [moto]
    report: dict[str, object] = {}
    try:
        # 1. API throughput, against the same submit loop run in-process (no HTTP): the
        #    ratio is the API's own cost; moto's SQS slows as a queue grows, so every
        #    measurement gets fresh resources.
        sub: dict[str, list[float]] = {"in_process": [], "1_clients": [], "8_clients": []}
        for run in range(RUNS if "api" in SECTIONS else 0):
            for label in sub:
                env = {"JOBS_TABLE": f"b{run}{label}-jobs", "JOBS_QUEUE": f"b{run}{label}-jobs",
                       "JOBS_DLQ": f"b{run}{label}-dlq", "RESULTS_BUCKET": f"b{run}-{label.replace('_', '-')}",
                       # The per-key cap stays on (its count is part of a submission's cost),
                       # set above what one run submits.
                       "LOG_LEVEL": "WARNING", "MAX_IN_FLIGHT_PER_KEY": os.environ.get("BENCH_CAP", str(10 * SUBMISSIONS))}
                create_stack(Settings(**env))
                if label == "in_process":
                    sub[label].append(in_process_submissions_per_second(Settings(**env)))
                    continue
                port = processes.free_port()
                api = processes.start_api(port, env, work / f"api{run}{label}.log")
                try:
                    sub[label].append(submissions_per_second(f"http://127.0.0.1:{port}", int(label[0])))
                finally:
                    processes.stop(api)
        if "api" in SECTIONS:
            medians = {label: round(statistics.median(v), 1) for label, v in sub.items()}
            report["submissions_per_s_median"] = medians
            report["api_vs_in_process_ratio"] = {
                label: round(medians[label] / medians["in_process"], 2) for label in ("1_clients", "8_clients")}
        if "features" in SECTIONS:
            from infra.bench_api import features_report

            report["features"] = features_report(work)
        if "backlog" in SECTIONS:
            from infra.bench_backlog import backlog_report

            report["backlog"] = backlog_report()
        if "lanes" in SECTIONS:
            from infra.bench_lanes import lanes_report

            report["lanes"] = lanes_report(work)
        if "latency" in SECTIONS:
            from infra.bench_latency import latency_report

            report["latency"] = latency_report(work)
        if "gpu" in SECTIONS:
            from infra.bench_gpu import gpu_report

            report["gpu"] = gpu_report(work)
        if "idle" in SECTIONS:
            from infra.bench_idle import idle_report, print_table

            report["idle"] = idle_report(work)
            print_table(report["idle"])

        if "dispatch" in SECTIONS:
            # 2. Dispatch latency and 3. worker memory, one idle worker in a long poll
            env = {"JOBS_TABLE": "bd-jobs", "JOBS_QUEUE": "bd-jobs", "JOBS_DLQ": "bd-dlq", "RESULTS_BUCKET": "bd-results",
                   "GPU_TABLE": "bd-gpus", "WORKER_TASKS": "tests.support.fake_tasks:fake_tasks", "LOG_LEVEL": "WARNING",
                   "OUTPUT_DIR": str(work / "out"), "RECEIVE_WAIT_SECONDS": "20"}
            settings = Settings(**env)
            create_stack(settings)
            ctx = Context(settings)
            worker = processes.start([sys.executable, "-m", "worker_runtime"], env=env, log_path=work / "worker.log")
            children.append(worker)
            from chalicelib.jobs.models import JobType
            from chalicelib.jobs.service import JobService

            service = JobService(ctx.store, ctx.outbox, ctx.results, time.time)
            time.sleep(2)  # let the worker settle into its long poll

            def run_job(body: dict) -> float:
                job, _ = service.submit(JobType.WHISPER, body, "anonymous")
                while True:
                    j = ctx.store.get(job.id)
                    if j.status.is_terminal:
                        return j.started_at - j.created_at
                    time.sleep(0.01)

            latencies = []
            for _ in range(DISPATCH_JOBS):
                time.sleep(0.3)  # the worker is idle, in a long poll, when the job arrives
                latencies.append(run_job({"audio_url": "https://x.org/a.mp3"}))
            report["dispatch_ms"] = {"median": round(statistics.median(latencies) * 1000, 1),
                                     "max": round(max(latencies) * 1000, 1), "jobs": DISPATCH_JOBS}
            before = rss_kib(worker.pid)
            for _ in range(MEMORY_JOBS):
                run_job({"audio_url": "https://x.org/b.mp3"})
            after = rss_kib(worker.pid)
            report["worker_rss_kib"] = {"before": before, "after": after, "jobs": MEMORY_JOBS,
                                        "ratio": round(after / before, 3) if before else None}
    finally:
        for child in reversed(children):
            processes.stop(child)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
