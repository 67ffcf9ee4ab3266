"""Behaviour where moto is laxer than AWS. Each test holds on both profiles; on the
LocalStack + DynamoDB Local profile (C3_TEST_PROFILE=localstack) it also proves the AWS
rule is met, because there the emulator enforces it (see the README's emulator notes)."""

from __future__ import annotations

import json
import os
from urllib.parse import urlsplit

import pytest
import requests

from chalicelib.context import Context
from chalicelib.platform.settings import Settings
from infra.local.stack import create_stack, ensure_table

pytestmark = pytest.mark.integration


def test_create_stack_twice_is_idempotent(stack_env, ctx):
    """DynamoDB refuses to enable TTL a second time (ValidationException; moto accepts):
    re-running the stack, as `make run` does against an existing LocalStack, must not."""
    first = create_stack(ctx.settings)
    assert create_stack(ctx.settings) == first
    for table in (ctx.settings.jobs_table, ctx.settings.gpu_table):
        ttl = ctx.dynamodb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at")
    attrs = ctx.sqs.get_queue_attributes(QueueUrl=first["jobs"], AttributeNames=["All"])["Attributes"]
    assert attrs["VisibilityTimeout"] == "60"
    assert json.loads(attrs["RedrivePolicy"])["maxReceiveCount"] in (5, "5")


def test_ttl_on_another_attribute_is_reported_not_hidden(stack_env, ctx):
    """A table whose TTL uses another attribute is a real misconfiguration: DynamoDB answers
    it with the same ValidationException as a harmless repeat, so the stack must look first."""
    name = f"{ctx.settings.jobs_table}-other-ttl"
    ensure_table(ctx.dynamodb, name, ttl_attribute="gone_at")
    with pytest.raises(RuntimeError, match=f"table {name}: TTL is on attribute 'gone_at'"):
        ensure_table(ctx.dynamodb, name)


def test_presigned_url_is_signed_for_the_public_endpoint(stack_env, tmp_path):
    """S3_PUBLIC_ENDPOINT: the URL names the public host and its signature is valid for it.
    LocalStack here checks SigV4 presigned URLs (host included) as S3 does; moto checks none."""
    internal = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ["AWS_ENDPOINT_URL"]
    public = internal.replace("127.0.0.1", "localhost")
    ctx = Context(Settings(**stack_env, S3_PUBLIC_ENDPOINT=public))
    path = tmp_path / "r.mp3"
    path.write_bytes(b"ID3 public")
    ctx.results.upload_file(str(path), "results/public.mp3", "audio/mpeg")
    url = ctx.results.presign("results/public.mp3")
    assert urlsplit(url).netloc == urlsplit(public).netloc
    resp = requests.get(url, timeout=5)
    assert resp.status_code == 200 and resp.content == b"ID3 public"
    # A URL whose signature was tampered with is refused where signatures are checked,
    # and never serves another object than the one signed.
    other = requests.get(url.replace("results/public.mp3", "results/other.mp3"), timeout=5)
    assert other.status_code in (403, 404)

