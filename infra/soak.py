"""`make soak`: the whole system under the failures production has, then the books.

K workers (real processes) and the app's handlers run on a moto server behind the
fault proxy (AWS throttles at a low rate); N jobs of all four types, each with a
notify_url, go to a webhook receiver that refuses about half of the calls; a random
worker is SIGKILLed every KILL_EVERY seconds and replaced; about one job in ten has
its GPU node die under it (simulator fault switch). When every job is final and every
delivery settled, it checks:

- 0 jobs lost: every job final; every success has its result object;
- every job with a notify_url has exactly one accepted final webhook, or shows
  ``webhook: failed`` after all its attempts were refused (none silently missing);
- 0 jobs with two accepted final webhooks;
- 0 GPU instances left running once the idle timeout has passed;
- no job counted twice in the JobsSubmitted / JobsFinished metrics (read from every
  process's log), with the metrics' totals, takeovers, webhook outcomes and GPU billed
  seconds printed beside the books' and the simulator's;

and prints the counts of kills, takeovers, AWS faults injected, webhook attempts
and give-ups. Exit status 0 only if every check holds.

    python -m infra.soak --jobs 500 --workers 3        # make soak
    python -m infra.soak --jobs 80 --kill-every 15     # the short run in make test
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chalicelib.context import Context
from chalicelib.jobs.models import JobType
from chalicelib.jobs.record import Job
from chalicelib.jobs.service import JobService
from chalicelib.platform import aws
from chalicelib.platform.dynamo import decode_item
from chalicelib.platform.metrics import Metrics
from chalicelib.platform.settings import Settings
from infra.local import emf, processes
from infra.local.fault_proxy import FaultProxy, Rule
from infra.local.samples import write_samples
from infra.local.simulator import SimulatorProcess
from infra.local.stack import create_stack
from infra.local.webhook_receiver import Receiver

TYPES = ("csm", "whisper", "portrait", "analyze")


@dataclass
class Options:
    jobs: int = 500
    workers: int = 3
    kill_every: float = 30.0
    refuse: float = 0.5
    node_deaths: float = 0.1
    throttle: float = 0.01
    webhook_attempts: int = 5
    webhook_interval: float = 1.0
    idle_timeout: float = 10.0
    timeout: float = 1800.0
    seed: int = 7
    work: Path | None = None


@dataclass
class Books:
    kills: int = 0
    node_deaths: int = 0
    checks: dict[str, bool] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


def say(message: str) -> None:
    print(f"[soak] {message}", flush=True)


class Soak:
    def __init__(self, opts: Options):
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.work = opts.work or Path(tempfile.mkdtemp(prefix="c3-soak-"))
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        self.books = Books()
        self.children: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        self.worker_seq = 0

    # -- the system -----------------------------------------------------------------
    def start(self) -> None:
        logs = self.work / "logs"
        port = processes.free_port()
        self.moto = processes.start_moto(port, logs / "moto.log")
        self.children.append(self.moto)
        direct = f"http://127.0.0.1:{port}"
        os.environ.update({"AWS_ENDPOINT_URL": direct, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_REGION": "us-east-1", "ALLOW_PRIVATE_URLS": "true"})
        aws.reset_clients()
        names = {"JOBS_TABLE": "soak-jobs", "GPU_TABLE": "soak-gpus", "JOBS_QUEUE": "soak-jobs",
                 "JOBS_DLQ": "soak-jobs-dlq", "INTAKE_QUEUE": "soak-intake", "EVENTS_QUEUE": "soak-events",
                 "WEBHOOKS_QUEUE": "soak-webhooks", "RESULTS_BUCKET": "soak-results"}
        self.settings = Settings(**names)
        create_stack(self.settings, visibility=10)
        self.ctx = Context(self.settings)
        # The submissions' metric lines go to a log of their own, like every other process's.
        self.ctx.store.metrics = Metrics(stream=open(logs / "submitter.log", "a"))  # noqa: SIM115
        self.proxy = FaultProxy(direct, seed=self.opts.seed).start()
        if self.opts.throttle:
            for service in ("dynamodb", "sqs"):
                self.proxy.add(Rule(service=service, action="throttle", times=None,
                                    probability=self.opts.throttle))
        self.sim = SimulatorProcess.start(log_path=logs / "simulator.log")
        samples = write_samples(self.work / "samples")
        self.samples_port = processes.free_port()
        self.children.append(processes.start(
            [sys.executable, "-m", "http.server", str(self.samples_port), "--bind", "127.0.0.1",
             "--directory", str(samples)], log_path=logs / "samples.log"))
        processes.wait_http(f"http://127.0.0.1:{self.samples_port}/", timeout=15)
        self.receiver = Receiver(refuse_ratio=self.opts.refuse, seed=self.opts.seed).start()
        self.env = {
            **names, **self.sim.worker_env(), "AWS_ENDPOINT_URL": self.proxy.url, "LOG_LEVEL": "INFO",
            "WORKER_TASKS": "worker_runtime.tasks:default_tasks", "ALLOW_PRIVATE_URLS": "true",
            "LEASE_SECONDS": "10", "RENDER_POLLING_INTERVAL": "1", "RECEIVE_WAIT_SECONDS": "2",
            "SHUTDOWN_GRACE": "2", "OUTBOX_GRACE": "5", "LOCAL_SCHEDULE_INTERVAL": "2",
            "LAMBDA_POLL_WAIT_SECONDS": "2",
            "WEBHOOK_ATTEMPTS": str(self.opts.webhook_attempts),
            "WEBHOOK_INTERVAL": str(self.opts.webhook_interval), "WEBHOOK_TIMEOUT": "5",
            "GPU_IDLE_TIMEOUT": str(self.opts.idle_timeout),
            "GPU_HEALTH_INTERVAL": "2", "GPU_HEARTBEAT_INTERVAL": "2", "GPU_OWNER_GRACE": "8",
            "GPU_BOOT_POLL": "0.2", "GPU_BOOT_TIMEOUT": "30",  # simulated nodes boot in under a second
            "GRADIO_POLL_INTERVAL": "0.2", "COMFYUI_POLL_INTERVAL": "0.2",
        }
        self.children.append(processes.start([sys.executable, "-m", "infra.local.lambda_poller"],
                                             env=self.env, log_path=logs / "handlers.log"))
        for _ in range(self.opts.workers):
            self.spawn_worker()

    def spawn_worker(self) -> None:
        self.worker_seq += 1
        name = f"worker-{self.worker_seq}"
        env = {**self.env, "OUTPUT_DIR": str(self.work / "out" / name), "WORKER_ID": name}
        self.workers.append(processes.start([sys.executable, "-m", "worker_runtime"], env=env,
                                            log_path=self.work / "logs" / f"{name}.log"))

    def stop(self) -> None:
        for proc in self.workers + self.children:
            processes.stop(proc, timeout=15)
        self.proxy.stop()
        self.receiver.stop()
        self.sim.stop()

    # -- the load and the chaos ------------------------------------------------------------
    def submit_all(self) -> list[str]:
        service = JobService(self.ctx.store, self.ctx.outbox, self.ctx.results, time.time)
        base = f"http://127.0.0.1:{self.samples_port}"
        bodies = {
            "csm": {"text": "Soak test speech."},
            "whisper": {"audio_url": f"{base}/speech.wav", "model": "tiny"},
            "portrait": {"image_url": f"{base}/portrait.jpg", "audio_url": f"{base}/speech.wav"},
            "analyze": {"image_url": f"{base}/portrait.jpg"},
        }
        ids = []
        for i in range(self.opts.jobs):
            kind = TYPES[i % len(TYPES)]
            job, _ = service.submit(JobType(kind), {**bodies[kind], "notify_url": self.receiver.url},
                                    "anonymous", f"soak-{uuid.uuid4()}")
            ids.append(job.id)
        return ids

    def chaos(self, ids: list[str], stop: threading.Event) -> None:
        next_kill = time.monotonic() + self.opts.kill_every
        deaths_due = 0.0
        seen_final = 0
        while not stop.wait(0.5):
            if time.monotonic() >= next_kill:
                next_kill = time.monotonic() + self.opts.kill_every
                victim = self.rng.choice([w for w in self.workers if w.poll() is None] or [None])
                if victim is not None:
                    os.kill(victim.pid, signal.SIGKILL)
                    victim.wait()
                    self.books.kills += 1
                    say(f"SIGKILL worker pid {victim.pid}; starting a replacement")
                    self.spawn_worker()
            final = self.count_final(ids)
            deaths_due += (final - seen_final) * self.opts.node_deaths
            seen_final = final
            if deaths_due >= 1 and self.kill_busy_node():
                deaths_due -= 1

    def kill_busy_node(self) -> bool:
        """Kill a node that is serving a job right now (the GPU registry says which)."""
        items = self.ctx.dynamodb.scan(TableName=self.settings.gpu_table, ConsistentRead=True)["Items"]
        busy = [decode_item(i) for i in items]
        # Busy with a job: not a pool launch still booting for no job yet (``ahead``).
        busy = [r["workload"] for r in busy if r.get("busy") and r.get("workload") and not r.get("ahead")]
        alive = {i["workload"] for i in self.sim.ledger()["instances"] if i["running"] and not i["dead"]}
        candidates = [w for w in busy if w in alive]
        if not candidates:
            return False
        workload = self.rng.choice(candidates)
        self.sim.node_action(workload, die=True)
        self.books.node_deaths += 1
        say(f"GPU node {workload} dies mid-job")
        return True

    def count_final(self, ids: list[str]) -> int:
        return sum(1 for job in self.jobs(ids) if job.status.is_terminal)

    def jobs(self, ids: list[str]) -> list[Any]:
        out = []
        for start in range(0, len(ids), 100):
            keys = [{"id": {"S": i}} for i in ids[start:start + 100]]
            resp = self.ctx.dynamodb.batch_get_item(RequestItems={self.settings.jobs_table: {
                "Keys": keys, "ConsistentRead": True}})
            out += [Job.from_item(decode_item(item)) for item in resp["Responses"][self.settings.jobs_table]]
        return out

    # -- the books ---------------------------------------------------------------------------
    def run(self) -> Books:
        started = time.monotonic()
        self.start()
        say(f"system up in {time.monotonic() - started:.1f}s; submitting {self.opts.jobs} jobs "
            f"({self.opts.workers} workers, work dir {self.work})")
        ids = self.submit_all()
        stop = threading.Event()
        chaos = threading.Thread(target=self.chaos, args=(ids, stop), daemon=True)
        chaos.start()
        deadline = time.monotonic() + self.opts.timeout
        last = -1
        while time.monotonic() < deadline:
            jobs = self.jobs(ids)
            final = [j for j in jobs if j.status.is_terminal]
            settled = [j for j in final if j.outbox is None]
            if len(final) != last:
                last = len(final)
                say(f"{len(final)}/{len(ids)} final, {len(settled)} settled")
            if len(settled) == len(ids):
                break
            time.sleep(2)
        stop.set()
        chaos.join(10)
        rendered = time.monotonic() - started
        self.gpu_idle_check()
        self.audit(ids, rendered)
        return self.books

    def gpu_idle_check(self) -> None:
        deadline = time.monotonic() + self.opts.idle_timeout * 3 + 30
        running: list[Any] = []
        while time.monotonic() < deadline:
            running = [i for i in self.sim.ledger()["instances"] if i["running"]]
            if not running:
                break
            time.sleep(1)
        self.books.figures["gpu_running_after_idle"] = len(running)
        self.books.checks["0 GPU instances left running after the idle timeout"] = not running

    def audit(self, ids: list[str], seconds: float) -> None:
        jobs = {j.id: j for j in self.jobs(ids)}
        accepted = Counter(r.json().get("id") for r in self.receiver.requests if r.accepted)
        statuses = Counter(j.status.value for j in jobs.values())
        lost = [i for i in ids if i not in jobs or not jobs[i].status.is_terminal]
        missing_results = [j.id for j in jobs.values() if j.status.value == "success" and not (
            j.result_text is not None or self._exists(j.result_key))]
        silent = [j.id for j in jobs.values() if accepted[j.id] == 0 and j.webhook != "failed"]
        doubles = [i for i, n in accepted.items() if n > 1]
        failed_hooks = [j.id for j in jobs.values() if j.webhook == "failed"]
        wrongly_failed = [i for i in failed_hooks if accepted[i]]
        ledger = self.sim.ledger()
        b = self.books
        b.checks.update({
            "0 jobs lost (every job final)": not lost,
            "every success has its result": not missing_results,
            "no job silently without its final webhook": not silent,
            "0 jobs with two accepted final webhooks": not doubles,
            "no 'webhook: failed' job that got an accepted webhook": not wrongly_failed,
        })
        b.figures.update({
            "jobs": len(ids), "seconds": round(seconds, 1), "statuses": dict(statuses),
            "lost": len(lost), "missing_results": len(missing_results), "silent": len(silent),
            "double_webhooks": len(doubles), "webhook_failed_after_all_attempts": len(failed_hooks),
            "webhook_calls": len(self.receiver.requests), "webhooks_accepted": sum(accepted.values()),
            "worker_kills": b.kills, "node_deaths": b.node_deaths,
            "takeovers": sum(1 for j in jobs.values() if j.attempts > 1),
            "aws_faults_injected": sum(n for k, n in self.proxy.counts.items() if k != "upstream.dropped"),
            "emulator_dropped_connections": self.proxy.counts.get("upstream.dropped", 0),
            "gpu_launches": ledger.get("launches"), "gpu_stops": ledger.get("stops"),
        })
        self.audit_metrics(ids, ledger)

    def audit_metrics(self, ids: list[str], ledger: dict[str, Any]) -> None:
        """The metrics every process wrote, against the books: each job submitted and
        finished once (a count can only go missing, never double: a process killed between
        its conditional mark and the line), the GPU seconds against the simulator's bill."""
        points = emf.read(*sorted((self.work / "logs").glob("*.log")))
        submitted = Counter(p.get("job_id") for p in emf.named(points, "JobsSubmitted"))
        finished = Counter(p.get("job_id") for p in emf.named(points, "JobsFinished"))
        b = self.books
        b.checks["no job counted twice in JobsSubmitted or JobsFinished"] = (
            max(submitted.values(), default=0) <= 1 and max(finished.values(), default=0) <= 1)
        b.figures["metrics"] = {
            "jobs_submitted": sum(submitted.values()), "jobs_finished": sum(finished.values()),
            "jobs_finished_missing": sum(1 for i in ids if not finished[i]),
            "by_outcome": dict(Counter(p.get("outcome") for p in emf.named(points, "JobsFinished"))),
            "takeovers": len(emf.named(points, "Takeovers")),
            "webhooks": dict(Counter(p.get("outcome") for p in emf.named(points, "WebhookDeliveries"))),
            "gpu_launches": len(emf.named(points, "GpuLaunches")),
            "gpu_billed_seconds": round(sum(p.value for p in emf.named(points, "GpuBilledSeconds")), 1),
            "gpu_billed_seconds_simulator": ledger.get("billed_seconds"),
        }

    def _exists(self, key: str | None) -> bool:
        if not key:
            return False
        try:
            self.ctx.s3.head_object(Bucket=self.settings.results_bucket, Key=key)
            return True
        except Exception:  # noqa: BLE001 - a missing object is what we look for
            return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Options()
    for name, value in vars(defaults).items():
        if name == "work":
            parser.add_argument("--work", type=Path, default=None)
            continue
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    opts = Options(**vars(parser.parse_args(argv)))
    soak = Soak(opts)
    try:
        books = soak.run()
    finally:
        soak.stop()
    print(json.dumps({"soak": books.figures}, indent=2), flush=True)
    for check, ok in books.checks.items():
        say(f"{'PASS' if ok else 'FAIL'}  {check}")
    say(f"logs: {soak.work / 'logs'}")
    return 0 if all(books.checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
