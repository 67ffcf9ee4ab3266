"""Nothing lives only in a process's memory: each test breaks one promise the way
production does (a process killed between two writes, a duplicate message, an AWS
throttle or reset on the wire, a webhook deliverer killed mid-retries) and checks
that durable state (the job record's outbox, SQS) finishes the work.

AWS faults come from the fault proxy in front of moto (infra/local/fault_proxy.py);
processes are real and killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

import pytest
import requests

from chalicelib.context import Context
from chalicelib.delivery.dead_letters import fail_dead_letter
from chalicelib.jobs.models import JobStatus
from chalicelib.platform.queue import Queue
from chalicelib.platform.settings import Settings
from infra.local.fault_proxy import Rule
from infra.local.lambda_poller import lambda_record
from infra.local.stack import create_stack
from tests.support import emf, procs
from tests.support.harness import (
    Handlers,
    ThreadWorker,
    log_events,
    settled,
    start_worker_process,
    submit,
    task_events,
    wait_until,
)
from tests.support.sqs_events import depth

GRACE = "1"  # OUTBOX_GRACE: how long before the reconciler re-sends what a job is owed


@pytest.fixture
def wenv(stack_env, tmp_path):
    return {**stack_env, "OUTPUT_DIR": str(tmp_path / "out"), "FAKE_TASK_LOG": str(tmp_path / "tasks.log"),
            "LEASE_SECONDS": "3", "RENDER_POLLING_INTERVAL": "0.3", "OUTBOX_GRACE": GRACE}


@pytest.fixture
def children():
    started: list = []
    yield started
    for proc in started:
        procs.stop(proc)


def via(proxy) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": proxy.url}


# -- 1. a submission stranded between the record and the send ---------------------------
def test_api_killed_between_record_and_send_is_started_by_the_reconciler(wenv, fault_proxy, tmp_path,
                                                                          children):
    ctx = Context(Settings(**wenv))
    hold = fault_proxy.add(Rule(service="sqs", operation="SendMessage", action="stall",
                                contains=wenv["JOBS_QUEUE"], times=None))
    port = procs.free_port()
    api = procs.start_api(port, {**wenv, **via(fault_proxy)}, tmp_path / "api.log")
    children.append(api)
    answers: list = []
    caller = threading.Thread(target=lambda: answers.append(_post_quietly(port)), daemon=True)
    caller.start()
    assert hold.stalled.wait(30), "the API never reached its SQS send"
    os.kill(api.pid, signal.SIGKILL)  # dies after the put, before the send
    api.wait()
    [stranded] = wait_until(lambda: _jobs(ctx), 10)
    assert stranded.status is JobStatus.QUEUED and depth(ctx.sqs, wenv["JOBS_QUEUE"]) == 0
    fault_proxy.clear()
    with Handlers(ctx.settings), ThreadWorker(wenv, handlers=False):
        job = wait_until(lambda: (j := ctx.store.get(stranded.id)).status.is_terminal and j, 30)
    assert job.status is JobStatus.SUCCESS  # no message existed: only the reconciler could start it


def _post_quietly(port: int) -> int | None:
    try:
        return requests.post(f"http://127.0.0.1:{port}/csm", json={"text": "quick"}, timeout=60).status_code
    except requests.RequestException:
        return None


def _jobs(ctx: Context) -> list:
    items = ctx.dynamodb.scan(TableName=ctx.settings.jobs_table, ConsistentRead=True)["Items"]
    return [ctx.store.get(item["id"]["S"]) for item in items if not item["id"]["S"].startswith("usage#")]


def test_same_key_retry_of_a_stranded_job_sends_it_again(wenv):
    ctx = Context(Settings(**wenv))
    from tests.support.harness import service

    svc = service(ctx)
    job, created = svc.submit(*_csm(), "anonymous", "order-9")
    ctx.sqs.purge_queue(QueueUrl=ctx.jobs_queue.url)  # as if the first send never happened
    assert depth(ctx.sqs, wenv["JOBS_QUEUE"]) == 0
    again, created_again = svc.submit(*_csm(), "anonymous", "order-9")
    assert (again.id, created, created_again) == (job.id, True, False)
    got = wait_until(lambda: ctx.jobs_queue.receive(wait_seconds=1, visibility=30))
    assert got[0].job_id() == job.id


def _csm():
    from chalicelib.jobs.models import JobType

    return JobType.CSM, {"text": "quick"}


# -- 2. the DLQ handler and copies of a live job --------------------------------------------
def test_dead_lettered_copy_of_a_running_job_is_dropped_while_its_lease_is_live(wenv, receiver):
    ctx = Context(Settings(**wenv))
    job_id = submit(ctx, "csm", {"text": "quick", "notify_url": receiver.url})
    ctx.store.claim(job_id, "holder", 60)
    body = json.dumps({"id": job_id})
    assert fail_dead_letter(body, 5, ctx.store, ctx.outbox) == "running"
    job = ctx.store.get(job_id)
    assert (job.status, job.worker, job.outbox) == (JobStatus.RUNNING, "holder", "dispatch")
    assert depth(ctx.sqs, wenv["WEBHOOKS_QUEUE"]) == 0  # no final webhook queued
    # Once the holder's lease has lapsed nobody works on it: now the copy fails it.
    later = Context(ctx.settings, clock=lambda: ctx.clock() + 120)
    assert fail_dead_letter(body, 5, later.store, later.outbox) == "failed"
    assert ctx.store.get(job_id).status is JobStatus.FAILED


def test_copies_of_a_running_job_never_reach_the_dlq(stack_env, tmp_path, receiver):
    """Today's copies are dropped by the worker that receives them (the holder keeps its
    own message), so a long job with duplicates is not dead-lettered and failed."""
    env = {**stack_env, "JOBS_QUEUE": stack_env["JOBS_QUEUE"] + "-r2", "JOBS_DLQ": stack_env["JOBS_DLQ"] + "-r2",
           "OUTPUT_DIR": str(tmp_path / "out"), "FAKE_TASK_LOG": str(tmp_path / "tasks.log")}
    create_stack(Settings(**env), max_receive_count=2)
    with ThreadWorker(env) as a, ThreadWorker(env):
        job_id = submit(a.ctx, "csm", {"text": "sleep:2", "notify_url": receiver.url})
        wait_until(lambda: a.ctx.store.get(job_id).status is JobStatus.RUNNING)
        for _ in range(4):
            a.ctx.jobs_queue.send(job_id)
        job = settled(a.ctx, job_id, timeout=30)
    assert (job.status, job.attempts) == (JobStatus.SUCCESS, 1)
    assert depth(a.ctx.sqs, env["JOBS_DLQ"]) == 0
    assert [r.json()["status"] for r in receiver.for_job(job_id)] == ["success"]


# -- 3. transient AWS errors in every step of the worker ----------------------------------
def test_worker_process_survives_throttles_5xx_and_resets_and_finishes_the_job(wenv, fault_proxy, tmp_path,
                                                                               children, receiver):
    ctx = Context(Settings(**wenv))
    rules = [
        # More than botocore's own three attempts per call: these escape a single call.
        Rule(service="dynamodb", operation="GetItem", action="throttle", times=4),
        Rule(service="dynamodb", operation="UpdateItem", action="error", times=4),
        Rule(service="sqs", operation="DeleteMessage", action="reset", times=4),
        Rule(service="sqs", operation="SendMessage", action="error", times=4, contains=wenv["WEBHOOKS_QUEUE"]),
    ]
    for rule in rules:
        fault_proxy.add(rule)
    worker = start_worker_process({**wenv, **via(fault_proxy)}, tmp_path / "w.log")
    children.append(worker)
    with Handlers(ctx.settings):
        job_id = submit(ctx, "csm", {"text": "quick", "notify_url": receiver.url})
        job = settled(ctx, job_id, timeout=60)
    assert (job.status, job.attempts, job.webhook) == (JobStatus.SUCCESS, 1, "delivered")
    assert [rule.hits for rule in rules] == [4, 4, 4, 4]
    assert worker.poll() is None, "the worker exited on a transient error"
    assert log_events(tmp_path / "w.log", "aws.retry")


def test_an_outage_longer_than_the_retries_leaves_the_message_for_later(wenv, fault_proxy, tmp_path,
                                                                      children):
    ctx = Context(Settings(**wenv))
    outage = fault_proxy.add(Rule(service="dynamodb", operation="GetItem", action="throttle", times=None))
    worker = start_worker_process({**wenv, **via(fault_proxy)}, tmp_path / "w.log")
    children.append(worker)
    job_id = submit(ctx, "csm", {"text": "quick"})
    wait_until(lambda: log_events(tmp_path / "w.log", "message.process_failed"), 60)
    assert worker.poll() is None and ctx.store.get(job_id).status is JobStatus.QUEUED
    outage.times = outage.hits  # DynamoDB is back
    job = wait_until(lambda: (j := ctx.store.get(job_id)).status.is_terminal and j, 30)
    assert job.status is JobStatus.SUCCESS and job.attempts == 1


# -- 4. a lease hiccup before the upload ------------------------------------------------------
def test_renewal_hiccup_before_the_upload_does_not_fail_a_finished_render(wenv, fault_proxy, tmp_path,
                                                                         children):
    ctx = Context(Settings(**wenv))
    # Only the lease renewal's write (the claim sets more than these two).
    renew = fault_proxy.add(Rule(service="dynamodb", operation="UpdateItem", action="error", times=5,
                                 contains="#lease_expires = :set_lease_expires, #outbox_at"))
    worker = start_worker_process({**wenv, **via(fault_proxy)}, tmp_path / "w.log")
    children.append(worker)
    job_id = submit(ctx, "csm", {"text": "quick"})
    job = wait_until(lambda: (j := ctx.store.get(job_id)).status.is_terminal and j, 40)
    assert renew.hits == 5
    assert (job.status, job.error) == (JobStatus.SUCCESS, None)
    assert job.result_key == f"results/{job_id}/1.mp3"
    assert ctx.s3.get_object(Bucket=wenv["RESULTS_BUCKET"], Key=job.result_key)["Body"].read()


# -- 5. webhooks survive the processes that send them ---------------------------------------
def test_worker_killed_after_the_final_write_still_gets_its_webhook_delivered(wenv, fault_proxy, tmp_path,
                                                                              children, receiver, capsys):
    ctx = Context(Settings(**wenv))
    hold = fault_proxy.add(Rule(service="sqs", operation="SendMessage", action="stall", times=None,
                                contains=wenv["WEBHOOKS_QUEUE"]))
    worker = start_worker_process({**wenv, **via(fault_proxy)}, tmp_path / "w.log")
    children.append(worker)
    job_id = submit(ctx, "csm", {"text": "quick", "notify_url": receiver.url})
    assert hold.stalled.wait(30), "the worker never queued the delivery"
    assert ctx.store.get(job_id).status is JobStatus.SUCCESS  # the final write landed
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    fault_proxy.clear()
    assert receiver.requests == []
    # The reconciler finds the undelivered final job; the unacked job message, back after
    # its lease, reaches another worker, which re-ensures the delivery: still one webhook.
    with Handlers(ctx.settings), ThreadWorker(wenv, handlers=False):
        job = settled(ctx, job_id, timeout=30)
    assert job.webhook == "delivered"
    assert [r.json()["status"] for r in receiver.for_job(job_id)] == ["success"]
    # The job is counted in JobsFinished once, by the delivery (here: handlers in this process),
    # although the worker that wrote the final state died before it could say anything more.
    counted = emf.named(emf.parse(capsys.readouterr().out.splitlines()), "JobsFinished", job_id=job_id)
    assert [p.get("outcome") for p in counted] == ["success"]
    assert emf.named(emf.read(tmp_path / "w.log"), "JobsFinished") == []


def test_the_worker_delivers_the_final_webhook_itself_and_the_queue_copy_finds_it_settled(
        wenv, tmp_path, children, receiver):
    """No deliverer runs while the worker finishes the job: the webhook and the job event
    come from the worker process. Its fallback message (delayed past the attempt's lease)
    then reaches a deliverer, which finds nothing owed: one webhook."""
    ctx = Context(Settings(**wenv))
    worker = start_worker_process(wenv, tmp_path / "w.log", WEBHOOK_DIRECT="true")
    children.append(worker)
    job_id = submit(ctx, "csm", {"text": "quick", "notify_url": receiver.url})
    wait_until(lambda: receiver.accepted_for(job_id), 30)
    job = wait_until(lambda: (j := ctx.store.get(job_id)).outbox is None and j, 10)
    assert (job.status, job.webhook, job.webhook_attempts) == (JobStatus.SUCCESS, "delivered", 1)
    assert job.event_sent_at is not None
    assert [e["job_id"] for e in log_events(tmp_path / "w.log", "delivery.direct")] == [job_id]
    fallback = Queue(ctx.sqs, wenv["WEBHOOKS_QUEUE"])
    assert fallback.depth()["delayed"] == 1  # the queue's copy, should the worker have died
    with Handlers(ctx.settings):
        wait_until(lambda: depth(ctx.sqs, wenv["WEBHOOKS_QUEUE"]) == 0
                   and fallback.depth()["delayed"] == 0, 60)
    assert [r.answered for r in receiver.for_job(job_id)] == [200]


def test_a_refused_direct_webhook_is_retried_through_the_queue(wenv, tmp_path, children, receiver):
    """The worker's own attempt is attempt 1 of the same schedule: refused, the deliverer
    makes attempt 2 from the queue, same webhook-id, one accepted delivery."""
    ctx = Context(Settings(**wenv))
    receiver.script = [503]
    worker = start_worker_process(wenv, tmp_path / "w.log", WEBHOOK_DIRECT="true")
    children.append(worker)
    with Handlers(ctx.settings):
        job_id = submit(ctx, "csm", {"text": "quick", "notify_url": receiver.url})
        job = settled(ctx, job_id, timeout=40)
    hooks = receiver.for_job(job_id)
    assert (job.webhook, job.webhook_attempts) == ("delivered", 2)
    assert [h.answered for h in hooks] == [503, 200]
    assert len({h.headers["webhook-id"] for h in hooks}) == 1
    assert [e["outcome"] for e in log_events(tmp_path / "w.log", "delivery.direct")] == ["retrying"]


def test_deliverer_killed_between_attempts_resumes_them_in_a_new_process(wenv, tmp_path, children, receiver):
    """The retry schedule lives in the record and the queue: a new handlers process picks
    up where the killed one stopped, with the same webhook-id and one accepted delivery."""
    ctx = Context(Settings(**wenv))
    # A message the killed deliverer held comes back after this (and must then do nothing).
    ctx.sqs.set_queue_attributes(QueueUrl=ctx.webhooks_queue.url, Attributes={"VisibilityTimeout": "5"})
    receiver.script = [503, 503]
    env = {**wenv, "WEBHOOK_ATTEMPTS": "5", "WEBHOOK_INTERVAL": "2", "LAMBDA_POLL_WAIT_SECONDS": "1",
           "LOCAL_SCHEDULE_INTERVAL": "1"}
    first = procs.start([sys.executable, "-m", "infra.local.lambda_poller"], env=env,
                        log_path=tmp_path / "h1.log")
    children.append(first)
    job_id = submit(ctx, "whisper", {"audio_url": "https://x.org/a.mp3", "notify_url": receiver.url})
    with ThreadWorker(wenv, handlers=False):
        wait_until(lambda: receiver.for_job(job_id), 30)  # attempt 1 refused
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        assert ctx.store.get(job_id).webhook == "pending"
        second = procs.start([sys.executable, "-m", "infra.local.lambda_poller"], env=env,
                             log_path=tmp_path / "h2.log")
        children.append(second)
        job = settled(ctx, job_id, timeout=40)
    hooks = receiver.for_job(job_id)
    assert (job.webhook, job.webhook_attempts) == ("delivered", 3)
    assert [h.answered for h in hooks] == [503, 503, 200]
    assert len({h.headers["webhook-id"] for h in hooks}) == 1
    assert job.status_view()["webhook"] == {"status": "delivered", "attempts": 3}


# -- 7. intake keeps a message whose submission hit a transient error ------------------------
def test_intake_leaves_the_message_for_redelivery_on_a_transient_error(wenv):
    from chalicelib.api.routes import create_app

    ctx = Context(Settings(**wenv))
    app = create_app(ctx)
    sqs = ctx.sqs
    failing = {"left": 1}

    def refuse_events(params, **_):
        if failing["left"] and params.get("QueueUrl", "").endswith(wenv["EVENTS_QUEUE"]):
            failing["left"] -= 1
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url=params["QueueUrl"])

    sqs.meta.events.register("before-parameter-build.sqs.SendMessage", refuse_events)
    try:
        record = lambda_record({"MessageId": "m-1", "ReceiptHandle": "r-1",
                                "Body": json.dumps({"type": "csm", "params": {"text": "a"}}),
                                "Attributes": {"ApproximateReceiveCount": "1"}}, "arn:aws:sqs:::intake", "us-east-1")
        first = app.handler_map["intake"]({"Records": [record]}, None)
        assert first == {"batchItemFailures": [{"itemIdentifier": "m-1"}]}
        [job] = _jobs(ctx)
        assert job.status is JobStatus.QUEUED  # not failed: the redelivery carries on
        assert app.handler_map["intake"]({"Records": [record]}, None) == {"batchItemFailures": []}
        assert [j.id for j in _jobs(ctx)] == [job.id]
    finally:
        sqs.meta.events.unregister("before-parameter-build.sqs.SendMessage", refuse_events)
