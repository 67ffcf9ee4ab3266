"""Every webhook delivery visible and replayable: the delivery log (GET /jobs/{id}/deliveries),
redelivery (POST /jobs/{id}/redeliver), 410 Gone, Retry-After and the retry schedules, through
the API (Chalice's test client) and the real webhooks queue on the moto server."""

from __future__ import annotations

import json
import random
from email.utils import format_datetime
from datetime import datetime, timezone

import pytest
from chalice.test import Client

from chalicelib.api.routes import create_app
from chalicelib.context import Context
from chalicelib.jobs.models import JobStatus
from chalicelib.platform.retry_schedule import STANDARD_DELAYS, RetrySchedule
from chalicelib.platform.settings import Settings
from chalicelib.delivery.webhooks import retry_after_seconds
from tests.support.harness import Handlers, wait_until

pytestmark = pytest.mark.integration

K1 = {"X-C3-RENDER-KEY": "key-one", "Content-Type": "application/json"}
K2 = {"X-C3-RENDER-KEY": "key-two", "Content-Type": "application/json"}


def make_settings(stack_env, **extra) -> Settings:
    return Settings(**{**stack_env, "C3_RENDER_API_KEY": "key-one,key-two", "ALLOW_PRIVATE_URLS": "true",
                       "WEBHOOK_ATTEMPTS": "3", **extra})


@pytest.fixture
def settings(stack_env, private_urls):
    private_urls(True)
    return make_settings(stack_env)


@pytest.fixture
def client(settings):
    with Client(create_app(Context(settings))) as c:
        yield c


def call(client, method, path, body=None, headers=K1):
    resp = getattr(client.http, method)(path, headers=headers, body=json.dumps(body) if body is not None else None)
    return resp, json.loads(resp.body) if resp.body else None


def submit(client, receiver, events=("completed",)) -> str:
    resp, body = call(client, "post", "/csm", {"text": "hi", "notify_url": receiver.url,
                                               "webhook_events_filter": list(events)})
    assert resp.status_code == 200, body
    return body["id"]


def finish(ctx, job_id, start_webhook=False):
    ctx.store.claim(job_id, "w1", 60, start_webhook)
    job = ctx.store.transition(job_id, JobStatus.SUCCESS, worker="w1", fields={"result_text": "done"})
    ctx.outbox.notify(job)
    return job


def settled(ctx, job_id):
    return wait_until(lambda: (j := ctx.store.get(job_id)).outbox is None and j, timeout=30)


def test_deliveries_list_refused_then_accepted_attempts(settings, client, receiver):
    receiver.script = [503, 500]
    ctx = Context(settings)
    job_id = submit(client, receiver)
    with Handlers(settings):
        finish(ctx, job_id)
        job = settled(ctx, job_id)
    assert job.webhook == "delivered"
    resp, body = call(client, "get", f"/jobs/{job_id}/deliveries")
    assert resp.status_code == 200 and body["id"] == job_id
    log = body["deliveries"]
    assert [(d["attempt"], d.get("status"), d["outcome"]) for d in log] == [
        (1, 503, "retrying"), (2, 500, "retrying"), (3, 200, "delivered")]
    assert {d["webhook_id"] for d in log} == {f"msg_{job_id}_success"} == \
        {r.headers["webhook-id"] for r in receiver.for_job(job_id)}
    assert all(d["event"] == "completed" and d["seconds"] >= 0 and d["at"].endswith("+00:00") for d in log)
    assert "next_attempt_at" in log[0] and "next_attempt_at" not in log[2]
    # Only the owner sees it; a malformed id names the field.
    assert call(client, "get", f"/jobs/{job_id}/deliveries", headers=K2)[0].status_code == 404
    resp, body = call(client, "get", "/jobs/nope/deliveries")
    assert resp.status_code == 400 and body["details"][0]["field"] == "id"


def test_redelivery_after_the_receiver_was_down_uses_the_same_webhook_id(settings, client, receiver):
    receiver.status = 500
    ctx = Context(settings)
    job_id = submit(client, receiver)
    resp, body = call(client, "post", f"/jobs/{job_id}/redeliver", {})
    assert resp.status_code == 409 and body["status"] == "queued"  # not final yet
    with Handlers(settings):
        finish(ctx, job_id)
        job = settled(ctx, job_id)
        assert (job.webhook, job.webhook_attempts) == ("failed", 3)
        receiver.status = 200  # the receiver is back
        assert call(client, "post", f"/jobs/{job_id}/redeliver", {}, K2)[0].status_code == 404
        resp, body = call(client, "post", f"/jobs/{job_id}/redeliver")  # no body: the final webhook
        assert resp.status_code == 202, body
        assert body == {"id": job_id, "event": "completed", "status": "pending",
                        "webhook_id": f"msg_{job_id}_success"}
        job = wait_until(lambda: (j := ctx.store.get(job_id)).webhook == "delivered" and j.outbox is None and j,
                         timeout=30)
    hooks = receiver.for_job(job_id)
    assert [h.answered for h in hooks] == [500, 500, 500, 200]
    assert {h.headers["webhook-id"] for h in hooks} == {f"msg_{job_id}_success"}
    assert job.webhook_attempts == 4 and job.status_view()["webhook"] == {"status": "delivered", "attempts": 4}
    log = call(client, "get", f"/jobs/{job_id}/deliveries")[1]["deliveries"]
    assert [(d["attempt"], d["outcome"]) for d in log] == [
        (1, "retrying"), (2, "retrying"), (3, "failed"), (4, "delivered")]


def test_redeliver_refusals_name_the_rule(settings, client, receiver):
    ctx = Context(settings)
    plain = call(client, "post", "/csm", {"text": "no hook"})[1]["id"]
    finish(ctx, plain)
    resp, body = call(client, "post", f"/jobs/{plain}/redeliver", {})
    assert resp.status_code == 409 and body["details"][0]["field"] == "notify_url"
    job_id = submit(client, receiver)
    finish(ctx, job_id)
    resp, body = call(client, "post", f"/jobs/{job_id}/redeliver", {"event": "start"})
    assert resp.status_code == 409 and body["details"][0]["field"] == "event"  # it never owed one
    resp, body = call(client, "post", f"/jobs/{job_id}/redeliver", {"event": "finished"})
    assert resp.status_code == 422 and body["details"][0]["field"] == "event"
    # Its first delivery is still pending: no second one on top.
    resp, body = call(client, "post", f"/jobs/{job_id}/redeliver", {"event": "completed"})
    assert resp.status_code == 409 and "in progress" in body["error"]


def test_410_gone_stops_every_webhook_of_the_job(settings, client, receiver):
    receiver.script = [410]
    ctx = Context(settings)
    job_id = submit(client, receiver, events=("start", "completed"))
    with Handlers(settings):
        ctx.store.claim(job_id, "w1", 60, True)
        ctx.outbox.notify(ctx.store.get(job_id))
        wait_until(lambda: ctx.store.get(job_id).start_webhook == "failed")
        job = ctx.store.transition(job_id, JobStatus.SUCCESS, worker="w1", fields={"result_text": "x"})
        ctx.outbox.notify(job)
        job = settled(ctx, job_id)  # the final webhook's turn came, and went without a POST
    assert (job.start_webhook, job.webhook, job.webhook_attempts) == ("failed", "failed", 0)
    assert [h.answered for h in receiver.for_job(job_id)] == [410]
    log = call(client, "get", f"/jobs/{job_id}/deliveries")[1]["deliveries"]
    assert [(d["event"], d["status"], d["outcome"]) for d in log] == [("start", 410, "gone")]


def test_retry_after_on_503_stretches_the_wait(settings, client, receiver):
    receiver.script, receiver.retry_after = [503], "2"
    ctx = Context(settings)
    job_id = submit(client, receiver)
    with Handlers(settings):
        finish(ctx, job_id)
        job = wait_until(lambda: (j := ctx.store.get(job_id)).webhook == "delivered" and j, timeout=30)
    first, second = receiver.for_job(job_id)
    assert second.at - first.at >= 2.0  # WEBHOOK_INTERVAL is 0.05 s here
    entry = job.deliveries[0]
    assert entry["status"] == 503 and entry["next_attempt_at"] - entry["at"] >= 2.0


def test_standard_schedule_first_steps_with_an_injected_clock(stack_env, private_urls, receiver):
    private_urls(True)
    now = [1_900_000_000.0]
    settings = make_settings(stack_env, WEBHOOK_SCHEDULE="standard")
    ctx = Context(settings, clock=lambda: now[0])
    app = create_app(ctx)
    app.delivery.rng = random.Random(7)
    receiver.status = 500
    with Client(app) as client:
        job_id = submit(client, receiver)
    finish(ctx, job_id)
    msg = json.dumps({"id": job_id})
    assert app.delivery.handle(msg) == "retrying"
    due = ctx.store.get(job_id).deliveries[-1]["next_attempt_at"]
    assert 4.5 <= due - now[0] <= 5.5  # 5 s, jittered by up to 10 %
    now[0] += 2
    assert app.delivery.handle(msg) == "held"  # a copy of the message before it is due
    now[0] = due + 0.1
    assert app.delivery.handle(msg) == "retrying"
    due = ctx.store.get(job_id).deliveries[-1]["next_attempt_at"]
    assert 270 <= due - now[0] <= 330  # 5 min
    now[0] = due + 0.1
    assert app.delivery.handle(msg) == "retrying"
    due = ctx.store.get(job_id).deliveries[-1]["next_attempt_at"]
    assert 1620 <= due - now[0] <= 1980  # 30 min: beyond SQS's longest delay, a chain of messages
    job = ctx.store.get(job_id)
    assert job.webhook == "pending" and job.webhook_attempts == 3 and job.outbox_at >= due
    assert len(receiver.for_job(job_id)) == 3


def test_schedules_and_retry_after_parsing():
    assert RetrySchedule.parse("seed", 5, 5.0).delays == (5.0,) * 4
    standard = RetrySchedule.parse("standard", 5, 5.0)
    assert standard.attempts == 10 and standard.delays == STANDARD_DELAYS
    assert standard.delay_after(10) is None
    assert RetrySchedule.parse("1,2", 5, 5.0).attempts == 3
    with pytest.raises(ValueError, match="WEBHOOK_SCHEDULE"):
        RetrySchedule.parse("often", 5, 5.0)
    with pytest.raises(ValueError, match="WEBHOOK_SCHEDULE"):
        Settings(WEBHOOK_SCHEDULE="often")
    assert retry_after_seconds("120", 0) == 120
    later = datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert retry_after_seconds(format_datetime(later, usegmt=True), later.timestamp() - 30) == 30
    assert retry_after_seconds("soon", 0) is None and retry_after_seconds("999999999", 0) == 86400


def test_the_start_webhook_can_be_redelivered_too(settings, client, receiver):
    ctx = Context(settings)
    job_id = submit(client, receiver, events=("start", "completed"))
    with Handlers(settings):
        finish(ctx, job_id, start_webhook=True)
        settled(ctx, job_id)
        wait_until(lambda: len(receiver.for_job(job_id)) == 2)
        resp, body = call(client, "post", f"/jobs/{job_id}/redeliver", {"event": "start"})
        assert resp.status_code == 202 and body["webhook_id"] == f"msg_{job_id}_running"
        wait_until(lambda: (j := ctx.store.get(job_id)).start_webhook == "delivered" and j.outbox is None, 30)
    hooks = receiver.for_job(job_id)
    assert [h.json()["status"] for h in hooks] == ["running", "success", "running"]
    assert hooks[2].headers["webhook-id"] == hooks[0].headers["webhook-id"] == f"msg_{job_id}_running"
    log = call(client, "get", f"/jobs/{job_id}/deliveries")[1]["deliveries"]
    assert [(d["event"], d["attempt"]) for d in log] == [("start", 1), ("completed", 1), ("start", 2)]


def test_an_attempt_without_an_answer_logs_its_error_class(settings, client):
    ctx = Context(settings)
    resp, body = call(client, "post", "/csm", {"text": "hi", "notify_url": "http://127.0.0.1:9/closed"})
    job_id = body["id"]
    with Handlers(settings):
        finish(ctx, job_id)
        job = settled(ctx, job_id)
    assert (job.webhook, job.webhook_attempts) == ("failed", 3)
    log = call(client, "get", f"/jobs/{job_id}/deliveries")[1]["deliveries"]
    assert [(d["error"], d["outcome"]) for d in log] == [("connection_failed", "retrying")] * 2 + [
        ("connection_failed", "failed")]
    assert all("status" not in d for d in log)


def test_an_operator_key_sees_and_redelivers_any_tenants_job(stack_env, private_urls, receiver):
    private_urls(True)
    settings = make_settings(stack_env, C3_RENDER_OPERATOR_KEYS="op-key")
    ctx = Context(settings)
    operator = {"X-C3-RENDER-KEY": "op-key", "Content-Type": "application/json"}
    with Client(create_app(ctx)) as client:
        job_id = submit(client, receiver)
        finish(ctx, job_id)
        ctx.store.settle(job_id, {"webhook": "failed"}, done=True)  # as if every attempt had failed
        assert call(client, "get", f"/jobs/{job_id}/deliveries", headers=operator)[0].status_code == 200
        assert call(client, "post", f"/jobs/{job_id}/redeliver", {}, K2)[0].status_code == 404  # another tenant
        resp, body = call(client, "post", f"/jobs/{job_id}/redeliver", {}, operator)
        assert resp.status_code == 202 and body["webhook_id"] == f"msg_{job_id}_success"
    job = ctx.store.get(job_id)
    assert (job.webhook, job.outbox) == ("pending", "notify")
