"""The SDK (client/c3render) against a stand-in API on 127.0.0.1: what goes on the wire, retries,
waiting, paging, downloads, errors; and webhook verification against the server's own signing."""

from __future__ import annotations

import base64
import time
import uuid
from pathlib import Path

import pytest

from c3render import (
    Client,
    Conflict,
    ConnectionFailed,
    DownloadFailed,
    JobStatus,
    NotFound,
    RateLimited,
    RetryPolicy,
    ServerError,
    Unauthorized,
    ValidationFailed,
    WaitTimeout,
    WebhookVerificationError,
)
from c3render.webhooks import verify
from chalicelib.delivery.webhooks import WebhookSender, sign
from tests.support import procs
from tests.support.fake_render_api import KEY, api_fixture  # noqa: F401  (the `api` fixture)
from tests.support.receiver import Receiver

FAST = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.02)


@pytest.fixture
def pauses() -> list[float]:
    return []


@pytest.fixture
def client(api, pauses):
    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        time.sleep(seconds)

    with Client(api.url, KEY, retry=FAST, sleep=sleep) as c:
        yield c


def test_submission_sends_only_given_fields_the_key_and_an_idempotency_key(api, client):
    job = client.csm(text="Hi", temperature=0.7, webhook_events_filter=["start", "completed"])
    assert job.status is JobStatus.QUEUED and job.type is None
    [seen] = api.requests_to("POST", "/csm")
    assert seen.body == {"text": "Hi", "temperature": 0.7, "webhook_events_filter": ["start", "completed"]}
    assert seen.headers["x-c3-render-key"] == KEY
    assert uuid.UUID(seen.headers["idempotency-key"])  # made per call, so a retried POST is one job
    assert "prefer" not in seen.headers
    again = client.analyze(image_url="http://x/y.jpg", idempotency_key="k1")
    assert client.analyze(image_url="http://x/y.jpg", idempotency_key="k1").id == again.id
    assert client.whisper(audio_url="http://x/a.wav", model="tiny").id != again.id
    assert api.requests_to("POST", "/whisper")[0].body == {"audio_url": "http://x/a.wav", "model": "tiny"}


def test_key_from_the_environment_and_a_wrong_key_is_401(api, monkeypatch):
    monkeypatch.setenv("C3_RENDER_URL", api.url)
    monkeypatch.setenv("C3_RENDER_API_KEY", KEY)
    with Client() as c:
        assert c.portrait(image_url="http://x/p.jpg", audio_url="http://x/a.wav").id
    with Client(api.url, "wrong", retry=FAST) as c, pytest.raises(Unauthorized) as err:
        c.status(str(uuid.uuid4()))
    assert err.value.status == 401


def test_503_then_success_is_retried_with_the_same_idempotency_key(api, client, pauses):
    api.script("POST", "/csm", (503, {"error": "A backing AWS service is unavailable; retry later"}),
               (503, {"error": "again"}))
    job = client.csm(text="Hi")
    posts = api.requests_to("POST", "/csm")
    assert len(posts) == 3 and len(pauses) == 2
    assert len({p.headers["idempotency-key"] for p in posts}) == 1
    assert job.id in api.jobs and len(api.jobs) == 1


def test_retries_are_bounded(api, client):
    api.script("GET", "/status/*", *[(503, {"error": "down"})] * 5)
    with pytest.raises(ServerError) as err:
        client.status(api.add_job().id)
    assert err.value.status == 503 and len(api.requests_to("GET", "/status/*")) == FAST.attempts


def test_429_waits_for_retry_after(api, client):
    job = api.add_job()
    api.script("GET", "/status/*", (429, {"error": "too many jobs in flight"}, {"Retry-After": "1"}))
    assert client.status(job.id).status is JobStatus.SUCCESS
    first, second = api.requests_to("GET", "/status/*")
    assert second.at - first.at >= 1.0


def test_a_retry_after_beyond_the_bound_is_raised_at_once(api, client, pauses):
    api.script("POST", "/csm", (429, {"error": "too many jobs in flight"}, {"Retry-After": "3600"}))
    with pytest.raises(RateLimited) as err:
        client.csm(text="Hi")
    assert err.value.retry_after == 3600 and pauses == [] and len(api.requests_to("POST", "/csm")) == 1


def test_4xx_is_never_retried_and_names_the_field(api, client):
    with pytest.raises(ValidationFailed) as err:
        client.csm(text="a", monologue=["b"])
    assert err.value.status == 422
    assert [(d.field, d.message) for d in err.value.details] == [
        ("text", "provide exactly one of 'text' or 'monologue'")]
    assert "text: provide exactly one" in str(err.value)
    with pytest.raises(NotFound):
        client.status(str(uuid.uuid4()))
    job = api.add_job(plan=[(0, {"status": "failed", "error": "image_url: HTTP 404"})])
    with pytest.raises(Conflict) as conflict:
        client.result(job.id)
    assert conflict.value.job_status == "failed" and conflict.value.job_error == "image_url: HTTP 404"
    assert len(api.requests_to("POST", "/csm")) == 1 and len(api.requests_to("GET", "/result/*")) == 1


def test_a_500_is_retried_for_reads_but_not_for_a_status_change(api, client):
    job = api.add_job(plan=[(0, {"status": "running"})])
    api.script("GET", "/status/*", (500, {"error": "boom"}))
    assert client.status(job.id).status is JobStatus.RUNNING
    api.script("POST", "/job/*", (500, {"error": "boom"}))
    with pytest.raises(ServerError):
        client.cancel(job.id)
    assert len(api.requests_to("POST", "/job/*")) == 1


def test_connection_refused_is_retried_then_raised(pauses):
    port = procs.free_port()
    with Client(f"http://127.0.0.1:{port}", retry=FAST, sleep=pauses.append) as c, \
            pytest.raises(ConnectionFailed) as err:
        c.health()
    assert "ConnectError" in str(err.value) and len(pauses) == FAST.attempts - 1


def test_wait_long_polls_when_the_server_applies_the_preference(api, client, pauses):
    job = api.add_job(plan=[(0.2, {"status": "running"}), (1.5, {"status": "success", "attempts": 1})])
    final = client.wait(job.id, timeout=30, long_poll=1)
    assert final.status is JobStatus.SUCCESS
    polls = api.requests_to("GET", "/status/*")
    assert all(p.headers["prefer"] == "wait=1" for p in polls)
    assert 2 <= len(polls) <= 3 and pauses == []  # the server held each answer; no client sleeps


def test_wait_falls_back_to_polling_with_backoff(api, client, pauses):
    api.honour_wait = False
    job = api.add_job(plan=[(0, {"status": "running", "phase": "render", "queue_position": 2,
                                 "queue_position_approximate": True, "progress": 0.5}),
                            (2.5, {"status": "success", "phases": {"render": "2030-01-01T00:00:01+00:00"}})])
    updates = []
    final = client.wait(job.id, timeout=30, on_update=updates.append)
    assert final.status is JobStatus.SUCCESS and final.phases["render"].year == 2030
    assert len(pauses) >= 3 and pauses == sorted(pauses) and pauses[-1] > pauses[0]
    assert updates[0].phase == "render" and updates[0].progress == 0.5 and updates[0].queue_position == 2


def test_wait_gives_up_at_the_timeout_with_the_last_view(api, client):
    api.honour_wait = False
    job = api.add_job(plan=[(0, {"status": "running"})])
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as err:
        client.wait(job.id, timeout=1.5)
    assert 1.5 <= time.monotonic() - started < 5
    assert err.value.last.status is JobStatus.RUNNING


def test_submit_with_wait_answers_the_full_view(api, client):
    api.plan = [(0.3, {"status": "success", "attempts": 1})]
    job = client.csm(text="Hi", wait=5)
    assert job.status is JobStatus.SUCCESS and job.attempts == 1 and job.max_time == 1200
    assert api.requests_to("POST", "/csm")[0].headers["prefer"] == "wait=5"
    with pytest.raises(ValueError):
        client.csm(text="Hi", wait=26)


def test_iter_jobs_follows_cursors(api, client):
    made = [api.add_job("whisper" if i % 3 else "csm").id for i in range(45)]
    listed = [job.id for job in client.iter_jobs(page_size=20)]
    assert listed == made[::-1]
    assert [r.query.get("cursor") for r in api.requests_to("GET", "/jobs")] == [None, "20", "40"]
    csm_only = list(client.iter_jobs(type="csm", status="success", page_size=7))
    assert {j.type.value for j in csm_only} == {"csm"} and len(csm_only) == 15
    page = client.jobs(limit=5)
    assert len(page.jobs) == 5 and page.next_cursor == "5"
    with pytest.raises(ValidationFailed) as err:
        client.jobs(limit=500)
    assert err.value.details[0].field == "limit"


def test_cancel_retry_and_health(api, client):
    job = api.add_job(plan=[(0, {"status": "running"})])
    assert "cancelled" in client.cancel(job.id, error="no longer needed").message
    assert api.requests_to("POST", "/job/*")[0].body == {"status": "cancelled", "error": "no longer needed"}
    assert client.status(job.id).status is JobStatus.CANCELLED
    with pytest.raises(Conflict):
        client.cancel(job.id)
    api.script("POST", "/jobs/*/retry", (503, {"error": "down"}))
    again = client.retry(job.id)
    assert again.retry_of == job.id and again.status is JobStatus.QUEUED
    first, second = api.requests_to("POST", "/jobs/*/retry")
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert client.health().workers == {"alive": 1}


def test_download_streams_the_file_without_the_api_key(api, client, tmp_path: Path):
    job = api.add_job("portrait")
    path = client.download(job.id, tmp_path / "out.mp4")
    assert path.read_bytes() == api.file_bytes
    [fetch] = api.requests_to("GET", "/files/*")
    assert "x-c3-render-key" not in fetch.headers  # the key never goes to the file host
    named = client.download(job.id, tmp_path)
    assert named == tmp_path / f"{job.id}.mp4" and named.stat().st_size == len(api.file_bytes)
    text_job = api.add_job("whisper")
    assert client.download(text_job.id, tmp_path / "t.txt").read_text() == f"text of {text_job.id}"


def test_a_failed_download_leaves_no_file(api, client, tmp_path: Path):
    api.file_status = 403
    with pytest.raises(DownloadFailed) as err:
        client.download(api.add_job().id, tmp_path / "out.mp3")
    assert err.value.status == 403 and list(tmp_path.iterdir()) == []


# -- webhooks: signed by the server's own code, verified by the client's ----------------------------
SECRET = "whsec_" + base64.b64encode(b"a-shared-secret-of-32-bytes-long").decode()


def test_verify_accepts_what_the_server_sends():
    receiver = Receiver().start()
    try:
        sender = WebhookSender(secret=SECRET, allow_private=True)
        assert sender.attempt(receiver.url, {"id": "j1", "status": "success", "text": "hé"})[0]
        [hook] = receiver.requests
    finally:
        receiver.stop()
    assert verify(SECRET, hook.headers, hook.body) == {"id": "j1", "status": "success", "text": "hé"}


def _signed(secret: str, body: str, ts: int) -> dict[str, str]:
    return {"webhook-id": "msg_1", "webhook-timestamp": str(ts), "webhook-signature": sign(secret, "msg_1", ts, body)}


@pytest.mark.parametrize("secret", [SECRET, "plain-secret"])
def test_verify_good_forged_and_expired(secret):
    body, now = '{"id":"j1","status":"failed","error":"x"}', int(time.time())
    headers = _signed(secret, body, now)
    assert verify(secret, headers, body.encode())["status"] == "failed"
    rotated = {**headers, "webhook-signature": "v1,bm90LXRoaXMtb25l " + headers["webhook-signature"]}
    assert verify(secret, rotated, body)["id"] == "j1"
    with pytest.raises(WebhookVerificationError, match="No webhook-signature matches"):
        verify(secret, headers, body.replace("failed", "success"))
    with pytest.raises(WebhookVerificationError, match="No webhook-signature matches"):
        verify("whsec_" + base64.b64encode(b"another").decode(), headers, body)
    old = _signed(secret, body, now - 600)
    with pytest.raises(WebhookVerificationError, match="600s old"):
        verify(secret, old, body, now=now)
    assert verify(secret, old, body, tolerance=900, now=now)["id"] == "j1"
    with pytest.raises(WebhookVerificationError, match="in the future"):
        verify(secret, _signed(secret, body, now + 600), body, now=now)
    with pytest.raises(WebhookVerificationError, match="Missing webhook-signature"):
        verify(secret, {k: v for k, v in headers.items() if k != "webhook-signature"}, body)
