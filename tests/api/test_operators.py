"""Operator keys (C3_RENDER_OPERATOR_KEYS): every tenant's jobs (tenant named), and cancel,
retry and status on any job through the same routes; tenant keys keep seeing only their own.
Chalice's test client over a real moto server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from chalice.test import Client

from chalicelib.api.routes import create_app
from chalicelib.platform.auth import owner_of, tenant_label
from chalicelib.context import Context
from chalicelib.platform.secrets import API_SECRETS
from chalicelib.platform.settings import Settings
from tests.conftest import PROFILE

pytestmark = pytest.mark.integration

T1 = {"X-C3-RENDER-KEY": "tenant-one", "Content-Type": "application/json"}
T2 = {"X-C3-RENDER-KEY": "tenant-two", "Content-Type": "application/json"}
OPS = {"Authorization": "Bearer ops-key", "Content-Type": "application/json"}


@pytest.fixture
def ctx(stack_env):
    return Context(Settings(**stack_env, C3_RENDER_API_KEY="tenant-one,tenant-two", C3_RENDER_OPERATOR_KEYS="ops-key"))


@pytest.fixture
def client(ctx):
    with Client(create_app(ctx)) as c:
        yield c


def call(client, method, path, headers, body=None):
    resp = getattr(client.http, method)(path, headers=headers, **({"body": json.dumps(body)} if body else {}))
    return resp.status_code, json.loads(resp.body) if resp.body else None


def submit(client, headers, text):
    code, out = call(client, "post", "/csm", headers, {"text": text})
    assert code == 200, out
    return out["id"]


def test_an_operator_sees_every_tenants_jobs_and_tenants_only_their_own(client):
    one = [submit(client, T1, f"one {n}") for n in range(3)]
    two = submit(client, T2, "two")
    code, listed = call(client, "get", "/jobs?limit=100", OPS)
    assert code == 200 and listed["scope"] == "all"
    mine = {job["id"]: job for job in listed["jobs"]}
    assert set(one + [two]) <= set(mine)
    assert [j["id"] for j in listed["jobs"]][:4] == [two, *reversed(one)]  # newest first, across tenants
    assert mine[two]["tenant"] == tenant_label(owner_of("tenant-two")) != mine[one[0]]["tenant"]
    assert len(mine[two]["tenant"]) == len("key-sha256:") + 12 and "tenant-two" not in json.dumps(listed)
    # Paged with the cursor, across the same index.
    code, first = call(client, "get", "/jobs?limit=2", OPS)
    code, second = call(client, "get", f"/jobs?limit=2&cursor={first['next_cursor']}", OPS)
    assert [j["id"] for j in first["jobs"] + second["jobs"]] == [two, *reversed(one)]
    # A tenant: its own jobs, no tenant field, no other tenant's.
    code, own = call(client, "get", "/jobs?limit=100", T1)
    assert own["scope"] == "own" and {j["id"] for j in own["jobs"]} == set(one)
    assert all("tenant" not in j for j in own["jobs"])
    assert call(client, "get", f"/status/{two}", T1)[0] == 404
    code, view = call(client, "get", f"/status/{two}", OPS)
    assert code == 200 and view["tenant"] == mine[two]["tenant"] and view["params"]["text"] == "two"


def test_an_operator_cancels_and_retries_a_tenants_job(client, ctx):
    job_id = submit(client, T2, "to cancel")
    assert call(client, "post", f"/job/{job_id}", T1, {"status": "cancelled"})[0] == 404  # another tenant
    code, out = call(client, "post", f"/job/{job_id}", OPS, {"status": "cancelled", "error": "operator: stuck"})
    assert code == 200 and out["message"] == f"Job {job_id} marked as cancelled"
    code, retried = call(client, "post", f"/jobs/{job_id}/retry", OPS)
    assert code == 200 and retried["retry_of"] == job_id
    # The new job is the tenant's, not the operator's.
    assert ctx.store.get(retried["id"]).owner == owner_of("tenant-two")
    assert call(client, "get", f"/status/{retried['id']}", T2)[0] == 200
    assert call(client, "post", f"/jobs/{job_id}/retry", T1)[0] == 404


def test_wrong_keys_are_refused_and_operator_keys_are_stored_like_the_api_keys(client):
    assert call(client, "get", "/jobs", {"X-C3-RENDER-KEY": "nope"})[0] == 401
    assert call(client, "get", "/jobs", {})[0] == 401
    assert API_SECRETS["operator-keys"] == "C3_RENDER_OPERATOR_KEYS"
    for name in ("dev", "prod"):
        policy = json.loads((Path(__file__).resolve().parents[2] / ".chalice" / f"policy-{name}.json").read_text())
        assert any(f"parameter/c3-render/{name}/operator-keys" in r for s in policy["Statement"]
                   for r in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]))


def test_the_day_index_walks_back_to_earlier_days(client, ctx):
    """A job from two days ago is listed after today's, through the empty day between."""
    today = submit(client, T1, "today")
    old = submit(client, T2, "old")
    job = ctx.store.get(old)
    ctx.store.delete(old)
    job.created_at = time.time() - 2 * 86400
    ctx.store.create(job)
    code, listed = call(client, "get", "/jobs?limit=100", OPS)
    ids = [j["id"] for j in listed["jobs"]]
    assert ids.index(today) < ids.index(old)


def test_an_operator_reads_the_last_hours_dead_letters_and_intake_rejections(client, ctx):
    from chalicelib.delivery.dead_letters import fail_dead_letter

    job_id = submit(client, T1, "never processed")
    assert fail_dead_letter(json.dumps({"id": job_id}), 5, ctx.store, ctx.outbox) == "failed"
    assert fail_dead_letter("not json", 5, ctx.store, ctx.outbox) == "malformed"
    app = create_app(ctx)
    intake = app.intake_handler  # the handler make run's poller and the Lambda run
    assert intake.handle(json.dumps({"type": "csm", "params": {"voice": "nobody"}}), "m-1") == "rejected"
    code, seen = call(client, "get", "/incidents", OPS)
    assert code == 200, seen
    letters = seen["dead_letters"]
    assert letters["count"] == 2
    assert [(e["job_id"], e["receive_count"], e["outcome"]) for e in letters["items"]] in (
        [("", 5, "malformed"), (job_id, 5, "failed")], [(job_id, 5, "failed"), ("", 5, "malformed")])
    [rejection] = seen["intake_rejections"]["items"]
    assert rejection["message_id"] == "m-1" and rejection["error"] and "voice" in rejection["fields"]
    assert rejection["at"].endswith("Z")
    code, refused = call(client, "get", "/incidents", T1)
    assert code == 403 and refused["details"][0]["message"] == "must be an operator key"


@pytest.mark.skipif(PROFILE != "moto", reason="SSM is on the moto profile; the LocalStack profile runs SQS, S3 and DynamoDB Local")
def test_operator_keys_go_from_the_deploy_to_ssm_to_the_lambda(aws_endpoints):
    """Stored like the API keys: the deploy writes C3_RENDER_OPERATOR_KEYS as a SecureString
    beside them (optional: nothing is asked for or generated without it), and the Lambda
    copies it into its environment at cold start."""
    import uuid

    import boto3

    from chalicelib.platform import aws
    from chalicelib.platform.secrets import load_secrets
    from infra.aws.ssm_secrets import plan_secrets, store_secrets

    ssm = boto3.session.Session(region_name="us-east-1").client("ssm", config=aws.client_config("ssm"))
    stage = "o" + uuid.uuid4().hex[:8]
    base = {"C3_API_KEY": "c3", "C3_RENDER_API_KEY": "tenant"}
    writes, problems = plan_secrets(ssm, stage, base)
    assert problems == [] and "operator-keys" not in writes  # optional, never generated
    writes, _ = plan_secrets(ssm, stage, {**base, "C3_RENDER_OPERATOR_KEYS": "ops-1,ops-2"})
    assert writes["operator-keys"] == "ops-1,ops-2"
    store_secrets(ssm, stage, writes)
    assert ssm.get_parameter(Name=f"/c3-render/{stage}/operator-keys")["Parameter"]["Type"] == "SecureString"
    env = {"SECRETS_PATH": f"/c3-render/{stage}/", "AWS_LAMBDA_FUNCTION_NAME": "f"}
    assert "C3_RENDER_OPERATOR_KEYS" in load_secrets(env, ssm)
    assert Settings(**env).operator_key_list == ["ops-1", "ops-2"]
