"""`make bench`, GPU section: the GPU fleet on the Comput3 simulator with provider-like delays.

    BENCH_GPU_LAUNCH / BENCH_GPU_BOOT   provider's launch answer and node boot, s (2 / 4)
    BENCH_GPU_TASK                      each job's task time, s (5)
    BENCH_GPU_SCALE                     multiplies every provider time, the jobs', the gap between
                                        bursts and the idle timeouts too (default 0.1), so the
                                        figures that matter are ratios
    BENCH_GPU_JOBS / BENCH_GPU_WORKERS  trace size (30: 3 bursts of 10, 120 s apart) and worker
                                        counts ("1,3")
    BENCH_GPU_BAD_SHARE                 share of bad inputs that fail at once (0)

Reported:
- cold start: a job on an idle system, submitted -> finished, minus launch + boot: what our
  code adds to the provider's own delays (median of BENCH_RUNS);
- a bursty trace (bursts of 10 jobs of BENCH_GPU_TASK s, 120 s apart): job latency p50/p95
  (submitted -> finished), makespan, and billed GPU seconds against busy ones (the task time
  the jobs needed), billed until every instance stopped (idle tails included: the bill).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from chalicelib.context import Context
from chalicelib.jobs.models import JobType
from chalicelib.jobs.service import JobService
from chalicelib.platform.settings import Settings
from infra.local import processes
from infra.local.simulator import SimulatorProcess
from infra.local.stack import create_stack

SCALE = float(os.environ.get("BENCH_GPU_SCALE", "0.1"))
LAUNCH = float(os.environ.get("BENCH_GPU_LAUNCH", "2")) * SCALE
BOOT = float(os.environ.get("BENCH_GPU_BOOT", "4")) * SCALE
TASK = float(os.environ.get("BENCH_GPU_TASK", "5")) * SCALE
JOBS = int(os.environ.get("BENCH_GPU_JOBS", "30"))
WORKERS = [int(n) for n in os.environ.get("BENCH_GPU_WORKERS", "1,3").split(",")]
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
BAD_SHARE = float(os.environ.get("BENCH_GPU_BAD_SHARE", "0"))
BURST, BURST_GAP = 10, 120 * SCALE


def trace(seed: int = 11) -> list[tuple[float, str, float]]:
    """(submit offset s, script, task seconds) for JOBS jobs in bursts of BURST."""
    rng = random.Random(seed)
    out = []
    for i in range(JOBS):
        at = (i // BURST) * BURST_GAP
        if rng.random() < BAD_SHARE:
            out.append((at, "fail:bad input", 0.0))
        else:
            out.append((at, f"sleep:{TASK:g}", TASK))
    return out


class Fleet:
    """A fresh stack, the simulator with provider-like delays and ``workers`` worker processes."""

    def __init__(self, work: Path, workers: int, name: str, env: dict[str, str] | None = None):
        prefix = f"bg{uuid.uuid4().hex[:8]}"
        self.env = {"JOBS_TABLE": f"{prefix}-jobs", "GPU_TABLE": f"{prefix}-gpus", "JOBS_QUEUE": f"{prefix}-jobs",
                    "JOBS_DLQ": f"{prefix}-dlq", "RESULTS_BUCKET": f"{prefix}-results", "LOG_LEVEL": "INFO",
                    "WORKER_TASKS": "tests.support.fake_gpu_tasks:fake_gpu_tasks", "RECEIVE_WAIT_SECONDS": "20",
                    "OUTPUT_DIR": str(work / f"out-{name}"), "GPU_IDLE_TIMEOUT": str(300 * SCALE),
                    "GPU_SURPLUS_IDLE": str(30 * SCALE), **(env or {})}
        settings = Settings(**self.env)
        create_stack(settings)
        self.ctx = Context(settings)
        self.service = JobService(self.ctx.store, self.ctx.outbox, self.ctx.results, time.time)
        self.sim = SimulatorProcess.start(env={"C3_SIM_APPS": "0", "C3_SIM_LAUNCH_DELAY": str(LAUNCH),
                                               "C3_SIM_NODE_INIT_SECONDS": str(BOOT)},
                                          log_path=work / f"sim-{name}.log")
        self.logs = [work / f"worker-{name}-{i}.log" for i in range(workers)]
        self.workers = [processes.start([sys.executable, "-m", "worker_runtime"], log_path=log,
                                        env={**self.env, **self.sim.worker_env()}) for log in self.logs]
        deadline = time.time() + 60
        while not all(log.exists() and "worker.started" in log.read_text() for log in self.logs):
            if time.time() > deadline:
                raise TimeoutError("workers did not start")
            time.sleep(0.1)

    def submit(self, script: str) -> str:
        job, _ = self.service.submit(JobType.CSM, {"text": script}, "bench")
        return job.id

    def finished(self, job_ids: list[str], timeout: float = 1800) -> list[Any]:
        deadline, jobs = time.time() + timeout, {}
        while len(jobs) < len(job_ids):
            if time.time() > deadline:
                raise TimeoutError(f"{len(job_ids) - len(jobs)} jobs unfinished")
            for job_id in job_ids:
                if job_id not in jobs and (job := self.ctx.store.get(job_id)).status.is_terminal:
                    jobs[job_id] = job
            time.sleep(0.05)
        return [jobs[j] for j in job_ids]

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for log in self.logs:
            for line in log.read_text().splitlines():
                if f'"{name}"' in line:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
        return out

    def close(self) -> None:
        for worker in self.workers:
            processes.stop(worker, timeout=60)
        self.sim.stop()


def cold_start(work: Path, run: int) -> float:
    fleet = Fleet(work, 1, f"cold{run}")
    try:
        [job] = fleet.finished([fleet.submit("quick")])
        assert job.status.value == "success", job.error
        return job.finished_at - job.created_at - (LAUNCH + BOOT)
    finally:
        fleet.close()


def run_trace(work: Path, workers: int, env: dict[str, str] | None = None, name: str = "") -> dict[str, Any]:
    fleet = Fleet(work, workers, f"trace{name}{workers}", env)
    try:
        jobs, started = [], time.time()
        for at, script, seconds in trace():
            while time.time() < started + at:
                time.sleep(0.01)
            jobs.append((fleet.submit(script), script, seconds))
        done = fleet.finished([j for j, _, _ in jobs])
        at_last_result = fleet.sim.ledger()["billed_seconds"]
        deadline = time.time() + 600 * SCALE + 120  # the idle tails: the spares' idle timeout
        while (ledger := fleet.sim.ledger())["running"] and time.time() < deadline:
            time.sleep(0.2)
        makespan = max(j.finished_at for j in done) - min(j.created_at for j in done)
        latencies = sorted(j.finished_at - j.created_at for j in done)
        busy = sum(seconds for _, _, seconds in jobs)
        bad = sum(1 for _, script, _ in jobs if script.startswith("fail:"))
        failed_stops = [e for e in fleet.events("gpu.stopping") if "failed" in (e.get("reason") or "")
                        and "health" not in (e.get("reason") or "")]
        wrong = [j.id for j, (_, script, _) in zip(done, jobs) if (j.status.value == "success") == script.startswith("fail:")]
        return {"workers": workers, "jobs": len(jobs), "bad_inputs": bad, "unexpected_outcomes": len(wrong),
                "p50_s": round(statistics.median(latencies), 2),
                "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2),
                "still_running": ledger["running"], "billed_to_last_result_s": round(at_last_result, 1),
                "launches": ledger["launches"], "stopped_after_bad_input": len(failed_stops),
                "launches_per_bad_input": round(len(failed_stops) / bad, 2) if bad else None,
                "billed_gpu_s": round(ledger["billed_seconds"], 1), "busy_gpu_s": round(busy, 1),
                "billed_per_busy": round(ledger["billed_seconds"] / busy, 2),
                "makespan_s": round(makespan, 1), "ideal_s": round(busy / workers, 1),
                "makespan_per_ideal": round(makespan / (busy / workers), 2)}
    finally:
        fleet.close()


def gpu_report(work: Path) -> dict[str, Any]:
    overheads = [cold_start(work, run) for run in range(RUNS)]
    return {
        "provider": {"scale": SCALE, "launch_s": LAUNCH, "boot_s": BOOT, "task_s": TASK,
                     "burst_gap_s": BURST_GAP},
        "cold_start_overhead_s": {"median": round(statistics.median(overheads), 2),
                                  "max": round(max(overheads), 2),
                                  "per_launch_plus_boot": round(statistics.median(overheads) / (LAUNCH + BOOT), 2)},
        "trace": [run_trace(work, n) for n in WORKERS],
    }
