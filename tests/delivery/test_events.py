"""Completion events on SQS: payloads, routing to reply_to, and the final-state
writers (client update route, DLQ handler, worker) wired to them through the
outbox and the deliveries handler."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
import requests
from chalice.test import Client

from chalicelib.api.routes import create_app
from chalicelib.delivery.events import EventPublisher
from chalicelib.jobs.models import JobStatus, JobType
from chalicelib.jobs.service import JobService
from tests.support.harness import FAST
from tests.support.sqs_events import take
from worker_runtime.settings import get_worker_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def publisher(ctx):
    return EventPublisher(ctx.sqs, ctx.settings.events_queue, ctx.results, ctx.clock)


@pytest.fixture
def service(ctx, publisher):
    return JobService(ctx.store, ctx.outbox, ctx.results, ctx.clock)


def finished(ctx, service, job_type, params, status, reply_to=None, **fields):
    job, _ = service.submit(JobType(job_type), params, "anonymous", reply_to=reply_to)
    ctx.store.claim(job.id, "w1", 30)
    return ctx.store.transition(job.id, status, worker="w1", fields=fields)


def test_success_event_is_the_webhook_payload_plus_type_and_timestamps(ctx, service, publisher, tmp_path):
    ctx.s3.put_object(Bucket=ctx.settings.results_bucket, Key="results/x.mp3", Body=b"AUDIO")
    media = finished(ctx, service, "csm", {"text": "a"}, JobStatus.SUCCESS,
                     result_key="results/x.mp3", result_content_type="audio/mpeg")
    text = finished(ctx, service, "whisper", {"audio_url": "https://x.org/a.mp3"}, JobStatus.SUCCESS,
                    result_text="hello")
    assert publisher.publish(media) and publisher.publish(text)
    got = {e["id"]: e for e in take(ctx.sqs, ctx.settings.events_queue, 2)}
    m, t = got[media.id], got[text.id]
    assert m["type"] == "job.success" and m["status"] == "success" and m["event_id"] == f"{media.id}:success"
    assert requests.get(m["result_url"], timeout=5).content == b"AUDIO"
    assert "text" not in m and "error" not in m
    assert (t["type"], t["text"], t["job_type"]) == ("job.success", "hello", "whisper")
    for event in (m, t):
        assert event["source"] == "http" and event["attempts"] == 1
        times = [datetime.fromisoformat(event[k]) for k in ("created_at", "started_at", "finished_at", "time")]
        assert times == sorted(times) and times[0].tzinfo is not None


def test_reply_to_routing_and_fallback(ctx, service, publisher):
    reply_url = ctx.sqs.create_queue(QueueName=f"{ctx.settings.events_queue}-reply")["QueueUrl"]
    to_reply = finished(ctx, service, "csm", {"text": "a"}, JobStatus.FAILED, reply_to=reply_url, error="boom")
    gone = finished(ctx, service, "csm", {"text": "b"}, JobStatus.FAILED, reply_to="no-such-queue-xyz",
                    error="bang")
    assert publisher.publish(to_reply) and publisher.publish(gone)
    [replied] = take(ctx.sqs, reply_url)
    assert (replied["id"], replied["type"], replied["error"]) == (to_reply.id, "job.failed", "boom")
    # A reply_to queue that refuses the event does not lose it: the events queue gets it.
    [fallback] = take(ctx.sqs, ctx.settings.events_queue)
    assert (fallback["id"], fallback["error"]) == (gone.id, "bang")


def test_publish_never_raises(ctx, service, publisher):
    job = finished(ctx, service, "csm", {"text": "a"}, JobStatus.FAILED, error="x")
    ctx.sqs.delete_queue(QueueUrl=ctx.sqs.get_queue_url(QueueName=ctx.settings.events_queue)["QueueUrl"])
    assert publisher.publish(job) is False


def test_client_cancel_and_dead_letter_publish_terminal_events(ctx):
    with Client(create_app(ctx)) as client:
        headers = {"Content-Type": "application/json"}
        cancelled = json.loads(client.http.post("/csm", headers=headers, body=json.dumps({"text": "a"})).body)["id"]
        dead = json.loads(client.http.post("/csm", headers=headers, body=json.dumps({"text": "b"})).body)["id"]
        resp = client.http.post(f"/job/{cancelled}", headers=headers, body=json.dumps({"status": "cancelled"}))
        assert resp.status_code == 200
        client.lambda_.invoke("dead_letters", client.events.generate_sqs_event([json.dumps({"id": dead})]))
        owed = take(ctx.sqs, ctx.settings.webhooks_queue, 2)
        assert sorted(m["id"] for m in owed) == sorted([cancelled, dead])
        client.lambda_.invoke("webhooks", client.events.generate_sqs_event([json.dumps(m) for m in owed]))
    got = {e["id"]: e for e in take(ctx.sqs, ctx.settings.events_queue, 2)}
    assert got[cancelled]["type"] == "job.cancelled" and got[cancelled]["error"] == "Job marked as cancelled by client"
    assert got[dead]["type"] == "job.failed" and "dead-letter queue" in got[dead]["error"]


def test_worker_entry_point_wires_the_outbox(stack_env, monkeypatch, tmp_path):
    from worker_runtime.__main__ import build_worker

    for name, value in {**FAST, **stack_env, "OUTPUT_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    get_worker_settings.cache_clear()
    try:
        worker = build_worker()
    finally:
        get_worker_settings.cache_clear()
    queues = worker.outbox.queues
    assert (queues["dispatch"].name, queues["notify"].name) == (stack_env["JOBS_QUEUE"], stack_env["WEBHOOKS_QUEUE"])
