"""``make deploy`` / ``make destroy``: the system into an AWS account, or its data plane
into an emulator.

    python -m infra.aws.deploy deploy  --stage prod [--param Name=value ...]
    python -m infra.aws.deploy destroy --stage prod [--purge-secrets]

The target follows the environment, like every boto3 call in the project:
- AWS (no endpoint variable set): the data stack (data.yaml) and the app stack
  (Chalice's SAM template merged with app.yaml) through CloudFormation, the secrets
  into SSM Parameter Store, the worker image into the stage's ECR repository.
- an emulator (AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_<SERVICE> set: LocalStack, moto):
  the data plane, applied from data.yaml through the service APIs (emulator.py),
  and the app stack's alarms, alarm topic and dashboard from app.yaml the same way
  (monitoring.py); resources the endpoint lacks are reported as skipped. The API, the
  queue Lambdas and the ECS worker need AWS; locally ``make run`` plays their part.

Everything that can be missing (parameters, secrets, Docker, a network) is checked
before anything is created, and reported together, naming how to supply it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import boto3
import yaml
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from chalicelib.platform.aws import client_config

from .cloudformation import DeployError, delete_stack, deploy_stack, stack_outputs, stack_status
from .emulator import Applier, Report, Unsupported, empty_bucket
from .image import ImageError, build_and_push, docker_available
from .monitoring import HANDLERS as MONITORING_HANDLERS
from .monitoring import monitoring_template
from .ssm_secrets import plan_secrets, purge_secrets, secrets_path, store_secrets
from .template import (
    APP_TEMPLATE,
    DATA_TEMPLATE,
    ParameterError,
    env_name,
    load_template,
    parse_params,
    resolve_parameters,
)

ROOT = Path(__file__).resolve().parents[2]
CHALICE_CONFIG = ROOT / ".chalice" / "config.json"
APP_CAPABILITIES = ("CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND")
# data.yaml outputs -> the settings' environment variables, for pointing the app at them.
OUTPUT_ENV = {
    "JobsTableName": "JOBS_TABLE", "GpuTableName": "GPU_TABLE", "StatsTableName": "STATS_TABLE", "JobsQueueName": "JOBS_QUEUE",
    "JobsHighQueueName": "JOBS_QUEUE_HIGH", "JobsLowQueueName": "JOBS_QUEUE_LOW",
    "JobsDeadLetterQueueName": "JOBS_DLQ", "IntakeQueueName": "INTAKE_QUEUE",
    "EventsQueueName": "EVENTS_QUEUE", "ResultsBucketName": "RESULTS_BUCKET",
}
Printer = Callable[[str], None]


class DeploySettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    poll_seconds: float = Field(5.0, gt=0, validation_alias="DEPLOY_POLL_SECONDS")
    build_dir: Path = Field(ROOT / ".run" / "deploy", validation_alias="DEPLOY_BUILD_DIR")


def endpoint_variables(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items()
            if v and (k == "AWS_ENDPOINT_URL" or k.startswith("AWS_ENDPOINT_URL_"))}


def stack_names(stage: str) -> tuple[str, str]:
    return f"c3-render-{stage}-data", f"c3-render-{stage}-app"


class Target:
    """Clients for one region, created on first use.

    With ``emulator_only`` (endpoint variables set), a service that no endpoint
    variable covers is refused instead of silently reaching real AWS: with only
    AWS_ENDPOINT_URL_SQS/_S3/_DYNAMODB set, an ECR call would otherwise create a
    real repository in whatever account the credentials belong to."""

    def __init__(self, session: boto3.session.Session, environ: Mapping[str, str] | None = None):
        if not session.region_name:
            raise ParameterError("no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION, or a profile's region)")
        self.session = session
        self.region = session.region_name
        self.endpoints = endpoint_variables(environ or {})
        self._clients: dict[str, Any] = {}

    def emulated(self, service: str) -> bool:
        return "AWS_ENDPOINT_URL" in self.endpoints or f"AWS_ENDPOINT_URL_{service.upper()}" in self.endpoints

    def client(self, service: str) -> Any:
        if self.endpoints and not self.emulated(service):
            raise Unsupported(f"no emulator endpoint for {service} (AWS_ENDPOINT_URL_{service.upper()} "
                              "is not set); not sent to AWS")
        if service not in self._clients:
            self._clients[service] = self.session.client(service, config=client_config(service))
        return self._clients[service]

    def account(self, fallback: str | None = None) -> str:
        try:
            return self.client("sts").get_caller_identity()["Account"]
        except (ClientError, BotoCoreError, Unsupported):
            if fallback is None:
                raise
            return fallback


# --- emulator: the data plane (and the app stack's monitoring) through the service APIs ----
def emulator_plan(target: Target, given: Mapping[str, str], environ: Mapping[str, str]
                  ) -> list[tuple[Applier, dict[str, Any], dict[str, str]]]:
    """(applier, template, parameters): data.yaml, then app.yaml's alarms, topic and dashboard.
    Raises ParameterError listing the problems of both."""
    data = load_template(DATA_TEMPLATE)
    monitoring = monitoring_template(load_template(APP_TEMPLATE))
    problems: list[str] = []
    resolved: list[dict[str, str]] = []
    # Stage is both templates': a missing one is reported once (an invalid one, once too).
    shared = {} if given.get("Stage") or environ.get(env_name("Stage")) else {"Stage": "unset"}
    for template, params in ((data, given), (monitoring, {**shared, **given})):
        try:
            resolved.append(resolve_parameters(template, params, environ))
        except ParameterError as exc:
            problems += [line for line in str(exc).splitlines() if line not in problems]
    if problems:
        raise ParameterError("\n".join(problems))
    data_params, monitoring_params = resolved
    stage = data_params["Stage"]
    account = target.account(fallback="000000000000")
    data_stack, app_stack = stack_names(stage)
    return [(Applier(target.client, target.region, account, data_stack), data, data_params),
            (Applier(target.client, target.region, account, app_stack, handlers=MONITORING_HANDLERS),
             monitoring, monitoring_params)]


def deploy_emulator(target: Target, given: Mapping[str, str], environ: Mapping[str, str],
                    out: Printer) -> Report:
    report = Report()
    for applier, template, params in emulator_plan(target, given, environ):
        part = applier.apply(template, params)
        report.outcomes += part.outcomes
        report.outputs.update(part.outputs)
    for o in report.outcomes:
        out(f"  {o.logical_id} ({o.type}): {o.status} {o.detail}".rstrip())
    out("Point the system at it with:")
    for output, variable in OUTPUT_ENV.items():
        if output in report.outputs:
            out(f"  {variable}={report.outputs[output]}")
    out("The API, the DLQ/intake Lambdas and the ECS worker are AWS-only; locally `make run` "
        "runs them (chalice local, the Lambda poller, worker processes).")
    return report


def destroy_emulator(target: Target, given: Mapping[str, str], environ: Mapping[str, str],
                     out: Printer) -> Report:
    report = Report()
    for applier, template, params in reversed(emulator_plan(target, given, environ)):
        report.outcomes += applier.remove(template, params).outcomes
    for o in report.outcomes:
        out(f"  {o.logical_id} ({o.type}): {o.status} {o.detail}".rstrip())
    return report


# --- AWS: CloudFormation ------------------------------------------------------------------
def check_stage_config(stage: str) -> None:
    config = json.loads(CHALICE_CONFIG.read_text())
    if stage not in config.get("stages", {}):
        raise ParameterError(f"stage {stage!r} has no entry in .chalice/config.json: add one "
                             "(copy the prod stage) and a .chalice/policy-<stage>.json")
    gateway_stage = config["stages"][stage].get("api_gateway_stage", "api")
    if gateway_stage != stage:
        raise ParameterError(f"stage {stage!r}: api_gateway_stage is {gateway_stage!r} in .chalice/config.json; "
                             "it must equal the stage (app.yaml builds PUBLIC_API_URL from it)")
    policy = config["stages"][stage].get("iam_policy_file")
    if not policy or not (CHALICE_CONFIG.parent / policy).exists():
        raise ParameterError(f"stage {stage!r}: .chalice/{policy or 'policy-<stage>.json'} is missing")


def default_network(ec2: Any) -> dict[str, str]:
    """The account's default VPC and its default subnets, if it has them."""
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        return {}
    vpc = vpcs[0]["VpcId"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]},
                                            {"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    return {"VpcId": vpc, "SubnetIds": ",".join(s["SubnetId"] for s in subnets)} if subnets else {}


def preflight(target: Target, given: dict[str, str], environ: Mapping[str, str]
              ) -> tuple[dict[str, str], dict[str, str], dict[str, str], bool]:
    """Resolve everything before creating anything: (data params, app params, secrets to
    write, whether the worker image must be built). Raises ParameterError listing all problems."""
    data_params = resolve_parameters(load_template(DATA_TEMPLATE), given, environ)
    stage = data_params["Stage"]
    check_stage_config(stage)
    problems: list[str] = []
    writes, secret_problems = plan_secrets(target.client("ssm"), stage, environ)
    problems += secret_problems
    app_given = {**given, "Stage": stage}
    if not any(app_given.get(k) or environ.get(env_name(k)) for k in ("VpcId", "SubnetIds")):
        app_given.update(default_network(target.client("ec2")))
    build = not (app_given.get("WorkerImage") or environ.get(env_name("WorkerImage")))
    if build:
        why = docker_available()
        if why:
            problems.append(f"missing template parameter WorkerImage (worker container image URI): pass "
                            f"--param WorkerImage=<uri> or set WORKER_IMAGE, or deploy where Docker "
                            f"works so worker_runtime/Dockerfile is built and pushed ({why})")
        app_given["WorkerImage"] = "to-be-built"
    try:
        app_params = resolve_parameters(load_template(APP_TEMPLATE), app_given, environ)
    except ParameterError as exc:
        problems += str(exc).splitlines()
        app_params = {}
    if problems:
        raise ParameterError("\n".join(problems))
    return data_params, app_params, writes, build


def package_app(stage: str, region: str, s3: Any, bucket: str, build_dir: Path, out: Printer) -> str:
    """``chalice package`` merged with app.yaml; code and template uploaded; returns the URL."""
    outdir = build_dir / stage
    out(f"packaging the API with chalice (stage {stage}) into {outdir}")
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from chalice.cli import main; sys.exit(main())",
         "package", "--stage", stage, "--merge-template", str(APP_TEMPLATE), str(outdir)],
        cwd=ROOT, env={**os.environ, "AWS_DEFAULT_REGION": region}, capture_output=True, text=True)
    if result.returncode != 0:
        raise DeployError(f"chalice package failed:\n{result.stdout}{result.stderr}")
    template = yaml.safe_load((outdir / "sam.yaml").read_text())
    code = (outdir / "deployment.zip").read_bytes()
    code_key = f"lambda/{hashlib.sha256(code).hexdigest()}.zip"
    s3.put_object(Bucket=bucket, Key=code_key, Body=code)
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = {"Bucket": bucket, "Key": code_key}
    body = json.dumps(template, indent=1, sort_keys=True).encode()
    template_key = f"templates/app-{hashlib.sha256(body).hexdigest()[:16]}.json"
    s3.put_object(Bucket=bucket, Key=template_key, Body=body)
    return f"https://{bucket}.s3.{region}.amazonaws.com/{template_key}"


def deploy_aws(target: Target, given: dict[str, str], environ: Mapping[str, str],
               settings: DeploySettings, out: Printer) -> dict[str, str]:
    data_params, app_params, secret_writes, build = preflight(target, given, environ)
    stage = data_params["Stage"]
    data_stack, app_stack = stack_names(stage)
    cfn = target.client("cloudformation")
    data = deploy_stack(cfn, data_stack, data_params, body=DATA_TEMPLATE.read_text(),
                        poll=settings.poll_seconds, out=out)
    for name in store_secrets(target.client("ssm"), stage, secret_writes):
        out(f"stored secret {name} (SecureString)")
    if build:
        app_params["WorkerImage"] = build_and_push(target.client("ecr"), data["WorkerRepositoryUri"], out)
    url = package_app(stage, target.region, target.client("s3"), data["ArtifactsBucketName"],
                      settings.build_dir, out)
    app = deploy_stack(cfn, app_stack, app_params, url=url, capabilities=APP_CAPABILITIES,
                       poll=settings.poll_seconds, out=out)
    out(f"API: {app.get('EndpointURL')}  (send X-C3-RENDER-KEY; keys in SSM {secrets_path(stage)}api-keys, "
        f"operator keys in {secrets_path(stage)}operator-keys)")
    out(f"intake queue: {data['IntakeQueueUrl']}")
    out(f"events queue: {data['EventsQueueUrl']}")
    return {**data, **app}


def destroy_aws(target: Target, given: dict[str, str], environ: Mapping[str, str],
                settings: DeploySettings, purge: bool, out: Printer) -> None:
    stage = resolve_parameters(load_template(DATA_TEMPLATE), given, environ)["Stage"]
    data_stack, app_stack = stack_names(stage)
    cfn = target.client("cloudformation")
    delete_stack(cfn, app_stack, poll=settings.poll_seconds, out=out)
    if stack_status(cfn, data_stack):
        outputs = stack_outputs(cfn, data_stack)
        for key in ("ResultsBucketName", "ArtifactsBucketName"):
            if key in outputs:
                out(f"emptying s3://{outputs[key]}: {empty_bucket(target.client('s3'), outputs[key])} objects")
    delete_stack(cfn, data_stack, poll=settings.poll_seconds, out=out)
    if purge:
        for name in purge_secrets(target.client("ssm"), stage):
            out(f"deleted secret {name}")
    else:
        out(f"secrets under {secrets_path(stage)} were kept (free); --purge-secrets deletes them")


# --- CLI ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None,
         out: Printer = print) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.aws.deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["deploy", "destroy"])
    parser.add_argument("--stage", help="deployment stage (template parameter Stage; or STAGE)")
    parser.add_argument("--param", action="append", default=[], metavar="Name=value",
                        help="a template parameter (also: its UPPER_SNAKE_CASE environment variable)")
    parser.add_argument("--purge-secrets", action="store_true", help="destroy: delete the SSM secrets too")
    args = parser.parse_args(argv)
    env = os.environ if environ is None else environ
    settings = DeploySettings()
    try:
        given = parse_params(args.param)
        if args.stage:
            given["Stage"] = args.stage
        target = Target(boto3.session.Session(region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")),
                        env)
        endpoints = target.endpoints
        if endpoints:
            out(f"{args.action} to an emulator ({', '.join(f'{k}={v}' for k, v in endpoints.items())}): "
                "data plane, alarms and dashboard only")
            (deploy_emulator if args.action == "deploy" else destroy_emulator)(target, given, env, out)
        elif args.action == "deploy":
            deploy_aws(target, given, env, settings, out)
        else:
            destroy_aws(target, given, env, settings, args.purge_secrets, out)
    except ParameterError as exc:
        print(f"{args.action}: cannot start:\n{exc}", file=sys.stderr)
        return 2
    except NoCredentialsError:
        print(f"{args.action}: no AWS credentials: configure them (aws configure, AWS_PROFILE, or "
              "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)", file=sys.stderr)
        return 2
    except (DeployError, ImageError, ClientError, BotoCoreError) as exc:
        print(f"{args.action} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
