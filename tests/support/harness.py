"""Helpers to run workers (in a thread or as real processes) against the test stack."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from chalicelib.context import Context
from chalicelib.jobs import JobService
from chalicelib.models import JobType
from chalicelib.webhooks import WebhookSender
from worker_runtime.notify import Notifier
from worker_runtime.settings import WorkerSettings
from worker_runtime.tasks import load_tasks
from worker_runtime.worker import Worker

from . import procs

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


class ThreadWorker:
    """A Worker running in a thread of the test process."""

    def __init__(self, env: dict[str, str], clock: Callable[[], float] = time.time, gpu: Any = None,
                 **overrides: str):
        settings = WorkerSettings(**{**FAST, **env, **overrides})
        self.settings = settings
        self.ctx = Context(settings, clock=clock)
        webhooks = WebhookSender(settings.webhook_attempts, settings.webhook_interval,
                                 settings.webhook_timeout, settings.webhook_secret, clock=clock)
        self.notifier = Notifier(webhooks, self.ctx.results)
        tasks = load_tasks(settings.tasks, settings=settings)
        self.worker = Worker(self.ctx, settings, tasks, self.notifier, gpu=gpu, clock=clock)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def __enter__(self) -> "ThreadWorker":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.worker.request_stop()
        self.thread.join(timeout=15)


def service(ctx: Context) -> JobService:
    return JobService(ctx.store, ctx.jobs_queue, ctx.results, ctx.clock)


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
