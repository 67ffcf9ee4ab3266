"""Create the system's AWS resources idempotently against any endpoint.

    python -m infra.local.stack            # uses AWS_ENDPOINT_URL* and the settings' names

Works against a moto server, LocalStack, DynamoDB Local and AWS itself: boto3 picks
the endpoints from the standard variables.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from botocore.exceptions import ClientError

from chalicelib.fleet.registry import STATE_INDEX
from chalicelib.jobs.store import DAY_INDEX, INFLIGHT_INDEX, OUTBOX_INDEX, OWNER_INDEX
from chalicelib.platform import aws
from chalicelib.platform.settings import Settings, get_settings

# The jobs table's sparse outbox index (see chalicelib/jobs/outbox.py); data.yaml declares the same.
OUTBOX_GSI = {
    "IndexName": OUTBOX_INDEX,
    "KeySchema": [{"AttributeName": "outbox", "KeyType": "HASH"},
                  {"AttributeName": "outbox_at", "KeyType": "RANGE"}],
    "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["outbox_sends", "status", "priority", "created_at"]},
}
# A key's jobs, newest first (GET /jobs), and its jobs in flight (the per-key cap; sparse).
OWNER_GSI = {
    "IndexName": OWNER_INDEX,
    "KeySchema": [{"AttributeName": "owner", "KeyType": "HASH"},
                  {"AttributeName": "created_at", "KeyType": "RANGE"}],
    "Projection": {"ProjectionType": "ALL"},
}
INFLIGHT_GSI = {
    "IndexName": INFLIGHT_INDEX,
    "KeySchema": [{"AttributeName": "inflight_owner", "KeyType": "HASH"},
                  {"AttributeName": "created_at", "KeyType": "RANGE"}],
    "Projection": {"ProjectionType": "KEYS_ONLY"},
}
# Every tenant's jobs, newest first, a UTC day per partition (the operators' GET /jobs).
DAY_GSI = {
    "IndexName": DAY_INDEX,
    "KeySchema": [{"AttributeName": "created_day", "KeyType": "HASH"},
                  {"AttributeName": "created_at", "KeyType": "RANGE"}],
    "Projection": {"ProjectionType": "ALL"},
}
JOBS_INDEXES = [OUTBOX_GSI, OWNER_GSI, INFLIGHT_GSI, DAY_GSI]
JOBS_INDEX_ATTRIBUTES = [{"AttributeName": "outbox", "AttributeType": "S"},
                         {"AttributeName": "outbox_at", "AttributeType": "N"},
                         {"AttributeName": "owner", "AttributeType": "S"},
                         {"AttributeName": "created_at", "AttributeType": "N"},
                         {"AttributeName": "inflight_owner", "AttributeType": "S"},
                         {"AttributeName": "created_day", "AttributeType": "S"}]

# The GPU registry's index on ``state`` (see chalicelib/fleet/registry.py); data.yaml declares the same.
GPU_STATE_GSI = {
    "IndexName": STATE_INDEX,
    "KeySchema": [{"AttributeName": "state", "KeyType": "HASH"}],
    "Projection": {"ProjectionType": "ALL"},
}
GPU_STATE_ATTRIBUTES = [{"AttributeName": "state", "AttributeType": "S"}]

MAX_RECEIVE_COUNT = 5
JOBS_VISIBILITY = 60


def ensure_table(ddb: Any, name: str, ttl_attribute: str = "expires_at",
                 indexes: list[dict[str, Any]] = (),  # type: ignore[assignment]
                 index_attributes: list[dict[str, str]] | None = None) -> None:
    spec: dict[str, Any] = {
        "TableName": name,
        "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}, *(index_attributes or [])],
        "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
        "BillingMode": "PAY_PER_REQUEST",
    }
    if indexes:
        spec["GlobalSecondaryIndexes"] = list(indexes)
    try:
        ddb.create_table(**spec)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUseException":
            raise
    ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100})
    for index in indexes:  # one at a time: DynamoDB adds a single index per update
        keys = {k["AttributeName"] for k in index["KeySchema"]}
        ensure_index(ddb, name, index, [a for a in index_attributes or [] if a["AttributeName"] in keys])
    # DynamoDB (and DynamoDB Local) refuse to enable TTL twice with a ValidationException that
    # also covers real mistakes (moto accepts the repeat): look first, enable only if off.
    ttl = ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    if ttl.get("TimeToLiveStatus") in ("ENABLED", "ENABLING"):
        if ttl.get("AttributeName") != ttl_attribute:
            raise RuntimeError(f"table {name}: TTL is on attribute {ttl.get('AttributeName')!r}, "
                               f"expected {ttl_attribute!r}; fix or disable it in DynamoDB")
        return
    ddb.update_time_to_live(
        TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl_attribute}
    )


def ensure_index(ddb: Any, table: str, index: dict[str, Any],
                 attributes: list[dict[str, str]]) -> None:
    """Add ``index`` to a table created before it existed, and wait until it is active."""
    def status() -> str | None:
        described = ddb.describe_table(TableName=table)["Table"]
        for gsi in described.get("GlobalSecondaryIndexes", []):
            if gsi["IndexName"] == index["IndexName"]:
                return gsi.get("IndexStatus", "ACTIVE")
        return None

    if status() is None:
        ddb.update_table(TableName=table, AttributeDefinitions=attributes,
                         GlobalSecondaryIndexUpdates=[{"Create": index}])
    for _ in range(300):
        if status() == "ACTIVE":
            return
        time.sleep(0.2)
    raise RuntimeError(f"table {table}: index {index['IndexName']} did not become active")


def ensure_queue(sqs: Any, name: str, attributes: dict[str, str] | None = None) -> str:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    if attributes:
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    return url


def queue_arn(sqs: Any, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def ensure_bucket(s3: Any, name: str, region: str) -> None:
    try:
        if region == "us-east-1":
            s3.create_bucket(Bucket=name)
        else:
            s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    s3.put_public_access_block(
        Bucket=name,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True,
            "BlockPublicPolicy": True, "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_encryption(
        Bucket=name,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )


def create_stack(settings: Settings, visibility: int = JOBS_VISIBILITY,
                 max_receive_count: int = MAX_RECEIVE_COUNT) -> dict[str, str]:
    """Create every resource; returns the queue URLs by role."""
    region = settings.aws_region
    ddb, sqs, s3 = (aws.client(s, region) for s in ("dynamodb", "sqs", "s3"))
    ensure_table(ddb, settings.jobs_table, indexes=JOBS_INDEXES, index_attributes=JOBS_INDEX_ATTRIBUTES)
    ensure_table(ddb, settings.gpu_table, indexes=[GPU_STATE_GSI], index_attributes=GPU_STATE_ATTRIBUTES)
    ensure_table(ddb, settings.stats_table)  # the operators' per-minute counters (chalicelib/jobs/stats.py)
    dlq_url = ensure_queue(sqs, settings.jobs_dlq, {"MessageRetentionPeriod": "1209600"})
    redrive = json.dumps({"deadLetterTargetArn": queue_arn(sqs, dlq_url), "maxReceiveCount": str(max_receive_count)})
    # One queue per priority lane (chalicelib/jobs/lanes.py), each redriving to the jobs DLQ.
    lanes = {lane: ensure_queue(sqs, name, {"VisibilityTimeout": str(visibility),
                                            "ReceiveMessageWaitTimeSeconds": "20", "RedrivePolicy": redrive})
             for lane, name in settings.lane_queues.items()}
    jobs_url = lanes["normal"]
    intake_url = ensure_queue(sqs, settings.intake_queue)
    events_url = ensure_queue(sqs, settings.events_queue)
    webhooks_url = ensure_queue(sqs, settings.webhooks_queue, {"VisibilityTimeout": str(visibility)})
    ensure_bucket(s3, settings.results_bucket, region)
    return {"jobs": jobs_url, "jobs_high": lanes["high"], "jobs_low": lanes["low"], "dlq": dlq_url, "intake": intake_url, "events": events_url,
            "webhooks": webhooks_url}


def main() -> int:
    started = time.time()
    settings = get_settings()
    urls = create_stack(settings)
    print(json.dumps({"event": "stack.ready", "seconds": round(time.time() - started, 2),
                      "table": settings.jobs_table, "bucket": settings.results_bucket, **urls}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
