"""Helpers to run workers (in a thread or as real processes) against the test stack."""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from chalicelib.api.routes import create_app
from chalicelib.context import Context
from chalicelib.jobs.models import JobType
from chalicelib.jobs.service import JobService
from chalicelib.platform.settings import Settings
from infra.local.lambda_poller import PollerSettings, start_pollers
from worker_runtime.settings import WorkerSettings
from worker_runtime.tasks import load_tasks
from worker_runtime.worker import Worker

from . import procs
from .sqs_events import depth

FAST = {
    "RECEIVE_WAIT_SECONDS": "1",
    "LEASE_SECONDS": "6",
    "RENDER_POLLING_INTERVAL": "0.2",
    "SHUTDOWN_GRACE": "1",
    "WEBHOOK_ATTEMPTS": "3",
    "WEBHOOK_INTERVAL": "0.05",
    "WEBHOOK_TIMEOUT": "2",
    "WORKER_TASKS": "tests.support.fake_tasks:fake_tasks",
}


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


FAST_POLL = PollerSettings(LAMBDA_POLL_WAIT_SECONDS=1, LAMBDA_POLL_ERROR_BACKOFF=0.1,
                           LOCAL_SCHEDULE_INTERVAL=1)


class Handlers:
    """The app's SQS and schedule handlers (deliveries, dead letters, intake, the
    reconciler) run by the local poller in threads of the test process, as `make run` does."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time):
        self.app = create_app(Context(settings, clock=clock))
        self.settings = settings
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def __enter__(self) -> "Handlers":
        self.threads = start_pollers(self.app, self.settings, self.stop, FAST_POLL)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)


class ThreadWorker:
    """A Worker running in a thread of the test process, with the app's handlers
    (webhook deliveries and the rest) polled beside it unless ``handlers=False``."""

    def __init__(self, env: dict[str, str], clock: Callable[[], float] = time.time, gpu: Any = None,
                 handlers: bool = True, **overrides: str):
        settings = WorkerSettings(**{**FAST, **env, **overrides})
        self.settings = settings
        self.ctx = Context(settings, clock=clock)
        tasks = load_tasks(settings.tasks, settings=settings)
        self.worker = Worker(self.ctx, settings, tasks, gpu=gpu, clock=clock)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.handlers = Handlers(settings, clock) if handlers else None

    def __enter__(self) -> "ThreadWorker":
        if self.handlers is not None:
            self.handlers.__enter__()
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.worker.request_stop()
        self.thread.join(timeout=15)
        if self.handlers is not None:
            self.handlers.__exit__()


def final(ctx: Context, job_id: str, timeout: float = 30.0) -> Any:
    """The job's record once it is in a terminal state."""
    return wait_until(lambda: (j := ctx.store.get(job_id)) and j.status.is_terminal and j, timeout)


def settled(ctx: Context, job_id: str, timeout: float = 15.0) -> Any:
    """Every copy of the job's message consumed and its delivery settled (webhook
    delivered or given up, event sent): nothing left that could cause another webhook."""
    return wait_until(lambda: depth(ctx.sqs, ctx.settings.jobs_queue) == 0
                      and depth(ctx.sqs, ctx.settings.webhooks_queue) == 0
                      and (j := ctx.store.get(job_id)).outbox is None and j, timeout)


def service(ctx: Context) -> JobService:
    return JobService(ctx.store, ctx.outbox, ctx.results, ctx.clock)


def submit(ctx: Context, job_type: str, body: dict[str, Any], owner: str = "anonymous") -> str:
    job, _ = service(ctx).submit(JobType(job_type), body, owner)
    return job.id


def start_worker_process(env: dict[str, str], log_path: Path, **overrides: str):
    full = {**FAST, **env, **overrides}
    return procs.start([sys.executable, "-m", "worker_runtime"], env=full, log_path=log_path)


def task_events(log_path: Path, job_id: str) -> list[tuple[int, str]]:
    if not log_path.exists():
        return []
    out = []
    for line in log_path.read_text().splitlines():
        jid, pid, event = line.split()
        if jid == job_id:
            out.append((int(pid), event))
    return out


def log_events(log_path: Path, event: str) -> list[dict[str, Any]]:
    out = []
    for line in log_path.read_text().splitlines() if log_path.exists() else []:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == event:
            out.append(entry)
    return out


os.environ.setdefault("PYTHONUNBUFFERED", "1")


def send_from(source: str, port: int, path: str, headers: dict[str, str] | None = None,
              method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """A request to http://127.0.0.1:port/path sent from ``source``, an address of the loopback
    network (127.0.0.0/8): the API's edge tells callers apart by address, as WAF does."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()
