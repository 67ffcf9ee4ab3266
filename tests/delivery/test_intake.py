"""Queue-driven intake over real SQS/DynamoDB (the emulator): messages go into the
intake queue, the local Lambda poller hands them to the app's own handler."""

from __future__ import annotations

import json
import signal
import sys
import threading
import uuid

import pytest
import requests

from chalicelib.api.routes import create_app
from chalicelib.context import Context
from chalicelib.delivery.events import EventPublisher
from chalicelib.delivery.intake import INTAKE_OWNER
from chalicelib.jobs.models import JobStatus
from chalicelib.platform.settings import Settings
from infra.local.lambda_poller import PollerSettings, QueuePoller, sqs_sources, start_pollers
from infra.local.stack import ensure_queue
from tests.support import procs
from tests.support.harness import ThreadWorker, wait_until
from tests.support.sqs_events import depth, drain, take

pytestmark = pytest.mark.integration

FAST_POLL = PollerSettings(LAMBDA_POLL_WAIT_SECONDS=1, LAMBDA_POLL_ERROR_BACKOFF=0.1)


@pytest.fixture
def app(ctx):
    return create_app(ctx)


@pytest.fixture
def poller(app, ctx):
    source = next(s for s in sqs_sources(app) if s.name == "intake")
    return QueuePoller(app, source, ctx.sqs, ctx.settings.aws_region, FAST_POLL)


def send(ctx: Context, body) -> str:
    raw = body if isinstance(body, str) else json.dumps(body)
    return ctx.sqs.send_message(QueueUrl=ctx.sqs.get_queue_url(QueueName=ctx.settings.intake_queue)["QueueUrl"],
                                MessageBody=raw)["MessageId"]


def jobs_in_table(ctx: Context) -> list[dict]:
    return ctx.dynamodb.scan(TableName=ctx.settings.jobs_table, ConsistentRead=True)["Items"]


def process(poller: QueuePoller, expected: int = 1) -> None:
    seen = 0
    for _ in range(10):
        seen += poller.poll_once(wait_seconds=1)
        if seen >= expected:
            return
    raise AssertionError(f"the poller received {seen} of {expected} messages")


def test_valid_message_creates_the_job_a_post_would(ctx, poller):
    message_id = send(ctx, {"type": "csm", "params": {"text": "Hello", "max_time": 300}})
    process(poller)
    [event] = take(ctx.sqs, ctx.settings.events_queue)
    assert event["type"] == "job.submitted" and event["status"] == "queued"
    assert event["job_type"] == "csm" and event["event_id"] == f"{event['id']}:submitted"
    job = ctx.store.get(event["id"])
    assert job.status is JobStatus.QUEUED and job.source == "intake" and job.max_time == 300
    assert job.params["text"] == "Hello" and job.params["temperature"] == 0.9  # model defaults applied
    # No keys configured: intake jobs share the anonymous owner, visible over HTTP locally.
    assert job.owner == "anonymous" and job.idempotency_key == message_id
    [msg] = ctx.jobs_queue.receive(wait_seconds=1, visibility=30, max_messages=10)
    assert msg.job_id() == job.id
    assert depth(ctx.sqs, ctx.settings.intake_queue) == 0  # deleted after success


def test_owner_is_the_intake_owner_when_the_api_has_keys(stack_env):
    keyed = Context(Settings(**stack_env, C3_RENDER_API_KEY="k1"))
    poller = QueuePoller(create_app(keyed), next(s for s in sqs_sources(create_app(keyed)) if s.name == "intake"),
                         keyed.sqs, keyed.settings.aws_region, FAST_POLL)
    send(keyed, {"type": "whisper", "params": {"audio_url": "https://x.org/a.mp3"}})
    process(poller)
    [event] = take(keyed.sqs, keyed.settings.events_queue)
    assert keyed.store.get(event["id"]).owner == INTAKE_OWNER


def test_each_integration_has_its_own_cap_and_a_full_one_is_rejected_not_retried(stack_env):
    """Owners per reply_to queue: one integration at its in-flight cap gets an
    intake.rejected event naming the limit (the message deleted, no receive burnt), while
    another integration's job is still created."""
    keyed = Context(Settings(**stack_env, C3_RENDER_API_KEY="k1", MAX_IN_FLIGHT_PER_KEY="1"))
    app = create_app(keyed)
    poller = QueuePoller(app, next(s for s in sqs_sources(app) if s.name == "intake"), keyed.sqs,
                         keyed.settings.aws_region, FAST_POLL)
    prefix = stack_env["JOBS_QUEUE"].removesuffix("-jobs")
    replies = {n: ensure_queue(keyed.sqs, f"{prefix}-reply-{n}") for n in ("a", "b")}
    for n, text in (("a", "one"), ("a", "two"), ("b", "three")):
        send(keyed, {"type": "csm", "params": {"text": text}, "reply_to": f"{prefix}-reply-{n}"})
        process(poller)
    a = sorted(take(keyed.sqs, replies["a"], 2), key=lambda e: e["type"], reverse=True)
    assert [e["type"] for e in a] == ["job.submitted", "intake.rejected"], a
    assert "MAX_IN_FLIGHT_PER_KEY" in a[1]["details"][0]["message"]
    [b] = take(keyed.sqs, replies["b"])
    assert b["type"] == "job.submitted"
    assert keyed.store.get(b["id"]).owner == f"{INTAKE_OWNER}:{prefix}-reply-b"
    assert keyed.store.get(a[0]["id"]).owner == f"{INTAKE_OWNER}:{prefix}-reply-a"
    assert depth(keyed.sqs, keyed.settings.intake_queue) == 0


@pytest.mark.parametrize(
    "body, field, rule",
    [
        ("{not json", "body", "must be a JSON object"),
        ("[1, 2]", "body", "must be a JSON object"),
        ({"type": "tts", "params": {"text": "a"}}, "type", "'csm', 'whisper', 'portrait' or 'analyze'"),
        ({"type": "csm"}, "params", "Field required"),
        ({"type": "csm", "params": {"text": "a", "temperature": 9}}, "params.temperature", "less than or equal to 2"),
        ({"type": "csm", "params": {"text": "a", "monologue": ["b"]}}, "params.text", "exactly one of"),
        ({"type": "portrait", "params": {"image_url": "ftp://x.org/a.jpg", "audio_url": "https://x.org/a"}},
         "params.image_url", "http(s) URL"),
        ({"type": "csm", "params": {"text": "a"}, "priority": 1}, "priority", "Extra inputs"),
        ({"type": "csm", "params": {"text": "a"}, "idempotency_key": ""}, "idempotency_key", "at least 1"),
        ({"type": "csm", "params": {"text": "a"}, "reply_to": "out.fifo"}, "reply_to", "FIFO"),
        ({"type": "csm", "params": {"text": "a"}, "reply_to": "bad name!"}, "reply_to", "queue name"),
    ],
)
def test_invalid_message_answers_with_an_error_event_and_creates_no_job(ctx, poller, body, field, rule):
    message_id = send(ctx, body)
    process(poller)
    [event] = take(ctx.sqs, ctx.settings.events_queue)
    assert event["type"] == "intake.rejected" and event["message_id"] == message_id
    assert event["error"]
    matching = [d for d in event["details"] if d["field"] == field]
    assert matching and rule in matching[0]["message"], event["details"]
    assert jobs_in_table(ctx) == []
    assert depth(ctx.sqs, ctx.settings.jobs_queue) == 0
    assert depth(ctx.sqs, ctx.settings.intake_queue) == 0  # deleted, not redriven forever


def test_reply_to_gets_the_answers_and_own_queues_are_refused(ctx, poller):
    reply = f"{ctx.settings.events_queue}-reply"
    ensure_queue(ctx.sqs, reply)
    send(ctx, {"type": "csm", "params": {"text": "a", "temperature": -1}, "reply_to": reply,
               "idempotency_key": "order-7"})
    send(ctx, {"type": "analyze", "params": {"image_url": "https://x.org/a.jpg"}, "reply_to": reply})
    send(ctx, {"type": "csm", "params": {"text": "a"}, "reply_to": ctx.settings.jobs_queue})
    process(poller, 3)
    answers = {e["type"]: e for e in take(ctx.sqs, reply, 2)}
    assert answers["intake.rejected"]["details"][0]["field"] == "params.temperature"
    assert answers["intake.rejected"]["idempotency_key"] == "order-7"
    assert ctx.store.get(answers["job.submitted"]["id"]).reply_to == reply
    [refused] = take(ctx.sqs, ctx.settings.events_queue)
    assert refused["details"] == [{"field": "reply_to", "message": "must not be one of the system's own work queues"}]
    assert len(jobs_in_table(ctx)) == 1


def test_redelivered_message_makes_one_job(ctx):
    """The first attempt dies after creating the job (its events queue does not exist yet,
    so the submitted event cannot be sent): SQS delivers the same message again and the
    second attempt finds the job instead of creating another."""
    intake_url = ctx.sqs.get_queue_url(QueueName=ctx.settings.intake_queue)["QueueUrl"]
    ctx.sqs.set_queue_attributes(QueueUrl=intake_url, Attributes={"VisibilityTimeout": "1"})
    late_events = f"{ctx.settings.events_queue}-late"
    app = create_app(ctx, EventPublisher(ctx.sqs, late_events, ctx.results, ctx.clock))
    poller = QueuePoller(app, next(s for s in sqs_sources(app) if s.name == "intake"), ctx.sqs,
                         ctx.settings.aws_region, FAST_POLL)
    send(ctx, {"type": "csm", "params": {"text": "once"}})
    process(poller)
    assert len(jobs_in_table(ctx)) == 1
    assert depth(ctx.sqs, ctx.settings.intake_queue) == 1  # reported as a batch item failure: kept
    ensure_queue(ctx.sqs, late_events)
    wait_until(lambda: poller.poll_once(wait_seconds=1), timeout=15)  # visible again after 1 s
    [event] = take(ctx.sqs, late_events)
    [item] = jobs_in_table(ctx)
    assert event["type"] == "job.submitted" and event["id"] == item["id"]["S"]
    assert depth(ctx.sqs, ctx.settings.intake_queue) == 0
    # The replay re-enqueued the still-queued job: duplicates are safe, a lost enqueue is not.
    messages = take(ctx.sqs, ctx.settings.jobs_queue, 2)
    assert messages == [{"id": event["id"]}] * 2 and drain(ctx.sqs, ctx.settings.jobs_queue) == []


def test_idempotency_key_across_messages(ctx, poller):
    body = {"type": "csm", "params": {"text": "same"}, "idempotency_key": "order-1"}
    send(ctx, body)
    send(ctx, body)
    send(ctx, {**body, "params": {"text": "different"}})
    process(poller, 3)
    events = take(ctx.sqs, ctx.settings.events_queue, 3)
    submitted = [e for e in events if e["type"] == "job.submitted"]
    [rejected] = [e for e in events if e["type"] == "intake.rejected"]
    assert len(submitted) == 2 and submitted[0]["id"] == submitted[1]["id"]
    assert rejected["details"][0]["field"] == "idempotency_key"
    assert len(jobs_in_table(ctx)) == 1


def test_full_loop_intake_to_completion_event(stack_env, ctx, app, tmp_path):
    """Message in -> local poller -> handler -> job -> worker -> completion event out."""
    reply = f"{ctx.settings.events_queue}-reply"
    ensure_queue(ctx.sqs, reply)
    stop = threading.Event()
    threads = start_pollers(app, ctx.settings, stop, FAST_POLL)
    worker = ThreadWorker(stack_env, OUTPUT_DIR=str(tmp_path / "out"))
    try:
        with worker:
            send(ctx, {"type": "csm", "params": {"text": "render me"}, "idempotency_key": f"k-{uuid.uuid4()}"})
            send(ctx, {"type": "whisper", "params": {"audio_url": "https://x.org/a.mp3"}, "reply_to": reply})
            send(ctx, {"type": "csm", "params": {"text": "fail:model exploded"}})
            events = take(ctx.sqs, ctx.settings.events_queue, 4, timeout=40)
            replies = take(ctx.sqs, reply, 2, timeout=20)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    by_type: dict[str, list[dict]] = {}
    for e in events:
        by_type.setdefault(e["type"], []).append(e)
    assert len(by_type["job.submitted"]) == 2
    [success] = by_type["job.success"]
    assert requests.get(success["result_url"], timeout=5).content.startswith(b"FAKE-MP3 ")
    assert success["job_type"] == "csm" and success["finished_at"] >= success["created_at"]
    [failed] = by_type["job.failed"]
    assert failed["error"] == "model exploded"
    assert [e["type"] for e in replies] == ["job.submitted", "job.success"]
    assert replies[1]["text"] == "transcript of https://x.org/a.mp3"
    assert drain(ctx.sqs, ctx.settings.events_queue) == []  # one event per state, no extras


def test_poller_process_serves_both_handlers_and_stops_on_sigterm(stack_env, ctx, tmp_path):
    """`python -m infra.local.lambda_poller` (what `make run` starts) drives the intake and
    the dead-letter handlers of app.py itself."""
    proc = procs.start([sys.executable, "-m", "infra.local.lambda_poller"],
                       env={**stack_env, "LAMBDA_POLL_WAIT_SECONDS": "1"}, log_path=tmp_path / "poller.log")
    try:
        send(ctx, {"type": "csm", "params": {"text": "via the process"}})
        [submitted] = take(ctx.sqs, ctx.settings.events_queue, timeout=30)
        assert submitted["type"] == "job.submitted"
        ctx.dlq.send_json({"id": submitted["id"]})  # as if redriven after maxReceiveCount
        [failed] = take(ctx.sqs, ctx.settings.events_queue, timeout=30)
        assert (failed["type"], failed["id"]) == ("job.failed", submitted["id"])
        assert ctx.store.get(submitted["id"]).status is JobStatus.FAILED
        wait_until(lambda: depth(ctx.sqs, ctx.settings.jobs_dlq) == 0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        procs.stop(proc)
