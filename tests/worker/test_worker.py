"""The worker loop in-process, against a real moto server and a local webhook receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from functools import partial

import pytest
import requests

from chalicelib.context import Context
from chalicelib.jobs.models import JobStatus
from chalicelib.platform.settings import Settings
from tests.support.harness import Handlers, ThreadWorker, final as final_job, settled, submit, task_events, wait_until
from worker_runtime.worker import ATTEMPTS_ERROR, EXPIRED_ERROR

pytestmark = pytest.mark.integration


def seed_fields(payload: dict) -> dict:
    """A final webhook's seed fields: everything but the cost receipt it also carries."""
    assert "cost" in payload
    return {k: v for k, v in payload.items() if k != "cost"}


@pytest.fixture
def wenv(stack_env, tmp_path, monkeypatch):
    log = tmp_path / "tasks.log"
    monkeypatch.setenv("FAKE_TASK_LOG", str(log))
    return {**stack_env, "OUTPUT_DIR": str(tmp_path / "out")}


final = partial(final_job, timeout=15.0)


def test_media_job_end_to_end(wenv, receiver, tmp_path):
    with ThreadWorker(wenv) as tw:
        job_id = submit(tw.ctx, "csm", {"text": "quick", "notify_url": receiver.url})
        job = final(tw.ctx, job_id)
        assert job.status is JobStatus.SUCCESS and job.attempts == 1
        assert job.result_key == f"results/{job_id}/1.mp3"
        head = tw.ctx.s3.head_object(Bucket=tw.settings.results_bucket, Key=job.result_key)
        assert head["ContentType"] == "audio/mpeg"
        hooks = receiver.wait_for(1)
        payload = hooks[0].json()
        assert set(payload) == {"id", "status", "result_url", "cost"} and payload["status"] == "success"
        assert payload["cost"] == tw.ctx.store.get(job_id).cost_view()  # the job's receipt
        assert requests.get(payload["result_url"], timeout=5).content == f"FAKE-MP3 {job_id}".encode()
        assert not list((tmp_path / "out").glob(f"{job_id}*"))
        # The message was deleted after the final write.
        assert tw.ctx.sqs.get_queue_attributes(
            QueueUrl=tw.ctx.jobs_queue.url, AttributeNames=["All"]
        )["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_text_job_and_temp_files_removed(wenv, receiver, tmp_path):
    with ThreadWorker(wenv) as tw:
        job_id = submit(tw.ctx, "whisper", {"audio_url": "https://x.org/a.mp3", "notify_url": receiver.url})
        job = final(tw.ctx, job_id)
        assert job.result_text == "transcript of https://x.org/a.mp3"
        assert seed_fields(receiver.wait_for(1)[0].json()) == {"id": job_id, "status": "success",
                                                              "text": "transcript of https://x.org/a.mp3"}
        assert not list((tmp_path / "out").glob(f"{job_id}*"))


def test_task_failure_and_crash_fail_the_job_readably(wenv, receiver):
    with ThreadWorker(wenv) as tw:
        a = submit(tw.ctx, "csm", {"text": "fail:node said no", "notify_url": receiver.url})
        b = submit(tw.ctx, "csm", {"text": "crash"})
        assert final(tw.ctx, a).error == "node said no"
        assert final(tw.ctx, b).error == "Task failed: RuntimeError: boom"
        assert seed_fields(receiver.wait_for(1)[0].json()) == {"id": a, "status": "failed", "error": "node said no"}


def test_malformed_and_unknown_messages_are_deleted(wenv):
    with ThreadWorker(wenv) as tw:
        q = tw.ctx.jobs_queue
        q.send_json({"nope": 1})
        tw.ctx.sqs.send_message(QueueUrl=q.url, MessageBody="not json at all")
        q.send("5c0ffee0-0000-4000-8000-000000000000")
        ok = submit(tw.ctx, "csm", {"text": "quick"})  # the worker goes on afterwards
        final(tw.ctx, ok)

        def drained():
            attrs = tw.ctx.sqs.get_queue_attributes(QueueUrl=q.url, AttributeNames=["All"])["Attributes"]
            return attrs["ApproximateNumberOfMessages"] == "0" and attrs["ApproximateNumberOfMessagesNotVisible"] == "0"

        wait_until(drained)


def test_duplicate_delivery_runs_once(wenv, receiver, tmp_path):
    with ThreadWorker(wenv) as tw:
        job_id = submit(tw.ctx, "csm", {"text": "sleep:0.5", "notify_url": receiver.url})
        tw.ctx.jobs_queue.send(job_id)  # a second copy of the message
        final(tw.ctx, job_id)
        settled(tw.ctx, job_id)  # both copies consumed, the webhook delivered
        assert [e for _, e in task_events(tmp_path / "tasks.log", job_id)] == ["start", "done"]
        assert len(receiver.for_job(job_id)) == 1


def test_two_workers_one_job_one_run_one_webhook(wenv, receiver, tmp_path):
    with ThreadWorker(wenv) as a, ThreadWorker(wenv) as b:
        job_id = submit(a.ctx, "csm", {"text": "sleep:1", "notify_url": receiver.url})
        a.ctx.jobs_queue.send(job_id)
        a.ctx.jobs_queue.send(job_id)
        job = final(a.ctx, job_id)
        settled(a.ctx, job_id)
        assert job.attempts == 1
        assert [e for _, e in task_events(tmp_path / "tasks.log", job_id)] == ["start", "done"]
        assert len(receiver.for_job(job_id)) == 1


def test_expired_before_start_is_skipped(wenv, receiver, tmp_path):
    # The worker's clock runs two minutes ahead: complete_in=60 has passed.
    with ThreadWorker(wenv, clock=lambda: time.time() + 120) as tw:
        api_ctx = Context(tw.settings)  # the API's clock is the real one
        job_id = submit(api_ctx, "csm", {"text": "quick", "complete_in": 60, "notify_url": receiver.url})
        job = final(tw.ctx, job_id)
        assert (job.status, job.error, job.attempts) == (JobStatus.FAILED, EXPIRED_ERROR, 0)
        assert task_events(tmp_path / "tasks.log", job_id) == []
        hook = receiver.wait_for(1)[0].json()
        assert seed_fields(hook) == {"id": job_id, "status": "failed", "error": EXPIRED_ERROR}
        assert hook["cost"]["gpu_seconds"] == 0 and hook["cost"]["usd"] == 0  # it never ran


def test_max_time_exceeded_stops_the_task(wenv, receiver, tmp_path):
    # MAX_RENDER_TIME caps max_time; 1 s keeps the test short.
    with ThreadWorker(wenv, MAX_RENDER_TIME="1") as tw:
        job_id = submit(tw.ctx, "csm", {"text": "sleep:30", "notify_url": receiver.url})
        job = final(tw.ctx, job_id)
        assert job.error == "Job exceeded max_time of 1 seconds"
        assert job.finished_at - job.started_at < 1 + 0.2 + 1.0  # limit + one polling interval + slack
        assert [e for _, e in task_events(tmp_path / "tasks.log", job_id)] == ["start", "cancelled"]
        assert job.result_key is None


def test_deadline_passing_mid_run_fails_the_job(wenv, receiver):
    offset = {"s": 0.0}
    with ThreadWorker(wenv, clock=lambda: time.time() + offset["s"]) as tw:
        job_id = submit(tw.ctx, "csm", {"text": "sleep:30", "complete_in": 60, "notify_url": receiver.url})
        wait_until(lambda: tw.ctx.store.get(job_id).status is JobStatus.RUNNING)
        offset["s"] = 61
        job = final(tw.ctx, job_id)
        assert job.error == "Job did not complete before its complete_by deadline"


def test_task_ignoring_cancel_still_cannot_overrun(wenv):
    with ThreadWorker(wenv, MAX_RENDER_TIME="1") as tw:
        job_id = submit(tw.ctx, "csm", {"text": "hang:8"})
        job = final(tw.ctx, job_id, timeout=12)
        assert job.error == "Job exceeded max_time of 1 seconds"


def test_client_cancel_mid_run(wenv, receiver, tmp_path):
    with ThreadWorker(wenv) as tw:
        job_id = submit(tw.ctx, "csm", {"text": "sleep:30", "notify_url": receiver.url})
        wait_until(lambda: tw.ctx.store.get(job_id).status is JobStatus.RUNNING)
        from tests.support.harness import service
        service(tw.ctx).update(job_id, "anonymous", {"status": "cancelled", "error": "user gave up"})
        wait_until(lambda: ("cancelled" in [e for _, e in task_events(tmp_path / "tasks.log", job_id)]), 5)
        job = settled(tw.ctx, job_id)  # the worker stopped and acked; the webhook went out
        assert (job.status, job.error, job.result_key) == (JobStatus.CANCELLED, "user gave up", None)
        keys = tw.ctx.s3.list_objects_v2(Bucket=tw.settings.results_bucket).get("Contents", [])
        assert keys == []
        # Every final state gets its one webhook, whoever set it.
        assert [seed_fields(h.json()) for h in receiver.for_job(job_id)] == [
            {"id": job_id, "status": "cancelled", "error": "user gave up"}]


@pytest.mark.parametrize("mode", ["500", "timeout", "refused"])
def test_webhook_receiver_down_never_changes_status_or_blocks(wenv, receiver, mode):
    if mode == "500":
        receiver.status = 500
        url = receiver.url
    elif mode == "timeout":
        receiver.delay = 3  # over WEBHOOK_TIMEOUT
        url = receiver.url
    else:
        url = "http://127.0.0.1:9/refused"
    with ThreadWorker(wenv, WEBHOOK_TIMEOUT="0.5", WEBHOOK_INTERVAL="0.3") as tw:
        first = submit(tw.ctx, "csm", {"text": "quick", "notify_url": url})
        second = submit(tw.ctx, "csm", {"text": "quick"})
        job2 = final(tw.ctx, second)
        job1 = tw.ctx.store.get(first)
        assert job1.status is JobStatus.SUCCESS and job2.status is JobStatus.SUCCESS
        # The second job did not wait for the first job's webhook retries.
        assert job2.finished_at < job1.finished_at + 3 * 0.5 + 2 * 0.3
        gave_up = settled(tw.ctx, first)
        assert (gave_up.webhook, gave_up.webhook_attempts) == ("failed", 3)
        assert gave_up.status_view()["webhook"]["status"] == "failed" and gave_up.webhook_error
        if mode != "refused":
            assert len(receiver.for_job(first)) == 3


def test_webhook_is_signed_with_a_stable_id(wenv, receiver):
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef").decode()
    receiver.status = 500
    with ThreadWorker(wenv, WEBHOOK_SECRET=secret) as tw:
        job_id = submit(tw.ctx, "whisper", {"audio_url": "https://x.org/a.mp3", "notify_url": receiver.url})
        hooks = wait_until(lambda: len(receiver.for_job(job_id)) == 3 and receiver.for_job(job_id))
    ids = {h.headers["webhook-id"] for h in hooks}
    assert len(ids) == 1
    for h in hooks:
        signed = f"{h.headers['webhook-id']}.{h.headers['webhook-timestamp']}.{h.body.decode()}"
        expected = base64.b64encode(hmac.new(b"0123456789abcdef", signed.encode(), hashlib.sha256).digest())
        assert h.headers["webhook-signature"] == "v1," + expected.decode()


def test_s3_upload_failure_fails_job_clearly(wenv, receiver):
    with ThreadWorker(wenv) as tw:
        s3 = tw.ctx.s3
        s3.delete_bucket(Bucket=tw.settings.results_bucket)
        job_id = submit(tw.ctx, "csm", {"text": "quick", "notify_url": receiver.url})
        job = final(tw.ctx, job_id)
        assert job.status is JobStatus.FAILED
        assert job.error.startswith("Could not upload the result to S3")
        assert receiver.wait_for(1)[0].json()["status"] == "failed"


def test_dead_letter_handler_fails_the_job_with_webhook(wenv, receiver):
    from chalice.test import Client

    from chalicelib.api.routes import create_app
    from chalicelib.platform.settings import Settings

    ctx = Context(Settings(**wenv))
    job_id = submit(ctx, "csm", {"text": "quick", "notify_url": receiver.url})
    with Client(create_app(ctx)) as client, Handlers(ctx.settings):
        event = client.events.generate_sqs_event(message_bodies=[json.dumps({"id": job_id}), "junk"],
                                                 queue_name=ctx.settings.jobs_dlq)
        answer = client.lambda_.invoke("dead_letters", event).payload
        assert answer == {"batchItemFailures": []}
        job = ctx.store.get(job_id)
        assert job.status is JobStatus.FAILED and "dead-letter queue" in job.error
        assert receiver.wait_for(1)[0].json()["status"] == "failed"


def test_health_file_stays_fresh_during_a_long_job(wenv, tmp_path):
    health = tmp_path / "health"
    with ThreadWorker(wenv, WORKER_HEALTH_FILE=str(health)) as tw:
        job_id = submit(tw.ctx, "csm", {"text": "sleep:2"})
        wait_until(lambda: tw.ctx.store.get(job_id).status is JobStatus.RUNNING)
        first = float(health.read_text())
        # Heartbeats (every 0.2 s here) touch it while the job runs, not only the loop.
        wait_until(lambda: float(health.read_text()) > first + 0.5 and
                   tw.ctx.store.get(job_id).status is JobStatus.RUNNING, 5)
        final(tw.ctx, job_id)


def test_a_job_that_killed_its_workers_max_attempts_times_is_failed_not_run_again(wenv, receiver, tmp_path):
    ctx = Context(Settings(**wenv))
    job_id = submit(ctx, "csm", {"text": "quick", "notify_url": receiver.url})
    for dead in ("w-dead-1", "w-dead-2"):  # two claims whose workers died (their leases lapsed)
        ctx.store.claim(job_id, dead, -1)
    with ThreadWorker(wenv, MAX_ATTEMPTS="2") as tw:
        job = settled(tw.ctx, job_id)
    assert (job.status, job.attempts) == (JobStatus.FAILED, 3)
    assert job.error == ATTEMPTS_ERROR.format(attempts=2, limit=2)
    assert task_events(tmp_path / "tasks.log", job_id) == []
    assert [h.json()["status"] for h in receiver.for_job(job_id)] == ["failed"]
