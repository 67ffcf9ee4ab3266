"""`make bench` (BENCH_SECTIONS=latency): one job's latency, step by step, on the simulator.

The whole local system as `make run` starts it (moto server, API, the Lambda poller's
deliverer, one worker process, the Comput3 simulator), with provider-like delays:
launch answers after BENCH_LAT_LAUNCH s (2), a new node boots in BENCH_LAT_BOOT s (4),
and every CSM call does BENCH_LAT_WORK s (5) of work (the simulator's ``slow`` switch).

Each of BENCH_RUNS runs (5) is a fresh system (new tables, queues, worker, no instance):
one cold CSM job (the first: it launches the instance), then BENCH_LAT_WARM warm ones
(1; the instance is reused). Every job has a ``notify_url`` (a receiver in this process)
and a client waiting on ``GET /status`` with ``Prefer: wait``.

Per job, from the logs and records of that one run (all on this machine's clock):

    submit -> claimed                     job.created_at -> the worker's job.claimed
    claimed -> node work starts           (cold: includes launch and boot, shown apart; warm:
                                          claimed -> node reused -> Gradio submit -> work)
    node work                             the simulator's own log: sim.slow -> sim.csm.generated
    node work ends -> final write         result fetch, transcode, upload, the final write
    final write -> webhook received       the receiver's clock
    final write -> Prefer: wait answer

and the overhead: submit -> webhook minus the node's work (warm) or minus the provider's
launch + boot + work (cold). The provider's time comes from the simulator's log too: from
the launch request's arrival to the node being ready, which is launch + boot as configured
or, when this machine is busy, the moment the simulated node had built its apps, if later
(``node_ready_late`` says by how much). Medians over the runs. ``moto_ms`` times single
calls on the same moto server: the floor a step that makes N calls cannot go below here.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from chalicelib.context import Context
from chalicelib.platform.settings import Settings
from infra.local import processes
from infra.local.simulator import SimulatorProcess
from infra.local.stack import create_stack
from infra.local.webhook_receiver import Receiver

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
LAUNCH = float(os.environ.get("BENCH_LAT_LAUNCH", "2"))
BOOT = float(os.environ.get("BENCH_LAT_BOOT", "4"))
WORK = float(os.environ.get("BENCH_LAT_WORK", "5"))
WARM = int(os.environ.get("BENCH_LAT_WARM", "1"))


def read_log(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def first(entries: list[dict[str, Any]], event: str, **match: Any) -> float | None:
    for entry in entries:
        if entry.get("event") == event and all(entry.get(k) == v for k, v in match.items()):
            return float(entry["ts"])
    return None


class System:
    """One fresh local system; the simulator is shared across runs (reset between them)."""

    def __init__(self, work: Path, sim: SimulatorProcess, receiver: Receiver, run: int):
        prefix = f"bl{uuid.uuid4().hex[:8]}"
        self.work = work
        self.env = {"JOBS_TABLE": f"{prefix}-jobs", "GPU_TABLE": f"{prefix}-gpus", "JOBS_QUEUE": f"{prefix}-jobs",
                    "JOBS_DLQ": f"{prefix}-dlq", "RESULTS_BUCKET": f"{prefix}-results",
                    "WEBHOOKS_QUEUE": f"{prefix}-webhooks", "EVENTS_QUEUE": f"{prefix}-events",
                    "INTAKE_QUEUE": f"{prefix}-intake", "LOG_LEVEL": "INFO", "ALLOW_PRIVATE_URLS": "true",
                    "OUTPUT_DIR": str(work / f"out{run}"), "RECEIVE_WAIT_SECONDS": "20",
                    # Only the deliverer and the reconciler matter here; the other schedules stay quiet.
                    "LOCAL_SCHEDULE_INTERVAL": "60"}
        settings = Settings(**self.env)
        create_stack(settings)
        self.ctx = Context(settings)
        self.logs = {name: work / f"{name}{run}.log" for name in ("api", "poller", "worker")}
        self.port = processes.free_port()
        self.api = processes.start_api(self.port, self.env, self.logs["api"])
        self.poller = processes.start([sys.executable, "-m", "infra.local.lambda_poller"], env=self.env,
                                      log_path=self.logs["poller"])
        self.worker = processes.start([sys.executable, "-m", "worker_runtime"], log_path=self.logs["worker"],
                                      env={**self.env, **sim.worker_env()})
        self.base = f"http://127.0.0.1:{self.port}"
        self.receiver = receiver
        self.session = requests.Session()
        deadline = time.time() + 90
        while not (first(read_log(self.logs["worker"]), "worker.started")
                   and first(read_log(self.logs["poller"]), "poller.started")):
            if time.time() > deadline:
                raise TimeoutError("the worker or the poller did not start")
            time.sleep(0.1)

    def job(self) -> dict[str, Any]:
        """Submit one CSM job; returns its times (absolute, this machine's clock)."""
        resp = self.session.post(f"{self.base}/csm", json={"text": "Latency to the limit.",
                                                           "notify_url": self.receiver.url}, timeout=30)
        resp.raise_for_status()
        job_id = resp.json()["id"]
        waited: dict[str, Any] = {}

        def wait() -> None:
            with requests.Session() as s:
                while True:
                    r = s.get(f"{self.base}/status/{job_id}", headers={"Prefer": "wait=25"}, timeout=60)
                    if r.json().get("status") not in ("queued", "running"):
                        waited.update(at=time.time(), status=r.json()["status"])
                        return

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        waiter.join(120)
        deadline = time.time() + 30
        while not self.receiver.accepted_for(job_id):
            if time.time() > deadline:
                raise TimeoutError(f"no webhook for job {job_id}")
            time.sleep(0.01)
        record = self.ctx.store.get(job_id)
        assert record is not None and record.status.value == "success", (record and record.error)
        return {"id": job_id, "created": record.created_at, "finished": record.finished_at,
                "webhook": self.receiver.accepted_for(job_id)[0].at, "wait_answer": waited.get("at")}

    def close(self) -> None:
        for proc in (self.worker, self.poller, self.api):
            processes.stop(proc, timeout=30)


def breakdown(job: dict[str, Any], worker: list[dict[str, Any]], sim: list[dict[str, Any]],
              cold: bool) -> dict[str, float]:
    """Seconds per step of one job (see the module docstring)."""
    jid = job["id"]
    claimed = first(worker, "job.claimed", job_id=jid)
    submitted_gradio = first(worker, "gradio.submitted", job_id=jid)
    done = first(worker, "csm.done", job_id=jid)
    # The node's own work: the simulator's log lines nearest after the Gradio submit.
    slow = [e for e in sim if e.get("event") == "sim.slow" and submitted_gradio and e["ts"] >= submitted_gradio - 1]
    work_start = float(slow[0]["ts"]) if slow else None
    gen = [e for e in sim if e.get("event") == "sim.csm.generated" and work_start and e["ts"] >= work_start]
    work_end = float(gen[0]["ts"]) if gen else None
    assert claimed and work_start and work_end and done, f"missing log lines for job {jid}"
    out = {"submit_to_claimed": claimed - job["created"]}
    provider = 0.0
    if cold:
        launching = first(worker, "gpu.launching", job_id=jid)
        launched = first(worker, "gpu.launched", job_id=jid)
        ready = first(worker, "gpu.ready", job_id=jid)
        assert launching and launched and ready, f"job {jid} did not launch"
        requested = [float(e["ts"]) for e in sim if e.get("event") == "sim.launched" and e["ts"] >= launching]
        mounted = [float(e["ts"]) for e in sim if e.get("event") == "sim.apps_mounted" and e["ts"] >= launching]
        assert requested, f"no sim.launched line for job {jid}"
        node_ready = max(requested[0] + LAUNCH + BOOT, mounted[0] if mounted else 0.0)
        provider = node_ready - requested[0]
        out.update(claimed_to_launch=launching - claimed, launch=launched - launching, boot=ready - launched,
                   provider_launch_boot=provider, node_ready_late=provider - (LAUNCH + BOOT),
                   ready_seen_after=ready - node_ready, ready_to_work=work_start - ready)
    else:
        out["claimed_to_work"] = work_start - claimed
        node = first(worker, "gpu.reused", job_id=jid) or first(worker, "gpu.adopted", job_id=jid)
        if node:  # its parts: prepare + getting the node, then the render step up to the node's start
            out.update(claimed_to_node=node - claimed, node_to_gradio_submit=submitted_gradio - node)
    out["gradio_submit_to_work"] = work_start - submitted_gradio
    line = next((e for e in worker if e.get("event") == "gradio.submitted" and e.get("job_id") == jid), {})
    if "connect_seconds" in line:  # inside the step before: gradio_client's connect and submit
        out.update(gradio_connect=line["connect_seconds"], gradio_submit=line["submit_seconds"])
    out.update(node_work=work_end - work_start, work_end_to_result=done - work_end,
               result_to_final=job["finished"] - done, final_to_webhook=job["webhook"] - job["finished"],
               final_to_wait_answer=(job["wait_answer"] or job["finished"]) - job["finished"],
               submit_to_webhook=job["webhook"] - job["created"],
               submit_to_wait_answer=(job["wait_answer"] or job["finished"]) - job["created"])
    floor = out["node_work"] + provider
    out["overhead_webhook"] = out["submit_to_webhook"] - floor
    out["overhead_wait_answer"] = out["submit_to_wait_answer"] - floor
    return out


def moto_ms(ctx: Context, n: int = 30) -> dict[str, float]:
    """Median single-call latency on the bench's moto server (its system stopped: no
    worker takes what this sends)."""
    calls = {
        "get_item": lambda: ctx.store.get("bench"),
        "update_item": lambda: ctx.dynamodb.update_item(
            TableName=ctx.settings.jobs_table, Key={"id": {"S": "bench"}},
            UpdateExpression="SET bench_n = :n", ExpressionAttributeValues={":n": {"N": "1"}}),
        "send_message": lambda: ctx.webhooks_queue.send("bench"),
        "put_object_50k": lambda: ctx.s3.put_object(Bucket=ctx.settings.results_bucket, Key="bench/x",
                                                    Body=b"x" * 50_000),
    }
    out = {}
    for name, call in calls.items():
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        out[name] = round(statistics.median(times) * 1000, 1)
    return out


def _median(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}


def latency_report(work: Path) -> dict[str, Any]:
    sim_log = work / "sim-latency.log"
    sim = SimulatorProcess.start(env={"C3_SIM_LAUNCH_DELAY": str(LAUNCH), "C3_SIM_NODE_INIT_SECONDS": str(BOOT),
                                      "LOG_LEVEL": "INFO"}, log_path=sim_log, timeout=90)
    receiver = Receiver().start()
    cold: list[dict[str, float]] = []
    warm: list[dict[str, float]] = []
    load = os.getloadavg()
    floor: dict[str, float] = {}
    try:
        for run in range(RUNS):
            sim.reset()
            sim.set_faults(launch_delay=LAUNCH, node_init_seconds=BOOT, node={"csm": "slow", "slow_seconds": WORK})
            system = System(work, sim, receiver, run)
            try:
                jobs = [system.job() for _ in range(1 + WARM)]
                worker_log, sim_entries = read_log(system.logs["worker"]), read_log(sim_log)
                cold.append(breakdown(jobs[0], worker_log, sim_entries, cold=True))
                warm += [breakdown(j, worker_log, sim_entries, cold=False) for j in jobs[1:]]
            finally:
                system.close()
            if run == 0:
                floor = moto_ms(system.ctx)
    finally:
        receiver.stop()
        sim.stop()
    return {"provider": {"launch_s": LAUNCH, "boot_s": BOOT, "work_s": WORK}, "runs": RUNS,
            "load_avg_1_5_15": [round(x, 2) for x in load], "load_avg_after": [round(x, 2) for x in os.getloadavg()],
            "warm_median_s": _median(warm), "cold_median_s": _median(cold),
            "warm_overhead_webhook_s_all": sorted(round(r["overhead_webhook"], 3) for r in warm),
            "cold_overhead_webhook_s_all": sorted(round(r["overhead_webhook"], 3) for r in cold),
            "moto_ms": floor}
