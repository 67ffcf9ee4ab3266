"""The profile's in-process policy check (infra/local/iam_guard.py): what IAM evaluates
for a call, and IAM's rule for identity policies."""

from __future__ import annotations

from infra.local.iam_guard import Request, allowed, requests_for

R, A = "us-east-1", "123456789012"
POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["sqs:SendMessage"], "Resource": "arn:aws:sqs:*:*:app-jobs"},
    {"Effect": "Allow", "Action": "dynamodb:Query", "Resource": "arn:aws:dynamodb:*:*:table/app-jobs/index/*"},
    {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::app-results",
     "Condition": {"StringLike": {"s3:prefix": ["results/*"]}}},
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:DeleteObject"], "Resource": "arn:aws:s3:::app-results/results/*"},
    {"Effect": "Deny", "Action": "s3:DeleteObject", "Resource": "arn:aws:s3:::app-results/results/keep/*"},
]}


def check(service: str, operation: str, params: dict) -> list[bool]:
    return [allowed([POLICY], r) for r in requests_for(service, operation, params, R, A)]


def test_resources_are_named_as_iam_names_them():
    assert requests_for("sqs", "SendMessage", {"QueueUrl": "http://h:1/123/app-jobs"}, R, A) == [
        Request("sqs:SendMessage", f"arn:aws:sqs:{R}:{A}:app-jobs")]
    assert requests_for("dynamodb", "Query", {"TableName": "app-jobs", "IndexName": "by-x"}, R, A) == [
        Request("dynamodb:Query", f"arn:aws:dynamodb:{R}:{A}:table/app-jobs/index/by-x")]
    assert requests_for("ssm", "GetParameters", {"Names": ["/a/b", "/a/c"]}, R, A) == [
        Request("ssm:GetParameters", f"arn:aws:ssm:{R}:{A}:parameter/a/b"),
        Request("ssm:GetParameters", f"arn:aws:ssm:{R}:{A}:parameter/a/c")]


def test_actions_resources_conditions_and_an_explicit_deny():
    assert check("sqs", "SendMessage", {"QueueUrl": "http://h/1/app-jobs"}) == [True]
    assert check("sqs", "SendMessage", {"QueueUrl": "http://h/1/app-jobs-dlq"}) == [False]
    assert check("sqs", "GetQueueUrl", {"QueueName": "app-jobs"}) == [False]
    assert check("dynamodb", "Query", {"TableName": "app-jobs", "IndexName": "i"}) == [True]
    assert check("dynamodb", "Query", {"TableName": "app-jobs"}) == [False]  # the table is not an index
    assert check("s3", "ListObjectsV2", {"Bucket": "app-results", "Prefix": "results/j/"}) == [True]
    assert check("s3", "ListObjectsV2", {"Bucket": "app-results", "Prefix": "other/"}) == [False]
    assert check("s3", "ListObjectsV2", {"Bucket": "app-results"}) == [False]  # no prefix: the condition fails
    assert check("s3", "HeadObject", {"Bucket": "app-results", "Key": "results/j/1.mp3"}) == [True]
    assert check("s3", "PutObject", {"Bucket": "app-results", "Key": "results/j/1.mp3"}) == [False]
    assert check("s3", "DeleteObjects", {"Bucket": "app-results", "Delete": {"Objects": [
        {"Key": "results/j/1.mp3"}, {"Key": "results/keep/2.mp3"}]}}) == [True, False]
