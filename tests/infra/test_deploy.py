"""infra/aws: templates validate, the data plane deploys to a moto server and is checked
over the AWS APIs, missing inputs fail clearly, secrets round-trip through SSM."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import boto3
import pytest
from cfnlint.api import lint_file

from chalicelib.context import Context
from chalicelib.jobs.models import JobType
from chalicelib.jobs.service import JobService
from chalicelib.platform import aws
from chalicelib.platform.secrets import MissingSecret, load_secrets
from chalicelib.platform.settings import Settings
from infra.aws import deploy
from infra.aws.cloudformation import delete_stack, deploy_stack, stack_status
from infra.aws.emulator import Resolver
from infra.aws.ssm_secrets import plan_secrets, store_secrets
from infra.aws.template import (
    APP_TEMPLATE,
    DATA_TEMPLATE,
    ParameterError,
    load_template,
    render_app_template,
    resolve_parameters,
)
from tests import conftest
from tests.support import procs

ROOT = Path(__file__).resolve().parents[2]
POLICY = {stage: json.loads((ROOT / ".chalice" / f"policy-{stage}.json").read_text()) for stage in ("dev", "prod")}
REAPER_POLICY = {stage: json.loads((ROOT / ".chalice" / f"policy-{stage}-gpu-reaper.json").read_text())
                 for stage in ("dev", "prod")}


def table_names(ddb) -> list[str]:
    """Every table (list_tables pages at 100, and the session's moto server holds more)."""
    return [n for page in ddb.get_paginator("list_tables").paginate() for n in page["TableNames"]]


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory) -> Iterator[str]:
    """The conftest's moto server; a private one when the suite runs on another profile
    (the deploy path needs moto's CloudFormation, ECR and SSM)."""
    if conftest.PROFILE == "moto":
        yield ""
        return
    port = procs.free_port()
    proc = procs.start_moto(port, tmp_path_factory.mktemp("moto") / "moto.log")
    yield f"http://127.0.0.1:{port}"
    procs.stop(proc)


@pytest.fixture
def moto(aws_endpoints, moto_url, monkeypatch) -> dict[str, str]:
    if moto_url:
        for name in [k for k in os.environ if k.startswith("AWS_ENDPOINT_URL_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
        aws.reset_clients()
    return {"AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"], "AWS_REGION": "us-east-1"}


@pytest.fixture
def stage() -> str:
    return "t" + uuid.uuid4().hex[:8]


def client(service: str):
    return boto3.session.Session(region_name="us-east-1").client(service, config=aws.client_config(service))


def lint(path: Path) -> list[str]:
    """cfn-lint's findings (errors and warnings) for a template file."""
    return [str(m) for m in lint_file(path)]


# --- templates ------------------------------------------------------------------------------
def test_templates_validate_with_cfn_lint(tmp_path):
    assert lint(DATA_TEMPLATE) == []
    app = tmp_path / "app-prod.json"
    app.write_text(json.dumps(render_app_template("prod")))
    assert lint(app) == []  # SAM: cfn-lint expands the transform before checking
    # The linter does catch mistakes (so the two passes above mean something).
    broken = tmp_path / "broken.yaml"
    broken.write_text(DATA_TEMPLATE.read_text().replace("BillingMode: PAY_PER_REQUEST", "BillingMode: FAST", 1))
    assert any("FAST" in finding for finding in lint(broken))


def test_app_template_wiring():
    t = render_app_template("prod")
    res = t["Resources"]
    for function, source in (("Intake", "IntakeSqsEventSource"), ("DeadLetters", "DeadLettersSqsEventSource")):
        props = res[function]["Properties"]["Events"][source]["Properties"]
        assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert props["Queue"]["Fn::Sub"].endswith({"Intake": "-intake", "DeadLetters": "-jobs-dlq"}[function])
    assert res["Intake"]["Properties"]["Handler"] == "app.intake"
    assert res["RestAPI"]["Properties"]["StageName"] == "prod"
    env = t["Globals"]["Function"]["Environment"]["Variables"]
    assert set(env) >= {"JOBS_TABLE", "JOBS_QUEUE", "JOBS_DLQ", "INTAKE_QUEUE", "EVENTS_QUEUE",
                        "RESULTS_BUCKET", "SECRETS_PATH"}
    # Lambda roles: each function exactly its own policy file (autogen off), never a wildcard action.
    for role, name in (("ApiHandlerRole", ""), ("IntakeRole", "-intake"), ("DeadLettersRole", "-dead-letters"),
                       ("WebhooksRole", "-webhooks"), ("ReconcileRole", "-reconcile")):
        [policy] = res[role]["Properties"]["Policies"]
        assert policy["PolicyDocument"] == json.loads((ROOT / ".chalice" / f"policy-prod{name}.json").read_text())
        assert not any(a.endswith("*") for s in policy["PolicyDocument"]["Statement"] for a in _as_list(s["Action"]))
    # The GPU reaper runs every minute whatever the workers do, on a role of its own: the
    # registry (read through its index) and the Comput3 key, which no other Lambda can read.
    reaper = res["GpuReaper"]["Properties"]
    assert reaper["Handler"] == "app.gpu_reaper"
    assert reaper["Events"]["GpuReaperEvent"]["Properties"]["Schedule"] == "rate(1 minute)"
    [policy] = res["GpuReaperRole"]["Properties"]["Policies"]
    assert policy["PolicyDocument"] == REAPER_POLICY["prod"]
    assert "comput3-api-key" in json.dumps(REAPER_POLICY["prod"]) and "comput3-api-key" not in json.dumps(POLICY)
    assert any(r.endswith("-gpus/index/by-state") for s in REAPER_POLICY["prod"]["Statement"]
               for r in _as_list(s["Resource"]))
    # Nothing runs at rest; the service scales from zero on the jobs queue.
    service = res["WorkerService"]["Properties"]
    assert service["DesiredCount"] == 0 and service["LaunchType"] == "FARGATE"
    assert res["WorkerScalableTarget"]["Properties"]["MinCapacity"] == 0
    # Scaling counts every priority lane: the alarms sum the three job queues.
    for name, metrics in (("WorkerScaleOutAlarm", {"ApproximateNumberOfMessagesVisible"}),
                          ("WorkerScaleInAlarm", {"ApproximateNumberOfMessagesVisible",
                                                  "ApproximateNumberOfMessagesNotVisible"})):
        stats = [m["MetricStat"]["Metric"] for m in res[name]["Properties"]["Metrics"] if "MetricStat" in m]
        queues = {d["Value"]["Fn::Sub"] for m in stats for d in m["Dimensions"]}
        assert queues == {"c3-render-${Stage}-jobs", "c3-render-${Stage}-jobs-high", "c3-render-${Stage}-jobs-low"}
        assert {m["MetricName"] for m in stats} == metrics and len(stats) == 3 * len(metrics)
    container = res["WorkerTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    # SIGTERM budget: job grace + webhook drain grace + GPU stop must fit the stop timeout.
    grace_max = t["Parameters"]["ShutdownGrace"]["MaxValue"]
    assert container["StopTimeout"] <= 120 and 2 * grace_max + 30 <= container["StopTimeout"]
    assert container["HealthCheck"]["Command"] == ["CMD", "python", "-m", "worker_runtime.health"]
    assert {s["Name"] for s in container["Secrets"]} == {"C3_API_KEY", "WEBHOOK_SECRET", "RESULT_LINK_SECRET"}
    assert all(":parameter/c3-render/${Stage}/" in s["ValueFrom"]["Fn::Sub"] for s in container["Secrets"])
    # Secrets are never template parameters.
    for name, spec in t["Parameters"].items():
        assert not any(w in name.lower() for w in ("key", "secret", "password", "token")), name
    statements = res["WorkerTaskRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    assert all("*" not in action for s in statements for action in s["Action"])
    # The edge's web ACL guards the API's own stage (a rate rule per credential header and per address).
    arn = json.dumps(res["ApiWebAclAssociation"]["Properties"]["ResourceArn"])
    assert '{"Ref": "RestAPI"}' in arn and '{"Ref": "RestAPI.Stage"}' in arn
    rules = {r["Name"]: r["Statement"]["RateBasedStatement"] for r in res["ApiWebAcl"]["Properties"]["Rules"]}
    assert set(rules) == {"per-address", "per-key-header", "per-key-bearer", "per-address-without-key"}


def test_policy_files_name_only_their_stage():
    dev, prod = POLICY["dev"], POLICY["prod"]
    assert [s["Action"] for s in dev["Statement"]] == [s["Action"] for s in prod["Statement"]]
    actions = {a for s in prod["Statement"] for a in s["Action"]}
    assert actions == {  # the API's (each event-triggered function has its own file)
        "logs:CreateLogStream", "logs:PutLogEvents",
        "dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
        "sqs:GetQueueUrl", "sqs:SendMessage", "sqs:GetQueueAttributes", "s3:GetObject", "s3:DeleteObject",
        "ssm:GetParameters", "dynamodb:Query", "s3:ListBucket", "dynamodb:BatchGetItem",
    }
    text = json.dumps(prod)
    assert "c3-render-dev" not in text and "c3-render-prod" in text
    reaper_dev, reaper_prod = REAPER_POLICY["dev"], REAPER_POLICY["prod"]
    assert [s["Action"] for s in reaper_dev["Statement"]] == [s["Action"] for s in reaper_prod["Statement"]]
    assert "c3-render-dev" not in json.dumps(reaper_prod) and "c3-render/dev" not in json.dumps(reaper_prod)
    # The names the data stack creates for a stage are the ones the policy grants.
    data = load_template(DATA_TEMPLATE)
    resolver = Resolver({"Stage": "prod"}, {"AWS::Region": "r", "AWS::AccountId": "1", "AWS::StackName": "s"})
    every = [json.loads(p.read_text()) for p in (ROOT / ".chalice").glob("policy-prod*.json")]
    for logical_id in ("JobsTable", "StatsTable", "JobsQueue", "JobsDeadLetterQueue", "IntakeQueue", "EventsQueue"):
        props = data["Resources"][logical_id]["Properties"]
        name = resolver.resolve(props.get("TableName") or props["QueueName"])
        assert any(r.endswith(f":{name}") or r.endswith(f"/{name}")
                   for doc in every for s in doc["Statement"] for r in _as_list(s["Resource"])), name
    for path in (ROOT / ".chalice").glob("policy-dev*.json"):
        twin = json.loads(Path(str(path).replace("policy-dev", "policy-prod")).read_text())
        assert [s["Action"] for s in json.loads(path.read_text())["Statement"]] == [s["Action"] for s in twin["Statement"]]
        assert "c3-render-dev" not in json.dumps(twin) and "c3-render/dev" not in json.dumps(twin)


def _as_list(value):
    return value if isinstance(value, list) else [value]


# --- the data plane on moto -------------------------------------------------------------------
def test_deploy_data_plane_to_moto_and_use_it(moto, stage, capsys):
    assert deploy.main(["deploy", "--stage", stage, "--param", "ResultRetentionDays=7"]) == 0
    printed = capsys.readouterr().out
    assert "data plane, alarms and dashboard only" in printed and "skipped" not in printed
    prefix = f"c3-render-{stage}"
    ddb, sqs, s3, ecr = client("dynamodb"), client("sqs"), client("s3"), client("ecr")
    for table in (f"{prefix}-jobs", f"{prefix}-gpus"):
        desc = ddb.describe_table(TableName=table)["Table"]
        assert desc["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        assert desc["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
        ttl = ddb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}
    [index] = ddb.describe_table(TableName=f"{prefix}-gpus")["Table"]["GlobalSecondaryIndexes"]
    assert index["IndexName"] == "by-state" and index["KeySchema"] == [{"AttributeName": "state", "KeyType": "HASH"}]

    def attrs(name):
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]

    jobs, dlq = attrs(f"{prefix}-jobs"), attrs(f"{prefix}-jobs-dlq")
    assert json.loads(jobs["RedrivePolicy"]) == {"deadLetterTargetArn": dlq["QueueArn"], "maxReceiveCount": 5}
    assert (jobs["VisibilityTimeout"], jobs["ReceiveMessageWaitTimeSeconds"]) == ("60", "20")
    intake, intake_dlq = attrs(f"{prefix}-intake"), attrs(f"{prefix}-intake-dlq")
    assert json.loads(intake["RedrivePolicy"])["deadLetterTargetArn"] == intake_dlq["QueueArn"]
    assert attrs(f"{prefix}-events")["MessageRetentionPeriod"] == "1209600"
    assert all(attrs(f"{prefix}-{q}")["SqsManagedSseEnabled"] == "true" for q in ("jobs", "intake", "events"))

    account = client("sts").get_caller_identity()["Account"]
    bucket = f"{prefix}-results-{account}"
    rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
                     "RestrictPublicBuckets": True}
    assert s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"] == [
        {"ObjectOwnership": "BucketOwnerEnforced"}]
    assert _expiry_days(s3, bucket) == 7
    [deny] = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    [repo] = ecr.describe_repositories(repositoryNames=[f"{prefix}-worker"])["repositories"]
    assert repo["imageTagMutability"] == "IMMUTABLE" and repo["imageScanningConfiguration"]["scanOnPush"]

    # Re-running is an update: the new retention replaces the old one.
    assert deploy.main(["deploy", "--stage", stage, "--param", "ResultRetentionDays=9"]) == 0
    assert _expiry_days(s3, bucket) == 9

    # The printed variables point the system at what was created: a job goes through.
    env = dict(line.strip().split("=", 1) for line in capsys.readouterr().out.splitlines()
               if line.startswith("  ") and "=" in line and line.strip().split("=", 1)[0].isupper())
    ctx = Context(Settings(**env))
    job, _ = JobService(ctx.store, ctx.outbox, ctx.results, ctx.clock).submit(JobType.CSM, {"text": "hi"}, "me")
    assert [m.job_id() for m in ctx.jobs_queue.receive(wait_seconds=1, visibility=30)] == [job.id]

    assert deploy.main(["destroy", "--stage", stage]) == 0
    assert f"{prefix}-jobs" not in table_names(ddb)
    assert not [u for u in sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", [])]
    assert bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_per_service_endpoints_never_reach_aws(moto, stage, monkeypatch, capsys):
    """LocalStack-style setup: only SQS, S3 and DynamoDB have endpoints. ECR (and STS) have
    none, so they are skipped instead of being sent to real AWS with whatever credentials."""
    url = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    for service in ("SQS", "S3", "DYNAMODB"):
        monkeypatch.setenv(f"AWS_ENDPOINT_URL_{service}", url)
    assert deploy.main(["deploy", "--stage", stage]) == 0
    out = capsys.readouterr().out
    skipped = {line.split()[0]: line.strip() for line in out.splitlines() if " skipped " in line}
    assert skipped.pop("WorkerRepository").startswith("WorkerRepository (AWS::ECR::Repository): skipped no "
                                                      "emulator endpoint for ecr")
    # The app stack's alarms, topic and dashboard need CloudWatch and SNS endpoints too.
    assert skipped.pop("AlarmTopic").endswith("skipped no emulator endpoint for sns (AWS_ENDPOINT_URL_SNS "
                                              "is not set); not sent to AWS")
    assert sorted(skipped) == ["Dashboard", "GpuSpendAlarm", "IntakeDeadLetterAlarm", "JobFailureRatioAlarm",
                               "JobsDeadLetterAlarm",
                               "JobsQueueAgeAlarm", "WebhookGiveUpAlarm", "WorkerHeartbeatAlarm"]
    assert all("depends on skipped" in line for line in skipped.values())
    assert f"RESULTS_BUCKET=c3-render-{stage}-results-000000000000" in out  # no STS: placeholder account
    assert f"c3-render-{stage}-jobs" in table_names(client("dynamodb"))
    assert deploy.main(["destroy", "--stage", stage]) == 0
    assert f"c3-render-{stage}-jobs" not in table_names(client("dynamodb"))


def _expiry_days(s3, bucket: str) -> int:
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert rules["expire-results"]["Filter"] == {"Prefix": "results/"}
    assert rules["abort-incomplete-uploads"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    return rules["expire-results"]["Expiration"]["Days"]


def test_data_stack_through_cloudformation_on_moto(moto, stage):
    """The AWS path's stack code (change set, execution, waiting, deletion) against moto's
    CloudFormation. Moto's change sets create the resources but neither fill the outputs nor
    apply updates, so this checks creation and deletion; settings are checked above."""
    cfn, sqs, ddb = client("cloudformation"), client("sqs"), client("dynamodb")
    name = f"c3-render-{stage}-data"
    lines: list[str] = []
    deploy_stack(cfn, name, {"Stage": stage}, body=DATA_TEMPLATE.read_text(), poll=0.1, out=lines.append)
    assert stack_status(cfn, name) == "CREATE_COMPLETE"
    assert lines[0] == f"{name}: creating (16 changes)" and f"  {name}: CREATE_COMPLETE" in lines
    jobs_url = sqs.get_queue_url(QueueName=f"c3-render-{stage}-jobs")["QueueUrl"]
    dlq_url = sqs.get_queue_url(QueueName=f"c3-render-{stage}-jobs-dlq")["QueueUrl"]
    redrive = json.loads(sqs.get_queue_attributes(QueueUrl=jobs_url, AttributeNames=["All"])["Attributes"]["RedrivePolicy"])
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    assert redrive == {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5}
    assert f"c3-render-{stage}-gpus" in table_names(ddb) and f"c3-render-{stage}-stats" in table_names(ddb)
    delete_stack(cfn, name, poll=0.1, out=lines.append)
    assert stack_status(cfn, name) is None and lines[-1] == f"{name}: deleted"


# --- bad input ---------------------------------------------------------------------------------
def test_missing_or_invalid_parameters_fail_before_anything_is_created(moto, capsys, monkeypatch):
    monkeypatch.delenv("STAGE", raising=False)
    assert deploy.main(["deploy"]) == 2
    err = capsys.readouterr().err
    assert "missing template parameter Stage" in err and "--param Stage=<value> or set STAGE" in err
    assert deploy.main(["deploy", "--stage", "Prod!", "--param", "ResultRetentionDays=0"]) == 2
    err = capsys.readouterr().err
    assert "Stage='Prod!': must match" in err and "ResultRetentionDays=0: must be at least 1" in err
    assert deploy.main(["deploy", "--stage", "x", "--param", "oops"]) == 2
    # The app stack's required inputs, as the AWS preflight resolves them.
    with pytest.raises(ParameterError) as info:
        resolve_parameters(load_template(APP_TEMPLATE), {"Stage": "prod"}, {})
    assert {line.split()[3] for line in str(info.value).splitlines()} == {"WorkerImage", "VpcId", "SubnetIds"}
    assert "set WORKER_IMAGE" in str(info.value)


def test_secrets_from_the_deploy_to_the_lambda(moto, stage):
    ssm = client("ssm")
    writes, problems = plan_secrets(ssm, stage, {})
    assert len(problems) == 2 and "C3_API_KEY" in problems[0] + problems[1]
    writes, problems = plan_secrets(ssm, stage, {"C3_API_KEY": "c3-secret", "C3_RENDER_API_KEY": "k1,k2"})
    assert problems == [] and writes["webhook-secret"].startswith("whsec_")
    # Result links get their own secret, generated like the webhook secret, never derived from it.
    assert len(writes["result-link-secret"]) >= 40 and writes["result-link-secret"] not in writes["webhook-secret"]
    store_secrets(ssm, stage, writes)
    assert plan_secrets(ssm, stage, {}) == ({}, [])  # stored: nothing to ask for or to write again
    param = ssm.get_parameter(Name=f"/c3-render/{stage}/api-keys")["Parameter"]
    assert param["Type"] == "SecureString"
    lambda_env = {"SECRETS_PATH": f"/c3-render/{stage}/", "AWS_LAMBDA_FUNCTION_NAME": "f"}
    assert sorted(load_secrets(lambda_env, ssm)) == ["C3_RENDER_API_KEY", "RESULT_LINK_SECRET", "WEBHOOK_SECRET"]
    assert lambda_env["C3_RENDER_API_KEY"] == "k1,k2" and "C3_API_KEY" not in lambda_env  # not the API's
    assert load_secrets({"SECRETS_PATH": f"/c3-render/{stage}/"}, ssm) == []  # outside Lambda: nothing
    # Each function reads only the parameters its template names (SECRETS_WANTED).
    reaper_env = {"SECRETS_PATH": f"/c3-render/{stage}/", "AWS_LAMBDA_FUNCTION_NAME": "gpu_reaper",
                  "SECRETS_WANTED": "comput3-api-key"}
    assert load_secrets(reaper_env, ssm) == ["C3_API_KEY"]
    assert reaper_env["C3_API_KEY"] == "c3-secret"  # the scheduled reaper's, as the worker gets it from SSM
    hooks_env = {"SECRETS_PATH": f"/c3-render/{stage}/", "AWS_LAMBDA_FUNCTION_NAME": "webhooks",
                 "SECRETS_WANTED": "webhook-secret,result-link-secret"}
    assert sorted(load_secrets(hooks_env, ssm)) == ["RESULT_LINK_SECRET", "WEBHOOK_SECRET"]
    assert "C3_RENDER_API_KEY" not in hooks_env
    assert load_secrets({**lambda_env, "SECRETS_WANTED": ""}, ssm=object()) == []  # none: SSM is not called
    with pytest.raises(MissingSecret, match="unknown parameter.* api-key:"):
        load_secrets({**lambda_env, "SECRETS_WANTED": "api-key"}, ssm)
    for wanted, missing in ((None, "api-keys"), ("comput3-api-key", "comput3-api-key")):
        env = {"SECRETS_PATH": "/c3-render/nosuchstage/", "AWS_LAMBDA_FUNCTION_NAME": "f"}
        if wanted is not None:
            env["SECRETS_WANTED"] = wanted
        with pytest.raises(MissingSecret, match=missing):
            load_secrets(env, ssm)


def test_every_function_is_granted_exactly_the_secrets_it_reads():
    """SECRETS_WANTED per function in the template, and its role's ssm:GetParameters
    resources, name the same parameters (the production-shaped profile runs them)."""
    t = render_app_template("prod")
    shared = t["Globals"]["Function"]["Environment"]["Variables"]
    functions = {name: spec for name, spec in t["Resources"].items() if spec["Type"] == "AWS::Serverless::Function"}
    assert len(functions) == 6
    for name, spec in functions.items():
        env = {**shared, **spec["Properties"].get("Environment", {}).get("Variables", {})}
        wanted = sorted(n for n in env["SECRETS_WANTED"].split(",") if n)
        role = t["Resources"][spec["Properties"]["Role"]["Fn::GetAtt"][0]]["Properties"]
        granted = sorted(resource.rsplit("/", 1)[1] for policy in role["Policies"]
                         for statement in policy["PolicyDocument"]["Statement"]
                         if "ssm:GetParameters" in statement["Action"] for resource in statement["Resource"])
        assert granted == wanted, name


def test_make_targets_run_the_deploy_script():
    for action in ("deploy", "destroy"):
        dry = subprocess.run(["make", "-n", "-W", ".venv/.installed", action, "STAGE=qa"], cwd=ROOT,
                             capture_output=True, text=True)
        assert f"-m infra.aws.deploy {action} --stage qa" in dry.stdout, dry.stdout + dry.stderr


def test_chalice_config_stages():
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    dev, prod = config["stages"]["dev"], config["stages"]["prod"]
    names = {"JOBS_TABLE", "GPU_TABLE", "JOBS_QUEUE", "JOBS_DLQ", "INTAKE_QUEUE", "EVENTS_QUEUE", "RESULTS_BUCKET"}
    # `chalice local` applies the dev stage's variables over the process environment.
    assert not names & set(dev.get("environment_variables", {}))
    assert not names & set(prod.get("environment_variables", {}))  # they come from app.yaml
    assert prod["api_gateway_stage"] == "prod" and prod["autogen_policy"] is False
