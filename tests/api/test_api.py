"""Every route through Chalice's test client, on a real moto server."""

import json
import time
import uuid

import pytest
import requests
from botocore.exceptions import EndpointConnectionError
from chalice.test import Client

from chalicelib.api.routes import create_app
from chalicelib.context import Context
from chalicelib.jobs.models import JobStatus
from chalicelib.jobs.outbox import Reconciler
from chalicelib.platform.settings import Settings

pytestmark = pytest.mark.integration

K1 = {"X-C3-RENDER-KEY": "key-one", "Content-Type": "application/json"}
K2 = {"Authorization": "Bearer key-two", "Content-Type": "application/json"}
CSM = {"text": "Hello there", "notify_url": "https://hooks.example.com/x"}


@pytest.fixture
def keyed_ctx(stack_env):
    return Context(Settings(**stack_env, C3_RENDER_API_KEY="key-one, key-two"))


@pytest.fixture
def client(keyed_ctx):
    with Client(create_app(keyed_ctx)) as c:
        yield c


def post(client, path, body, headers=K1):
    raw = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.http.post(path, headers=headers, body=raw)


def body_of(resp):
    return json.loads(resp.body)


def test_health_and_openapi(client):
    assert body_of(client.http.get("/")) == {"service": "c3-render", "status": "ok"}
    doc = body_of(client.http.get("/openapi.json"))
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) >= {"/csm", "/whisper", "/portrait", "/analyze", "/status/{id}", "/job/{id}", "/result/{id}"}
    csm = doc["components"]["schemas"]["CsmRequest"]
    assert csm["properties"]["temperature"]["maximum"] == 2.0
    assert csm["additionalProperties"] is False


@pytest.mark.parametrize(
    "path, body",
    [
        ("/csm", CSM),
        ("/whisper", {"audio_url": "https://x.org/a.mp3", "model": "large-v3", "task": "translate"}),
        ("/portrait", {"image_url": "https://x.org/a.jpg", "audio_url": "https://x.org/a.mp3"}),
        ("/analyze", {"image_url": "https://x.org/a.jpg", "max_time": 300}),
    ],
)
def test_submit_writes_record_and_one_message(client, keyed_ctx, path, body):
    resp = post(client, path, body)
    assert resp.status_code == 200, resp.body
    out = body_of(resp)
    assert out["status"] == "queued" and uuid.UUID(out["id"])
    job = keyed_ctx.store.get(out["id"])
    assert job.type.value == path[1:] and job.status is JobStatus.QUEUED
    assert job.owner.startswith("key-sha256:") and "key-one" not in json.dumps(job.to_item())
    assert job.complete_by == pytest.approx(job.created_at + body.get("complete_in", 3600))
    assert job.expires_at > job.created_at + 86400
    messages = keyed_ctx.jobs_queue.receive(wait_seconds=0, visibility=30, max_messages=10)
    assert [m.job_id() for m in messages] == [out["id"]]


def test_status_extras_and_isolation(client):
    job_id = body_of(post(client, "/csm", CSM))["id"]
    status = body_of(client.http.get(f"/status/{job_id}", headers=K1))
    assert status["id"] == job_id and status["status"] == "queued" and status["type"] == "csm"
    assert status["attempts"] == 0 and status["created_at"].endswith("+00:00")
    # Another key sees nothing, and cannot change or read the job.
    assert client.http.get(f"/status/{job_id}", headers=K2).status_code == 404
    assert post(client, f"/job/{job_id}", {"status": "cancelled"}, K2).status_code == 404
    assert client.http.get(f"/result/{job_id}", headers=K2).status_code == 404


@pytest.mark.parametrize(
    "headers, code",
    [({}, 401), ({"X-C3-RENDER-KEY": "nope"}, 401), ({"Authorization": "Bearer nope"}, 401),
     ({"Authorization": "Basic key-one"}, 401), ({"Authorization": "Bearer key-two"}, 200)],
)
def test_auth(client, headers, code):
    resp = post(client, "/csm", CSM, {**headers, "Content-Type": "application/json"})
    assert resp.status_code == code
    if code == 401:
        assert "API key" in body_of(resp)["error"]


def test_open_api_when_no_key_configured(stack_env):
    with Client(create_app(Context(Settings(**stack_env)))) as c:
        resp = c.http.post("/csm", headers={"Content-Type": "application/json"}, body=json.dumps(CSM))
        assert resp.status_code == 200


@pytest.mark.parametrize(
    "body, code, field",
    [
        ("{not json", 400, "body"),
        ("", 400, "body"),
        ("[1, 2]", 422, "body"),
        ({"text": "a", "monologue": ["b"]}, 422, "text"),
        ({"monologue": ["a"], "notify_ur1": "https://x.org"}, 422, "notify_ur1"),
        ({"text": "a", "temperature": 9}, 422, "temperature"),
    ],
)
def test_bad_submissions_name_the_field(client, keyed_ctx, body, code, field):
    resp = post(client, "/csm", body)
    assert resp.status_code == code
    out = body_of(resp)
    assert out["error"] and field in [d["field"] for d in out["details"]]
    assert keyed_ctx.jobs_queue.receive(wait_seconds=0, visibility=30) == []


def test_body_over_limit_is_413(client):
    resp = post(client, "/csm", {"text": "x" * (300 * 1024)})
    assert resp.status_code == 413
    assert body_of(resp)["details"][0]["field"] == "body"


def test_unknown_and_malformed_ids(client):
    assert client.http.get(f"/status/{uuid.uuid4()}", headers=K1).status_code == 404
    resp = client.http.get("/status/not-a-uuid", headers=K1)
    assert resp.status_code == 400 and body_of(resp)["details"] == [{"field": "id", "message": "must be a UUID"}]
    assert client.http.get("/result/zzz", headers=K1).status_code == 400


def test_client_update_and_409_on_final(client, keyed_ctx):
    job_id = body_of(post(client, "/csm", CSM))["id"]
    resp = post(client, f"/job/{job_id}", {"status": "timed_out", "error": "too slow"})
    assert resp.status_code == 200
    assert body_of(resp) == {"message": f"Job {job_id} marked as timed_out"}
    status = body_of(client.http.get(f"/status/{job_id}", headers=K1))
    assert (status["status"], status["error"]) == ("timed_out", "too slow")
    again = post(client, f"/job/{job_id}", {"status": "cancelled"})
    assert again.status_code == 409 and body_of(again)["status"] == "timed_out"


@pytest.mark.parametrize(
    "body, field",
    [({"status": "success"}, "status"), ({"status": "cancelled", "remove": True}, "remove"),
     ({"status": "failed", "remove_data": "yes"}, "remove_data")],
)
def test_client_update_validation(client, body, field):
    job_id = body_of(post(client, "/csm", CSM))["id"]
    resp = post(client, f"/job/{job_id}", body)
    assert resp.status_code == 422 and field in [d["field"] for d in body_of(resp)["details"]]


def test_remove_data_deletes_the_record(client, keyed_ctx):
    job_id = body_of(post(client, "/csm", CSM))["id"]
    assert post(client, f"/job/{job_id}", {"status": "cancelled", "remove_data": True}).status_code == 200
    assert keyed_ctx.store.get(job_id) is None
    assert client.http.get(f"/status/{job_id}", headers=K1).status_code == 404


def test_result_is_409_until_success_then_presigned_afresh(client, keyed_ctx, tmp_path):
    job_id = body_of(post(client, "/csm", CSM))["id"]
    pending = client.http.get(f"/result/{job_id}", headers=K1)
    assert pending.status_code == 409 and body_of(pending)["status"] == "queued"
    # Play the worker's part through the store and S3.
    audio = tmp_path / "a.mp3"
    audio.write_bytes(b"ID3fake-mp3")
    keyed_ctx.results.upload_file(str(audio), f"results/{job_id}.mp3", "audio/mpeg")
    keyed_ctx.store.claim(job_id, "w1", 60)
    keyed_ctx.store.transition(job_id, JobStatus.SUCCESS, worker="w1",
                               fields={"result_key": f"results/{job_id}.mp3"})
    url = body_of(client.http.get(f"/result/{job_id}", headers=K1))["result_url"]
    assert "X-Amz-Expires=604800" in url and f"results/{job_id}.mp3" in url
    fetched = requests.get(url, timeout=5)
    assert fetched.status_code == 200 and fetched.content == b"ID3fake-mp3"
    assert fetched.headers["Content-Type"] == "audio/mpeg"


def test_text_result(client, keyed_ctx):
    job_id = body_of(post(client, "/whisper", {"audio_url": "https://x.org/a.mp3"}))["id"]
    keyed_ctx.store.claim(job_id, "w1", 60)
    keyed_ctx.store.transition(job_id, JobStatus.SUCCESS, worker="w1", fields={"result_text": "hello"})
    assert body_of(client.http.get(f"/result/{job_id}", headers=K1)) == {"text": "hello"}


def test_idempotency_key(client):
    h = {**K1, "Idempotency-Key": "order-42"}
    first = body_of(post(client, "/csm", CSM, h))["id"]
    assert body_of(post(client, "/csm", CSM, h))["id"] == first
    # The same key with another body is a conflict, not a silent replay.
    clash = post(client, "/csm", {**CSM, "text": "other"}, h)
    assert clash.status_code == 409 and body_of(clash)["details"][0]["field"] == "Idempotency-Key"
    # Keys are per API key: the other owner gets its own job.
    other = body_of(post(client, "/csm", CSM, {**K2, "Idempotency-Key": "order-42"}))["id"]
    assert other != first


def test_queue_send_failure_keeps_the_job_and_the_reconciler_sends_it(client, keyed_ctx):
    sqs = keyed_ctx.sqs
    jobs_url = keyed_ctx.jobs_queue.url

    def sqs_down(params, **_):  # every send to the jobs queue fails, as in an SQS outage
        if params.get("QueueUrl") == jobs_url:
            raise EndpointConnectionError(endpoint_url=jobs_url)

    sqs.meta.events.register("before-parameter-build.sqs.SendMessage", sqs_down)
    try:
        h = {**K1, "Idempotency-Key": "send-fails"}
        resp = post(client, "/csm", CSM, h)
        # The record is the commitment: the job is accepted and owed its message.
        assert resp.status_code == 200
        out = body_of(resp)
        job = keyed_ctx.store.get(out["id"])
        assert (job.status, job.outbox) == (JobStatus.QUEUED, "dispatch")
        # A retry with the same key while SQS is still down finds the same queued job.
        again = post(client, "/csm", CSM, h)
        assert again.status_code == 200 and body_of(again) == out
        assert sqs.receive_message(QueueUrl=jobs_url, WaitTimeSeconds=0).get("Messages", []) == []
    finally:
        sqs.meta.events.unregister("before-parameter-build.sqs.SendMessage", sqs_down)  # SQS is back
    later = Context(keyed_ctx.settings, clock=lambda: time.time() + keyed_ctx.settings.outbox_grace + 1)
    reconciler = Reconciler(later.store, keyed_ctx.outbox, later.clock, 30, 900)
    assert reconciler.run_once().resent["dispatch"] == 1
    got = sqs.receive_message(QueueUrl=jobs_url, WaitTimeSeconds=1)["Messages"]
    assert [json.loads(m["Body"])["id"] for m in got] == [out["id"]]
    # Re-sent once, then postponed: the next pass sends nothing.
    assert reconciler.run_once().resent["dispatch"] == 0
    assert keyed_ctx.store.get(out["id"]).outbox_sends == 1


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/csm", {"text": "a", "notify_url": "http://127.0.0.1/x"}, "notify_url"),
        ("/analyze", {"image_url": "http://0x7f000001/a.jpg"}, "image_url"),
        ("/portrait", {"image_url": "https://x.org/a.jpg", "audio_url": "http://[::1]/a.wav"}, "audio_url"),
        ("/csm", {"text": "a", "voice": "clone", "reference_text": "r",
                  "reference_audio_url": "http://169.254.169.254/latest"}, "reference_audio_url"),
    ],
)
def test_literal_private_urls_are_422_outside_local_mode(client, keyed_ctx, private_urls, path, body, field):
    private_urls(False)
    resp = post(client, path, body)
    assert resp.status_code == 422, resp.body
    detail = body_of(resp)["details"][0]
    assert detail["field"] == field and "must not point at a non-public address" in detail["message"]
    assert keyed_ctx.jobs_queue.receive(wait_seconds=0, visibility=30) == []
    private_urls(True)
    assert post(client, path, body).status_code == 200


@pytest.mark.parametrize("path", ["/csm", "/whisper", "/portrait", "/analyze", "/job/0b6e2f9c-4e8a-4c39-9a43-6f4d6c1d2e11"])
def test_deep_nesting_is_400_on_every_json_route(client, path):
    resp = post(client, path, "[" * 1000 + "]" * 1000)
    assert resp.status_code == 400, resp.body
    assert body_of(resp)["details"] == [{"field": "body", "message": "must not nest deeper than 32 levels"}]


def test_nesting_limit_counts_structure_not_strings(client):
    at_limit = '{"text": "a", "x": ' + "[" * 31 + "]" * 31 + "}"
    resp = post(client, "/csm", at_limit)
    assert resp.status_code == 422 and body_of(resp)["details"][0]["field"] == "x"  # parsed, then validated
    assert post(client, "/csm", '{"text": "a", "x": ' + "[" * 32 + "]" * 32 + "}").status_code == 400
    brackets_in_text = {"text": "[{" * 500 + '\\"]' + "}]" * 500}
    assert post(client, "/csm", brackets_in_text).status_code == 200


@pytest.mark.parametrize("method, path, allowed", [
    ("GET", "/csm", "POST"), ("PUT", "/job/{id}", "POST"), ("DELETE", "/status/{id}", "GET"),
])
def test_wrong_method_is_405_in_our_error_format(client, method, path, allowed):
    resp = client.http.request(method, path.format(id=uuid.uuid4()), headers=K1, body=b"{}")
    assert resp.status_code == 405
    out = body_of(resp)
    assert set(out) == {"error", "details"} and "Unsupported method" in out["error"]
    assert out["details"] == [{"field": "method", "message": f"must be one of: {allowed}"}]


def test_wrong_content_type_is_415_in_our_error_format(client):
    resp = post(client, "/csm", CSM, {**K1, "Content-Type": "text/plain"})
    assert resp.status_code == 415
    out = body_of(resp)
    assert set(out) == {"error", "details"} and "text/plain" in out["error"]
    assert out["details"] == [{"field": "Content-Type", "message": "must be one of: application/json"}]


def test_remove_data_of_a_finished_job_deletes_record_and_every_result_object(client, keyed_ctx, tmp_path):
    job_id = body_of(post(client, "/csm", CSM))["id"]
    other_id = body_of(post(client, "/csm", CSM))["id"]
    audio = tmp_path / "a.mp3"
    audio.write_bytes(b"ID3fake-mp3")
    keys = [f"results/{job_id}.mp3", f"results/{job_id}/1.mp3", f"results/{job_id}/2.mp3"]
    for key in [*keys, f"results/{other_id}/1.mp3"]:
        keyed_ctx.results.upload_file(str(audio), key, "audio/mpeg")
    keyed_ctx.store.claim(job_id, "w1", 60)
    keyed_ctx.store.transition(job_id, JobStatus.SUCCESS, worker="w1", fields={"result_key": keys[-1]})

    refused = post(client, f"/job/{job_id}", {"status": "cancelled"})
    assert refused.status_code == 409 and body_of(refused)["status"] == "success"
    resp = post(client, f"/job/{job_id}", {"status": "cancelled", "remove_data": True})
    assert resp.status_code == 200, resp.body
    assert body_of(resp) == {"message": f"Job {job_id} was already success; its data was removed"}
    assert client.http.get(f"/status/{job_id}", headers=K1).status_code == 404
    listed = keyed_ctx.s3.list_objects_v2(Bucket=keyed_ctx.results.bucket, Prefix="results/")
    assert [o["Key"] for o in listed.get("Contents", [])] == [f"results/{other_id}/1.mp3"]
    # Gone is gone: a second removal finds no job.
    assert post(client, f"/job/{job_id}", {"status": "cancelled", "remove_data": True}).status_code == 404
