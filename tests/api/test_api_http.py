"""The API over a real socket: `chalice local` serving app.py, driven with requests."""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from chalicelib.context import Context
from chalicelib.platform.settings import Settings
from infra.local.stack import create_stack
from tests.conftest import resource_env
from tests.support import procs

pytestmark = pytest.mark.integration

KEY = {"X-C3-RENDER-KEY": "sock-key"}


@pytest.fixture(scope="module")
def api(aws_endpoints, tmp_path_factory):
    """One `chalice local` for the module, on its own freshly created resources."""
    env = {**resource_env(f"h{uuid.uuid4().hex[:12]}"), "C3_RENDER_API_KEY": "sock-key"}
    create_stack(Settings(**env))
    port = procs.free_port()
    proc = procs.start_api(port, env, tmp_path_factory.mktemp("api") / "api.log")
    yield f"http://127.0.0.1:{port}", Context(Settings(**env))
    procs.stop(proc)


def test_full_route_set_over_http(api):
    base, ctx = api
    assert requests.get(f"{base}/", timeout=5).json()["status"] == "ok"
    assert requests.get(f"{base}/openapi.json", timeout=5).json()["openapi"] == "3.1.0"
    resp = requests.post(f"{base}/csm", json={"text": "over the wire"}, headers=KEY, timeout=5)
    assert resp.status_code == 200
    job_id = resp.json()["id"]
    # The record is in DynamoDB and the message on SQS, both seen through boto3.
    assert ctx.store.get(job_id).params["text"] == "over the wire"
    assert [m.job_id() for m in ctx.jobs_queue.receive(wait_seconds=1, visibility=30)] == [job_id]
    assert requests.get(f"{base}/status/{job_id}", headers=KEY, timeout=5).json()["status"] == "queued"
    assert requests.get(f"{base}/result/{job_id}", headers=KEY, timeout=5).status_code == 409
    upd = requests.post(f"{base}/job/{job_id}", json={"status": "cancelled"}, headers=KEY, timeout=5)
    assert upd.json() == {"message": f"Job {job_id} marked as cancelled"}
    assert requests.post(f"{base}/job/{job_id}", json={"status": "failed"}, headers=KEY, timeout=5).status_code == 409


@pytest.mark.parametrize(
    "method, path, kwargs, code",
    [
        ("post", "/csm", {"data": "{oops", "headers": {**KEY, "Content-Type": "application/json"}}, 400),
        ("post", "/csm", {"json": {"text": "a", "voice": "clone"}, "headers": KEY}, 422),
        ("post", "/whisper", {"json": {"audio_url": "x"}, "headers": KEY}, 422),
        ("post", "/csm", {"json": {"text": "a"}}, 401),
        ("post", "/csm", {"json": {"text": "a" * 400_000}, "headers": KEY}, 413),
        ("get", "/status/0b6e2f9c-4e8a-4c39-9a43-6f4d6c1d2e11", {"headers": KEY}, 404),
        ("get", "/status/123", {"headers": KEY}, 400),
    ],
)
def test_bad_input_over_http_is_a_clear_4xx(api, method, path, kwargs, code):
    base, _ = api
    resp = getattr(requests, method)(f"{base}{path}", timeout=5, **kwargs)
    assert resp.status_code == code
    body = resp.json()
    assert isinstance(body["error"], str) and body["error"]
    if code in (400, 413, 422):
        assert body["details"][0]["field"]


@pytest.mark.parametrize(
    "method, path, kwargs, code, detail",
    [
        ("post", "/csm", {"data": "[" * 1000 + "]" * 1000, "headers": {**KEY, "Content-Type": "application/json"}},
         400, {"field": "body", "message": "must not nest deeper than 32 levels"}),
        ("get", "/csm", {"headers": KEY}, 405, {"field": "method", "message": "must be one of: POST"}),
        ("delete", "/status/0b6e2f9c-4e8a-4c39-9a43-6f4d6c1d2e11", {"headers": KEY}, 405, {"field": "method", "message": "must be one of: GET"}),
        ("post", "/csm", {"data": "text=hi", "headers": {**KEY, "Content-Type": "application/x-www-form-urlencoded"}},
         415, {"field": "Content-Type", "message": "must be one of: application/json"}),
    ],
)
def test_rejections_chalice_makes_answer_in_our_format_over_http(api, method, path, kwargs, code, detail):
    base, _ = api
    resp = getattr(requests, method)(f"{base}{path}", timeout=5, **kwargs)
    assert resp.status_code == code
    assert resp.headers["Content-Type"] == "application/json"
    body = resp.json()
    assert set(body) == {"error", "details"} and body["details"] == [detail]


@pytest.mark.parametrize("names", [("X-C3-RENDER-KEY", "X-C3-RENDER-KEY"), ("X-C3-RENDER-KEY", "x-c3-render-key")])
def test_a_repeated_key_header_is_refused_over_http(api, names):
    """Two X-C3-RENDER-KEY headers: 400 naming it, whichever copy is the good key."""
    import http.client
    from urllib.parse import urlsplit

    base, ctx = api
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
    body = json.dumps({"text": "twice"}).encode()
    conn.putrequest("POST", "/csm")
    conn.putheader(names[0], "sock-key")
    conn.putheader(names[1], "other-key")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    conn.close()
    assert resp.status == 400
    assert answer["details"] == [{"field": "X-C3-RENDER-KEY", "message": "must be sent at most once"}]
    listed = requests.get(f"{base}/jobs", headers=KEY, timeout=5).json()["jobs"]
    assert "twice" not in [ctx.store.get(j["id"]).params.get("text") for j in listed]
