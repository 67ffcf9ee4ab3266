"""Real worker processes: SIGKILL, a stalled heartbeat (SIGSTOP), SIGTERM, DLQ redrive."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from chalicelib.context import Context
from chalicelib.delivery.dead_letters import fail_dead_letter
from chalicelib.jobs.models import JobStatus
from chalicelib.platform.settings import Settings
from tests.support import procs
from tests.support.harness import Handlers, settled, start_worker_process, submit, task_events, wait_until

pytestmark = pytest.mark.integration

LEASE = "3"


@pytest.fixture
def wenv(stack_env, tmp_path):
    return {**stack_env, "OUTPUT_DIR": str(tmp_path / "out"), "FAKE_TASK_LOG": str(tmp_path / "tasks.log"),
            "LEASE_SECONDS": LEASE, "RENDER_POLLING_INTERVAL": "0.5"}


@pytest.fixture
def workers():
    started = []
    yield started
    for p in started:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
        procs.stop(p)


def spawn(workers, wenv, tmp_path, name, **extra):
    p = start_worker_process(wenv, tmp_path / f"{name}.log", **extra)
    workers.append(p)
    return p


@pytest.fixture
def handlers(wenv):
    """The app's deliveries/DLQ/reconciler handlers, polled as `make run` does."""
    with Handlers(Settings(**wenv)) as h:
        yield h


def test_sigkill_mid_job_finishes_on_another_worker_with_one_webhook(wenv, tmp_path, receiver, workers, handlers):
    ctx = Context(Settings(**wenv))
    job_id = submit(ctx, "csm", {"text": "sleep:2", "notify_url": receiver.url})
    a = spawn(workers, wenv, tmp_path, "a")
    wait_until(lambda: task_events(tmp_path / "tasks.log", job_id), 20)
    os.kill(a.pid, signal.SIGKILL)
    a.wait()
    b = spawn(workers, wenv, tmp_path, "b")
    job = wait_until(lambda: (j := ctx.store.get(job_id)).status.is_terminal and j, 30)
    assert job.status is JobStatus.SUCCESS and job.attempts == 2
    events = task_events(tmp_path / "tasks.log", job_id)
    assert events == [(a.pid, "start"), (b.pid, "start"), (b.pid, "done")]
    assert settled(ctx, job_id).webhook == "delivered"
    assert len(receiver.for_job(job_id)) == 1


def test_stalled_heartbeat_lets_another_worker_take_over_without_double_result(wenv, tmp_path, receiver, workers,
                                                                              handlers):
    ctx = Context(Settings(**wenv))
    job_id = submit(ctx, "csm", {"text": "sleep:2", "notify_url": receiver.url})
    a = spawn(workers, wenv, tmp_path, "a")
    wait_until(lambda: task_events(tmp_path / "tasks.log", job_id), 20)
    os.kill(a.pid, signal.SIGSTOP)  # alive but silent: its lease lapses
    b = spawn(workers, wenv, tmp_path, "b")
    job = wait_until(lambda: (j := ctx.store.get(job_id)).status.is_terminal and j, 30)
    assert job.status is JobStatus.SUCCESS and job.attempts == 2
    head = ctx.s3.head_object(Bucket=ctx.settings.results_bucket, Key=job.result_key)
    os.kill(a.pid, signal.SIGCONT)  # the old holder wakes up and must not write
    wait_until(lambda: any(e in (tmp_path / "a.log").read_text()
                           for e in ("job.lease_lost", "job.stopped_by_client", "job.final_write_lost")), 15)
    after = ctx.store.get(job_id)
    assert (after.status, after.worker, after.finished_at) == (JobStatus.SUCCESS, job.worker, job.finished_at)
    head2 = ctx.s3.head_object(Bucket=ctx.settings.results_bucket, Key=job.result_key)
    assert head2["ETag"] == head["ETag"] and head2["LastModified"] == head["LastModified"]
    time.sleep(0.5)
    assert len(receiver.for_job(job_id)) == 1
    assert b.poll() is None


def test_sigterm_releases_the_running_job_and_exits_zero(wenv, tmp_path, workers):
    ctx = Context(Settings(**wenv))
    job_id = submit(ctx, "csm", {"text": "sleep:30"})
    a = spawn(workers, wenv, tmp_path, "a", SHUTDOWN_GRACE="0.5")
    wait_until(lambda: task_events(tmp_path / "tasks.log", job_id), 20)
    a.send_signal(signal.SIGTERM)
    assert a.wait(timeout=15) == 0
    job = ctx.store.get(job_id)
    assert (job.status, job.attempts, job.worker) == (JobStatus.QUEUED, 1, None)
    # Its message went back to the queue: the outbox owes it no copy while it waits there.
    assert job.outbox_at == job.created_at + ctx.settings.outbox_queued_resend
    # The message is visible again at once: the next worker claims the job (attempt 2).
    spawn(workers, wenv, tmp_path, "b")
    wait_until(lambda: (j := ctx.store.get(job_id)).status is JobStatus.RUNNING and j.attempts == 2, 20)


def test_sigterm_while_idle_exits_promptly(wenv, tmp_path, workers):
    a = spawn(workers, wenv, tmp_path, "a", RECEIVE_WAIT_SECONDS="20")
    wait_until(lambda: "worker.started" in (tmp_path / "a.log").read_text(), 20)
    time.sleep(0.5)  # inside the 20 s long poll
    started = time.monotonic()
    a.send_signal(signal.SIGTERM)
    assert a.wait(timeout=10) == 0
    assert time.monotonic() - started < 10


def test_poison_message_is_redriven_to_dlq_and_the_job_failed(stack_env, receiver):
    """A message nobody manages to finish goes to the DLQ by redrive; the DLQ handler
    then fails its job with a webhook, so it does not stay queued forever."""
    from infra.local.stack import create_stack

    env = {**stack_env, "JOBS_QUEUE": stack_env["JOBS_QUEUE"] + "-r2", "JOBS_DLQ": stack_env["JOBS_DLQ"] + "-r2"}
    settings = Settings(**env)
    create_stack(settings, max_receive_count=2)
    ctx = Context(settings)
    job_id = submit(ctx, "csm", {"text": "quick", "notify_url": receiver.url})
    for _ in range(2):  # two workers received it and died without deleting it
        msgs = wait_until(lambda: ctx.jobs_queue.receive(wait_seconds=1, visibility=0), 10)
        assert msgs[0].job_id() == job_id
    assert ctx.jobs_queue.receive(wait_seconds=1, visibility=0) == []
    dead = wait_until(lambda: ctx.dlq.receive(wait_seconds=1, visibility=30), 10)
    assert dead[0].job_id() == job_id
    with Handlers(settings):
        assert fail_dead_letter(dead[0].body, dead[0].receive_count, ctx.store, ctx.outbox) == "failed"
        job = ctx.store.get(job_id)
        assert job.status is JobStatus.FAILED and "dead-letter" in job.error
        assert settled(ctx, job_id).webhook == "delivered"
    assert [json.loads(r.body)["status"] for r in receiver.requests] == ["failed"]
