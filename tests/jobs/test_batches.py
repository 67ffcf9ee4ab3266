"""Batch submission over the real queues and table (a moto server over HTTP): per-item
answers, the members run, one batch.completed webhook (also after a worker is SIGKILLed
mid-batch), per-item idempotency on a replayed batch, the outbox covering a batch whose
submitter died, and the request's rules."""

from __future__ import annotations

import json
import os
import signal

import pytest
from chalice.test import Client

from chalicelib.api.routes import create_app
from chalicelib.context import Context
from chalicelib.jobs.models import JobStatus
from chalicelib.platform.settings import Settings
from tests.support import procs
from tests.support.harness import Handlers, ThreadWorker, start_worker_process, task_events, wait_until

pytestmark = pytest.mark.integration
JSON = {"Content-Type": "application/json"}


def post_batch(client, body, headers=None):
    resp = client.http.post("/batch", headers={**JSON, **(headers or {})}, body=json.dumps(body))
    return resp.status_code, json.loads(resp.body)


def batch_view(client, batch_id):
    return json.loads(client.http.get(f"/batch/{batch_id}").body)


def completed(receiver, batch_id):
    return [r for r in receiver.requests if r.json().get("type") == "batch.completed" and r.json()["id"] == batch_id]


def test_a_batch_with_one_invalid_item_accepts_and_runs_the_rest_with_one_completion_webhook(stack_env, receiver):
    items = [{"type": "csm", "params": {"text": "one"}},
             {"type": "whisper", "params": {"audio_url": "https://x.org/a.mp3"}, "idempotency_key": "w-1"},
             {"type": "csm", "params": {"text": "bad", "temperature": 9}},
             {"type": "csm", "params": {"text": "urgent", "priority": "high"}}]
    with ThreadWorker(stack_env) as tw, Client(create_app(tw.ctx)) as client:
        status, answer = post_batch(client, {"items": items, "priority": "low", "notify_url": receiver.url})
        assert status == 200 and (answer["accepted"], answer["rejected"]) == (3, 1)
        assert [a["index"] for a in answer["items"]] == [0, 1, 2, 3]
        bad = answer["items"][2]
        assert "id" not in bad and bad["code"] == 422
        assert bad["details"][0]["field"] == "items.2.params.temperature"
        ids = [answer["items"][i]["id"] for i in (0, 1, 3)]
        jobs = [tw.ctx.store.get(i) for i in ids]
        assert [j.priority for j in jobs] == ["low", "low", "high"]  # the batch's default, or the item's own
        assert all(j.notify_url == receiver.url and j.batch_id == answer["id"] for j in jobs)
        view = wait_until(lambda: (v := batch_view(client, answer["id"]))["completed"] and v, 30)
        assert view["counts"] == {"success": 3} and view["jobs"] == ids and view["total"] == 3
        wait_until(lambda: batch_view(client, answer["id"]).get("webhook", {}).get("status") == "delivered", 15)
        [hook] = completed(receiver, answer["id"])
        assert hook.json()["counts"] == {"success": 3} and hook.json()["jobs"] == ids
        assert hook.headers["webhook-id"] == f"msg_{answer['id']}_completed"
        # Besides it, the per-job webhooks (the batch's notify_url is every item's default; the
        # batch completes when its members are final, not when their webhooks are delivered).
        wait_until(lambda: all(tw.ctx.store.get(i).webhook == "delivered" for i in ids), 15)
        assert all(len(receiver.accepted_for(i)) == 1 for i in ids)


def test_a_replayed_batch_finds_its_jobs_by_item_key_and_by_batch_key(ctx):
    items = [{"type": "csm", "params": {"text": "a"}, "idempotency_key": "k-a"},
             {"type": "csm", "params": {"text": "b"}}]
    with Client(create_app(ctx)) as client:
        _, first = post_batch(client, {"items": items})
        _, again = post_batch(client, {"items": items})
        assert again["id"] != first["id"]
        assert again["items"][0]["id"] == first["items"][0]["id"]  # the item's key: the same job
        assert again["items"][1]["id"] != first["items"][1]["id"]  # no key, no batch key: a new job
        _, keyed = post_batch(client, {"items": items}, {"Idempotency-Key": "batch-1"})
        _, replay = post_batch(client, {"items": items}, {"Idempotency-Key": "batch-1"})
        assert replay == keyed
        status, other = post_batch(client, {"items": items[:1]}, {"Idempotency-Key": "batch-1"})
        assert status == 409 and other["details"][0]["field"] == "Idempotency-Key"
        # An item key already used for another body is that item's error, not the batch's.
        status, mixed = post_batch(client, {"items": [{"type": "csm", "params": {"text": "c"},
                                                       "idempotency_key": "k-a"}, items[1]]})
        assert status == 200 and mixed["items"][0]["code"] == 409
        assert mixed["items"][0]["details"][0]["field"] == "items.0.idempotency_key"
    jobs = [e for e in ctx.dynamodb.scan(TableName=ctx.settings.jobs_table)["Items"] if "record" not in e]
    assert len(jobs) == 5  # k-a once; "b" in each batch without a batch key (3) and in batch-1 (1)


@pytest.mark.parametrize("body, field", [
    ({}, "items"), ({"items": []}, "items"), ({"items": [{"type": "csm", "params": {"text": "a"}}] * 101}, "items"),
    ({"items": [{"type": "csm", "params": {"text": "a"}}], "priority": "urgent"}, "priority"),
    ({"items": [{"type": "csm", "params": {"text": "a"}}], "notify_url": "ftp://x"}, "notify_url"),
    ({"items": [7]}, "items.0"), ({"items": [{"type": "csm", "params": {"text": "a"}}], "extra": 1}, "extra"),
])
def test_a_batch_breaking_a_rule_is_refused_naming_the_field(ctx, body, field):
    with Client(create_app(ctx)) as client:
        status, answer = post_batch(client, body)
        assert status == 422 and answer["details"][0]["field"] == field
        assert client.http.get("/batch/3f1b1d5e-2b8c-4d43-9a52-8f4a1b2c3d4e").status_code == 404
        assert client.http.get("/batch/nope").status_code == 400


def test_a_batch_too_big_for_its_record_is_413_and_creates_nothing(stack_env):
    ctx = Context(Settings(**stack_env, MAX_BODY_BYTES="2000000"))
    items = [{"type": "csm", "params": {"text": "x" * 4000}} for _ in range(100)]
    with Client(create_app(ctx)) as client:
        status, answer = post_batch(client, {"items": items})
    assert status == 413 and answer["details"][0]["field"] == "items"
    assert ctx.dynamodb.scan(TableName=ctx.settings.jobs_table)["Items"] == []


def test_a_batch_whose_items_are_all_invalid_creates_nothing_and_says_why_per_item(ctx):
    items = [{"type": "tts", "params": {}}, {"type": "csm"}, {"type": "csm", "params": {"text": "a"}, "x": 1}]
    with Client(create_app(ctx)) as client:
        status, answer = post_batch(client, {"items": items})
    assert status == 200 and answer["id"] is None and (answer["accepted"], answer["rejected"]) == (0, 3)
    assert [a["details"][0]["field"] for a in answer["items"]] == ["items.0.type", "items.1.params", "items.2.x"]
    assert ctx.dynamodb.scan(TableName=ctx.settings.jobs_table)["Items"] == []


def test_the_reconciler_creates_the_members_of_a_batch_whose_submitter_died(ctx):
    app = create_app(ctx)
    service = app.batches
    created = []
    real = service.jobs.submit

    def dies_after_one(*args, **kwargs):
        if created:
            raise SystemExit("the API process died mid-batch")
        created.append(1)
        return real(*args, **kwargs)

    service.jobs.submit = dies_after_one
    items = [{"type": "csm", "params": {"text": t}} for t in "abc"]
    with pytest.raises(SystemExit):
        service.submit({"items": items}, "anonymous")
    service.jobs.submit = real
    [batch_item] = [i for i in ctx.dynamodb.scan(TableName=ctx.settings.jobs_table)["Items"] if "record" in i]
    batch_id = batch_item["id"]["S"]
    later = Context(ctx.settings, clock=lambda: ctx.clock() + 120)  # past the outbox grace
    create_app(later).reconciler.run_once()
    view = service.view(batch_id, "anonymous")
    assert view["total"] == 3 and all(ctx.store.get(i).status is JobStatus.QUEUED for i in view["jobs"])


def test_batch_completion_webhook_exactly_once_after_a_worker_is_sigkilled_mid_batch(stack_env, tmp_path, receiver):
    env = {**stack_env, "OUTPUT_DIR": str(tmp_path / "out"), "FAKE_TASK_LOG": str(tmp_path / "tasks.log"),
           "LEASE_SECONDS": "3", "RENDER_POLLING_INTERVAL": "0.5"}
    ctx = Context(Settings(**env))
    workers = []
    try:
        with Handlers(Settings(**env)), Client(create_app(ctx)) as client:
            items = [{"type": "csm", "params": {"text": "sleep:0.4"}} for _ in range(6)]
            _, answer = post_batch(client, {"items": items, "notify_url": receiver.url})
            ids = [a["id"] for a in answer["items"]]
            workers.append(start_worker_process(env, tmp_path / "a.log"))
            # Killed while running a member, after others finished.
            wait_until(lambda: sum(ctx.store.get(i).status is JobStatus.SUCCESS for i in ids) >= 2
                       and any(ctx.store.get(i).status is JobStatus.RUNNING for i in ids), 30)
            os.kill(workers[0].pid, signal.SIGKILL)
            workers[0].wait()
            workers.append(start_worker_process(env, tmp_path / "b.log"))
            wait_until(lambda: batch_view(client, answer["id"]).get("webhook", {}).get("status") == "delivered", 60)
            view = batch_view(client, answer["id"])
            assert view["counts"] == {"success": 6}
            # Every member's delivery checked the batch (each one after its final state): the
            # last of them is settled, so no check that could send a second webhook is left.
            wait_until(lambda: all(ctx.store.get(i).outbox is None for i in ids), 30)
            assert len(completed(receiver, answer["id"])) == 1
            assert any(task_events(tmp_path / "tasks.log", i) for i in ids)
    finally:
        for p in workers:
            procs.stop(p)


def test_the_reconciler_completes_a_batch_whose_members_finished_unseen(ctx, receiver):
    """Members finished with no delivery checking the batch (their handler lost, or a member
    replayed from another batch): the batch's outbox entry brings the check, once."""
    app = create_app(ctx)
    answer = app.batches.submit({"items": [{"type": "csm", "params": {"text": t}} for t in "ab"],
                                 "notify_url": receiver.url}, "anonymous")
    for item in answer["items"]:
        ctx.store.claim(item["id"], "w1", 60)
        ctx.store.transition(item["id"], JobStatus.SUCCESS, worker="w1")
    later = create_app(Context(ctx.settings, clock=lambda: ctx.clock() + 120))
    assert later.reconciler.run_once().resent.get("batch") == 1
    assert app.batches.view(answer["id"], "anonymous")["completed"] is True
    # Its webhook is owed and queued; delivering it twice POSTs once.
    body = json.dumps({"id": answer["id"]})
    assert app.delivery.handle(body) == "batch_delivered"
    assert app.delivery.handle(body) == "batch_nothing_owed"
    assert later.reconciler.run_once().resent.get("batch", 0) == 0  # out of the outbox: nothing left due
    assert len(completed(receiver, answer["id"])) == 1
