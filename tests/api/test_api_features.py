"""The API features beyond the seed's routes, through Chalice's test client on a real moto
server: listing a key's jobs, waiting for a result, queue positions, retries, durable
result links, the per-key cap and /health."""

from __future__ import annotations

import json
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from chalice.test import Client

from chalicelib.api.routes import create_app
from chalicelib.api.wait_holds import STALE_AFTER, WaitHolds
from chalicelib.platform.auth import owner_of
from chalicelib.jobs.links import ResultLinks
from chalicelib.context import Context
from chalicelib.jobs.models import JobStatus
from chalicelib.platform.settings import Settings
from tests.support.harness import wait_until

pytestmark = pytest.mark.integration

K1 = {"X-C3-RENDER-KEY": "key-one", "Content-Type": "application/json"}
K2 = {"X-C3-RENDER-KEY": "key-two", "Content-Type": "application/json"}
CSM = {"text": "Hello"}


def make_ctx(stack_env, **extra):
    return Context(Settings(**stack_env, C3_RENDER_API_KEY="key-one,key-two", RESULT_LINK_SECRET="s3cret",
                            PUBLIC_API_URL="http://api.test", **extra))


@pytest.fixture
def ctx(stack_env):
    return make_ctx(stack_env)


@pytest.fixture
def client(ctx):
    with Client(create_app(ctx)) as c:
        yield c


def post(client, path, body, headers=K1):
    resp = client.http.post(path, headers=headers, body=json.dumps(body))
    return resp, json.loads(resp.body or b"{}")


def get(client, path, headers=K1):
    resp = client.http.get(path, headers=headers)
    return resp, json.loads(resp.body) if resp.body else None


def finish(ctx, job_id, status=JobStatus.SUCCESS, **fields):
    ctx.store.claim(job_id, "w1", 60)
    return ctx.store.transition(job_id, status, worker="w1", fields=fields)


# -- GET /jobs -----------------------------------------------------------------------------
def test_list_jobs_newest_first_filtered_and_paged(client, ctx):
    ids = [post(client, path, body)[1]["id"] for path, body in
           [("/csm", CSM), ("/whisper", {"audio_url": "https://x.org/a.mp3"}), ("/csm", {"text": "b"})]]
    other = post(client, "/csm", CSM, K2)[1]["id"]
    finish(ctx, ids[0], JobStatus.FAILED, error="boom")
    _, page = get(client, "/jobs")
    assert [j["id"] for j in page["jobs"]] == ids[::-1] and page["next_cursor"] is None
    assert page["jobs"][2]["status"] == "failed" and page["jobs"][2]["error"] == "boom"
    assert [j["id"] for j in get(client, "/jobs?type=csm")[1]["jobs"]] == [ids[2], ids[0]]
    assert [j["id"] for j in get(client, "/jobs?status=failed")[1]["jobs"]] == [ids[0]]
    first = get(client, "/jobs?limit=2")[1]
    assert [j["id"] for j in first["jobs"]] == [ids[2], ids[1]] and first["next_cursor"]
    second = get(client, f"/jobs?limit=2&cursor={first['next_cursor']}")[1]
    assert [j["id"] for j in second["jobs"]] == [ids[0]] and second["next_cursor"] is None
    # Another key sees only its own jobs, even with this key's cursor.
    assert [j["id"] for j in get(client, "/jobs", K2)[1]["jobs"]] == [other]
    leaked = get(client, f"/jobs?cursor={first['next_cursor']}", K2)[1]["jobs"]
    assert not {j["id"] for j in leaked} & set(ids)


@pytest.mark.parametrize("query, field", [
    ("status=done", "status"), ("type=tts", "type"), ("limit=0", "limit"), ("limit=101", "limit"),
    ("limit=x", "limit"), ("cursor=%%%", "cursor"), ("order=asc", "order"),
])
def test_list_jobs_bad_query_names_the_parameter(client, query, field):
    resp, body = get(client, f"/jobs?{query}")
    assert resp.status_code == 400 and body["details"][0]["field"] == field


def test_list_jobs_needs_a_key(client):
    assert client.http.get("/jobs").status_code == 401


# -- Prefer: wait ------------------------------------------------------------------------
def test_prefer_wait_answers_when_the_job_is_final(client, ctx):
    job_id = post(client, "/csm", CSM)[1]["id"]
    threading.Timer(0.5, finish, args=(ctx, job_id), kwargs={"result_text": "x"}).start()
    started = time.monotonic()
    resp, body = get(client, f"/status/{job_id}", {**K1, "Prefer": "wait=10"})
    assert body["status"] == "success" and resp.headers["Preference-Applied"] == "wait=10"
    assert time.monotonic() - started < 10  # answered at the final state, not at the deadline


def test_prefer_wait_on_submit_gives_the_current_state_when_time_runs_out(client):
    resp, body = post(client, "/csm", CSM, {**K1, "Prefer": "respond-async, wait=1"})
    assert resp.status_code == 200 and resp.headers["Preference-Applied"] == "wait=1"
    assert body["status"] == "queued" and body["queue_position"] == 0 and body["type"] == "csm"


def test_prefer_wait_beyond_the_limit_is_clamped_and_wait_0_ignored(client, ctx):
    """RFC 7240: a preference the server cannot honour does not fail the request."""
    job_id = post(client, "/csm", CSM)[1]["id"]
    finish(ctx, job_id, result_text="x")
    resp, body = get(client, f"/status/{job_id}", {**K1, "Prefer": "wait=30"})
    assert resp.status_code == 200 and resp.headers["Preference-Applied"] == "wait=25"
    resp, body = post(client, "/csm", CSM, {**K1, "Prefer": "wait=0"})
    assert resp.status_code == 200 and "Preference-Applied" not in resp.headers
    assert set(body) == {"id", "status"}  # the plain submit answer


@pytest.mark.parametrize("prefer", ["wait=abc", "wait=-1", "wait=\u00b2", "wait=\uff11\uff12", "wait=" + "9" * 5000,
                                    "wait="])
def test_prefer_wait_malformed_is_400_naming_prefer_and_writes_nothing(client, ctx, prefer):
    resp, body = post(client, "/csm", CSM, {**K1, "Prefer": prefer})
    assert resp.status_code == 400 and body["details"][0]["field"] == "Prefer"
    # Nothing was written or queued: the client that fixes the header gets one job.
    assert get(client, "/jobs")[1]["jobs"] == []
    assert ctx.jobs_queue.depth()["messages"] == 0
    job_id = post(client, "/csm", CSM)[1]["id"]
    resp, body = get(client, f"/status/{job_id}", {**K1, "Prefer": prefer})
    assert resp.status_code == 400 and body["details"][0]["field"] == "Prefer"


@pytest.mark.parametrize("query", ["limit=\u00b2", "limit=\uff11\uff12", "limit=" + "1" * 5000, "limit=+5",
                                   "limit=%205"])
def test_list_limit_takes_ascii_digits_only(client, query):
    resp, body = get(client, f"/jobs?{query}")
    assert resp.status_code == 400 and body["details"][0] == {
        "field": "limit", "message": "must be a whole number from 1 to 100 (ASCII digits)"}


@pytest.mark.parametrize("expires", ["\uff11\uff12", "\u00b2", "1" * 5000, "-5"])
def test_result_link_expires_takes_ascii_digits_only(client, ctx, expires):
    job_id = post(client, "/csm", CSM)[1]["id"]
    resp, body = get(client, f"/results/{job_id}?expires={expires}&token=x")
    assert resp.status_code == 400 and body["details"][0]["field"] == "expires"


# -- queue position --------------------------------------------------------------------------
def test_queue_position_counts_the_queued_jobs_ahead(client, ctx):
    ids = [post(client, "/csm", {"text": str(n)})[1]["id"] for n in range(4)]
    finish(ctx, ids[1])
    positions = [get(client, f"/status/{i}")[1].get("queue_position") for i in ids]
    assert positions == [0, None, 1, 2]


# -- retry ----------------------------------------------------------------------------------------
def test_retry_resubmits_a_failed_job_as_a_linked_new_job(client, ctx):
    old = post(client, "/csm", {"text": "again", "temperature": 0.5})[1]["id"]
    resp, body = post(client, f"/jobs/{old}/retry", {})
    assert resp.status_code == 409 and body["status"] == "queued"
    finish(ctx, old, JobStatus.FAILED, error="node died")
    resp, body = post(client, f"/jobs/{old}/retry", {})
    assert resp.status_code == 200 and body["retry_of"] == old and body["id"] != old
    new = ctx.store.get(body["id"])
    assert new.params == ctx.store.get(old).params and new.status is JobStatus.QUEUED
    assert get(client, f"/status/{new.id}")[1]["retry_of"] == old
    assert post(client, f"/jobs/{old}/retry", {}, K2)[0].status_code == 404


# -- durable result links -----------------------------------------------------------------------------
def test_result_link_redirects_to_a_fresh_url_and_refuses_forgeries(client, ctx, tmp_path):
    job_id = post(client, "/csm", CSM)[1]["id"]
    key = f"results/{job_id}/1.mp3"
    ctx.s3.put_object(Bucket=ctx.settings.results_bucket, Key=key, Body=b"ID3-audio")
    finish(ctx, job_id, result_key=key, result_content_type="audio/mpeg")
    _, result = get(client, f"/result/{job_id}")
    link = urlsplit(result["result_link"])
    assert (link.scheme, link.netloc, link.path) == ("http", "api.test", f"/results/{job_id}")
    resp = client.http.get(f"{link.path}?{link.query}")  # no key: the token is the credential
    assert resp.status_code == 302
    assert requests.get(resp.headers["Location"], timeout=5).content == b"ID3-audio"
    query = {k: v[0] for k, v in parse_qs(link.query).items()}
    forged = client.http.get(f"{link.path}?expires={query['expires']}&token={query['token'][:-2]}AA")
    assert forged.status_code == 403 and json.loads(forged.body)["details"][0]["field"] == "token"
    longer = client.http.get(f"{link.path}?expires={int(query['expires']) + 999}&token={query['token']}")
    assert longer.status_code == 403
    other = post(client, "/csm", CSM)[1]["id"]
    assert client.http.get(f"/results/{other}?{link.query}").status_code == 403


def test_expired_result_link_is_403(stack_env):
    past = make_ctx(stack_env)
    past.clock = lambda: time.time() - 10 * 86400  # links signed ten days ago
    with Client(create_app(past)) as old_client:
        job_id = post(old_client, "/csm", CSM)[1]["id"]
        key = f"results/{job_id}/1.mp3"
        past.s3.put_object(Bucket=past.settings.results_bucket, Key=key, Body=b"x")
        finish(past, job_id, result_key=key)
        link = urlsplit(get(old_client, f"/result/{job_id}")[1]["result_link"])
    now = make_ctx(stack_env)
    with Client(create_app(now)) as client:
        resp = client.http.get(f"{link.path}?{link.query}")
    assert resp.status_code == 403 and "expired" in json.loads(resp.body)["details"][0]["message"]


def test_a_link_signed_for_longer_than_presign_expires_is_refused(client, ctx):
    job_id = post(client, "/csm", CSM)[1]["id"]
    key = f"results/{job_id}/1.mp3"
    ctx.s3.put_object(Bucket=ctx.settings.results_bucket, Key=key, Body=b"x")
    finish(ctx, job_id, result_key=key)
    far = int(time.time()) + 75 * 365 * 86400  # the year 2100, signed with the right secret
    resp = client.http.get(f"/results/{job_id}?expires={far}&token={ctx.links.token(job_id, far)}")
    assert resp.status_code == 403
    assert "PRESIGN_EXPIRES" in json.loads(resp.body)["details"][0]["message"]


def test_the_webhook_secret_never_signs_result_links(stack_env, caplog):
    """Without RESULT_LINK_SECRET there are no links (and a log line says why): a webhook
    receiver, who holds WEBHOOK_SECRET, cannot mint one to another tenant's result."""
    ctx = Context(Settings(**stack_env, C3_RENDER_API_KEY="key-one", WEBHOOK_SECRET="whsec_shared",
                           PUBLIC_API_URL="http://api.test"))
    with Client(create_app(ctx)) as client:
        job_id = post(client, "/csm", CSM)[1]["id"]
        key = f"results/{job_id}/1.mp3"
        ctx.s3.put_object(Bucket=ctx.settings.results_bucket, Key=key, Body=b"x")
        finish(ctx, job_id, result_key=key)
        assert "result_link" not in get(client, f"/result/{job_id}")[1]
        expires = int(time.time()) + 3600
        forged = ResultLinks("whsec_shared", None, 3600, time.time).token(job_id, expires)
        assert client.http.get(f"/results/{job_id}?expires={expires}&token={forged}").status_code == 404
    assert any(r.msg == "result_links.disabled" or "result_links.disabled" in r.getMessage() for r in caplog.records)


def test_prefer_wait_holds_are_bounded_per_key(stack_env):
    """Over MAX_WAIT_HOLDS_PER_KEY a request answers at once, without Preference-Applied;
    another key still waits; a counter left by dead holds is taken over once stale."""
    now = [time.time()]
    ctx = Context(make_ctx(stack_env, MAX_WAIT_HOLDS_PER_KEY="1").settings, clock=lambda: now[0])
    holds = WaitHolds(ctx.dynamodb, ctx.settings.jobs_table, 1, ctx.clock)
    with Client(create_app(ctx)) as client:
        job_id = post(client, "/csm", CSM)[1]["id"]
        assert holds.acquire(owner_of("key-one"))  # another API process holds key-one's one wait
        resp, view = get(client, f"/status/{job_id}", {**K1, "Prefer": "wait=1"})
        assert resp.status_code == 200 and view["status"] == "queued"
        assert "Preference-Applied" not in resp.headers
        other = post(client, "/csm", CSM, K2)[1]["id"]
        resp, _ = get(client, f"/status/{other}", {**K2, "Prefer": "wait=1"})
        assert resp.headers["Preference-Applied"] == "wait=1"  # key-two is not held back
        holds.release(owner_of("key-one"))
        resp, _ = get(client, f"/status/{job_id}", {**K1, "Prefer": "wait=1"})
        assert resp.headers["Preference-Applied"] == "wait=1"
        assert holds.acquire(owner_of("key-one")) and not holds.acquire(owner_of("key-one"))
        now[0] += STALE_AFTER + 1  # the holder died: its increment is taken over
        assert holds.acquire(owner_of("key-one"))


# -- fair use -------------------------------------------------------------------------------------------
def test_in_flight_cap_per_key_is_429_with_retry_after(stack_env):
    ctx = make_ctx(stack_env, MAX_IN_FLIGHT_PER_KEY="2")
    with Client(create_app(ctx)) as client:
        first = post(client, "/csm", CSM, {**K1, "Idempotency-Key": "a"})[1]["id"]
        post(client, "/csm", CSM)
        resp, body = post(client, "/csm", CSM)
        assert resp.status_code == 429 and resp.headers["Retry-After"] == "30"
        assert body["details"][0]["field"] == "X-C3-RENDER-KEY" and body["limit"] == 2
        # A replay of a job it already has is no new work; another key is not affected.
        assert post(client, "/csm", CSM, {**K1, "Idempotency-Key": "a"})[1]["id"] == first
        assert post(client, "/csm", CSM, K2)[0].status_code == 200
        finish(ctx, first)
        assert post(client, "/csm", CSM)[0].status_code == 200


# -- /health -----------------------------------------------------------------------------------------------
def test_health_without_a_valid_key_answers_liveness_only(client):
    for headers in ({}, {"X-C3-RENDER-KEY": "wrong"}):
        resp, health = get(client, "/health", headers)
        assert resp.status_code == 200 and health == {"status": "ok", "service": "c3-render"}


def test_health_details_are_computed_at_most_once_per_cache_period(stack_env):
    now = [time.time()]
    ctx = Context(make_ctx(stack_env).settings, clock=lambda: now[0])
    with Client(create_app(ctx)) as client:
        assert get(client, "/health")[1]["jobs"]["queued"] == 0
        post(client, "/csm", CSM)
        assert get(client, "/health")[1]["jobs"]["queued"] == 0  # the same snapshot, no new reads
        now[0] += ctx.settings.health_cache_seconds
        assert get(client, "/health")[1]["jobs"]["queued"] == 1


def test_health_counts_queue_jobs_workers_and_gpus_with_a_key(client, ctx):
    ids = [post(client, "/csm", {"text": str(n)})[1]["id"] for n in range(3)]
    ctx.store.claim(ids[0], "w1", 60)
    ctx.beacons.beat("worker-a", force=True)
    resp, health = get(client, "/health")
    assert resp.status_code == 200
    assert health["jobs"] == {"queued": 2, "running": 1, "approximate": False}
    assert health["queue"]["messages"] + health["queue"]["in_flight"] == 3
    assert health["queue"]["oldest_queued_seconds"] >= 0
    assert health["workers"]["alive"] == 1 and health["gpus"]["instances"] == 0
    assert (health["gpus"]["fleet"], health["gpus"]["billed_seconds"]) == ([], 0)
    wait_until(lambda: get(client, "/health")[1]["status"] == "ok")


def test_health_lists_each_gpu_instance_with_its_billed_and_idle_seconds(client, ctx):
    now = time.time()
    busy = ctx.registry.create_intent("w1", expires=int(now) + 3600, workload_type="media:fast", slot=0)
    ctx.registry.update(busy, state="running", workload="wl-a", node="n", launched_at=now - 100, last_used=now - 100,
                        busy=True)
    idle = ctx.registry.create_intent("w2", expires=int(now) + 3600, workload_type="media:fast", slot=1)
    ctx.registry.update(idle, state="running", workload="wl-b", node="n", launched_at=now - 50, last_used=now - 20,
                        busy=False)
    ctx.registry.create_intent("w3", expires=int(now) + 3600, workload_type="media:fast", slot=2)
    gpus = get(client, "/health")[1]["gpus"]
    fleet = {g["slot"]: g for g in gpus["fleet"]}
    assert [fleet[f"gpu-slot-{k}"]["state"] for k in range(3)] == ["running", "running", "launching"]
    assert 100 <= fleet["gpu-slot-0"]["billed_seconds"] < 130 and fleet["gpu-slot-0"]["idle_seconds"] is None
    assert 20 <= fleet["gpu-slot-1"]["idle_seconds"] < 50 <= fleet["gpu-slot-1"]["billed_seconds"] < 80
    assert fleet["gpu-slot-2"]["billed_seconds"] == 0  # no rental known until the launch is recorded
    assert 150 <= gpus["billed_seconds"] < 210 and gpus["idle_seconds"] == [fleet["gpu-slot-1"]["idle_seconds"]]
