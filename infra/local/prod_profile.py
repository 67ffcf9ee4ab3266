"""The production-shaped local profile: every process the AWS stack runs, as the templates
define it, on a moto server with IAM access control on.

Derived by code, nothing by hand:
- the app stack's template is rendered the way ``chalice package --merge-template
  infra/aws/app.yaml`` renders it (infra/aws/template.py); the data plane is deployed
  from data.yaml and the secrets stored in SSM by the deploy's own code (``make deploy``
  against an emulator);
- each function (the API, every SQS- and schedule-triggered one) and the worker task get
  exactly the environment variables their template gives them (Globals merged with the
  function's own; the task definition's Environment and Secrets), with ``!Ref``,
  ``!GetAtt``, ``!Sub`` and SSM references resolved against the local stack, plus what
  their runtime adds (Lambda: region, function name, credentials; ECS: credentials);
- each role is created on moto from its policy documents and assumed (STS AssumeRole):
  every process runs with its own role's temporary credentials, moto's access control
  on (``/moto-api/reset-auth``, INITIAL_NO_AUTH_ACTION_COUNT), and the in-process policy
  check of infra/local/iam_guard.py on every call;
- the API answers behind the web ACL the template associates with its stage (its WAF
  rate rules, enforced by infra/local/edge.py).

The only values that differ from AWS are where things are (LOCAL_OVERRIDES): the AWS
and Comput3 endpoints, the API stage URL (the local API server), writable paths, and
private addresses allowed (every receiver here is on 127.0.0.1).
"""

from __future__ import annotations

import json
import re
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import boto3
import requests

from chalicelib.platform.aws import client_config
from infra.aws.emulator import Applier, Resolver
from infra.aws.ssm_secrets import plan_secrets, store_secrets
from infra.aws.template import (DATA_TEMPLATE, LOCAL_PARAMETERS, load_template, render_app_template,
                                resolve_parameters)
from infra.local import processes

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's account
API_ID = "localapi00"  # the RestAPI's id in the local stack
# Variables the runtimes set, not the templates.
LAMBDA_RUNTIME = ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_LAMBDA_FUNCTION_NAME")
CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# Where things are locally: the only variables the profile sets beyond the templates.
LOCAL_OVERRIDES = ("AWS_ENDPOINT_URL", "ALLOW_PRIVATE_URLS", "C3_API_URL", "C3_NODE_URL",
                   "C3_COMFYUI_URL", "C3_OLLAMA_URL", "OUTPUT_DIR", "WORKER_HEALTH_FILE")
# Not configuration: the interpreter's own.
PROCESS_BASE = ("PATH", "HOME", "LANG", "TMPDIR", "PYTHONUNBUFFERED", "GRADIO_ANALYTICS_ENABLED")


@dataclass
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None

    def env(self) -> dict[str, str]:
        out = {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        if self.token:
            out["AWS_SESSION_TOKEN"] = self.token
        return out


@dataclass
class Function:
    """One Lambda function of the template."""

    logical_id: str
    handler: str  # app.py attribute (the template's Handler "app.<attr>")
    role: str  # the role's logical id
    env: dict[str, str]  # the template's variables, resolved
    queue: str | None = None  # SQS event source
    every: float | None = None  # schedule, seconds
    reserved_concurrency: int | None = None

    @property
    def function_name(self) -> str:
        return f"c3-render-{STAGE}-app-{self.logical_id}"


@dataclass
class Task:
    """The worker's ECS task: its container's environment and secrets, its roles."""

    env: dict[str, str]
    secrets: dict[str, str]  # variable -> SSM parameter ARN
    role: str
    execution_role: str


STAGE = "prod"
_RATE = re.compile(r"rate\((\d+) (minute|minutes|hour|hours)\)")


def _seconds(expression: str) -> float:
    match = _RATE.fullmatch(expression)
    if not match:
        raise ValueError(f"schedule {expression!r}: only rate() schedules run locally")
    return float(match.group(1)) * (60 if match.group(2).startswith("minute") else 3600)


@dataclass
class Templates:
    """The app stack (rendered and merged) and its parameters, resolved for the local stack."""

    app: dict[str, Any]
    resolver: Resolver
    functions: dict[str, Function] = field(default_factory=dict)
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)  # logical id -> role properties
    task: Task | None = None

    @classmethod
    def load(cls, stage: str = STAGE, parameters: Mapping[str, str] | None = None) -> "Templates":
        app = render_app_template(stage)
        given = {"Stage": stage, **LOCAL_PARAMETERS, **(parameters or {})}
        params = resolve_parameters(app, given, {})
        resolver = Resolver(params, {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
                                     "AWS::StackName": f"c3-render-{stage}-app"})
        resources = app["Resources"]
        for name, spec in resources.items():  # what Ref / GetAtt name in the local stack
            kind = spec["Type"]
            if kind == "AWS::Serverless::Function":
                resolver.values[name] = f"c3-render-{stage}-app-{name}"
            elif kind == "AWS::Serverless::Api":
                resolver.values[name] = API_ID
            elif kind == "AWS::IAM::Role":
                resolver.values[name] = role_name(stage, name)
                resolver.attributes[(name, "Arn")] = f"arn:aws:iam::{ACCOUNT}:role/{role_name(stage, name)}"
            elif kind == "AWS::Logs::LogGroup":
                group = resolver.resolve(spec["Properties"]["LogGroupName"])
                resolver.values[name] = group
                resolver.attributes[(name, "Arn")] = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{group}:*"
        out = cls(app, resolver)
        shared = app.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
        for name, spec in resources.items():
            props = spec.get("Properties", {})
            if spec["Type"] == "AWS::IAM::Role":
                out.roles[name] = resolver.resolve(props)
            if spec["Type"] != "AWS::Serverless::Function":
                continue
            env = {**shared, **props.get("Environment", {}).get("Variables", {})}
            function = Function(name, props["Handler"].split(".", 1)[1], props["Role"]["Fn::GetAtt"][0],
                                {k: str(resolver.resolve(v)) for k, v in env.items()},
                                reserved_concurrency=props.get("ReservedConcurrentExecutions"))
            for event in props.get("Events", {}).values():
                if event["Type"] == "SQS":
                    function.queue = str(resolver.resolve(event["Properties"]["Queue"])).rsplit(":", 1)[-1]
                elif event["Type"] == "Schedule":
                    function.every = _seconds(event["Properties"]["Schedule"])
            out.functions[name] = function
        task = resources["WorkerTaskDefinition"]["Properties"]
        container = task["ContainerDefinitions"][0]
        out.task = Task({e["Name"]: str(resolver.resolve(e["Value"])) for e in container.get("Environment", [])},
                        {s["Name"]: str(resolver.resolve(s["ValueFrom"])) for s in container.get("Secrets", [])},
                        task["TaskRoleArn"]["Fn::GetAtt"][0], task["ExecutionRoleArn"]["Fn::GetAtt"][0])
        return out

    def api_function(self) -> Function:
        return next(f for f in self.functions.values() if f.queue is None and f.every is None)

    def policies(self, role: str) -> list[dict[str, Any]]:
        return [p["PolicyDocument"] for p in self.roles[role].get("Policies", [])]

    def web_acl(self) -> dict[str, Any]:
        """The WAF web ACL in front of the API's stage (enforced locally by infra/local/edge.py)."""
        acl = next(spec for spec in self.app["Resources"].values() if spec["Type"] == "AWS::WAFv2::WebACL")
        return self.resolver.resolve(acl["Properties"])


def role_name(stage: str, logical_id: str) -> str:
    return f"c3-render-{stage}-{logical_id}"


def stage_url(stage_name: str) -> str:
    """The deployed API's stage URL (as Chalice's EndpointURL output writes it)."""
    return f"https://{API_ID}.execute-api.{REGION}.amazonaws.com/{stage_name}"


def localize(env: Mapping[str, str], api_url: str) -> dict[str, str]:
    """The stage URL -> the local API server (the one address rewritten)."""
    pattern = re.compile(rf"https://{API_ID}\.execute-api\.{REGION}\.amazonaws\.com/[A-Za-z0-9_]+/?")
    return {k: pattern.sub(api_url.rstrip("/") + "/", v).rstrip("/") if pattern.match(v) else v
            for k, v in env.items()}


class ProdProfile:
    """Deploys the stack on a moto server (started here with IAM checks) and starts the processes."""

    def __init__(self, work: Path, comput3: Mapping[str, str], stage: str = STAGE):
        self.work = work
        self.stage = stage
        self.comput3 = dict(comput3)
        self.templates = Templates.load(stage)
        self.moto_port = processes.free_port()
        self.moto_url = f"http://127.0.0.1:{self.moto_port}"
        self.api_port = processes.free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.admin: Credentials | None = None
        self.credentials: dict[str, Credentials] = {}
        self.api_keys = ["prod-key-a", "prod-key-b"]
        self.procs: dict[str, Any] = {}
        self.record = work / "iam-calls.jsonl"
        (work / "policies").mkdir(parents=True, exist_ok=True)

    # --- AWS side -----------------------------------------------------------------
    def session(self, creds: Credentials | None = None) -> boto3.session.Session:
        c = creds or self.admin
        assert c is not None
        return boto3.session.Session(c.access_key, c.secret_key, c.token, region_name=REGION)

    def client(self, service: str, creds: Credentials | None = None) -> Any:
        return self.session(creds).client(service, endpoint_url=self.moto_url, config=client_config(service))

    def deploy(self) -> None:
        """moto with auth off: an administrator, the data plane (data.yaml), the secrets
        (the deploy's code), the roles from their policy documents, a session per role;
        then moto's access control on for every later request."""
        self.moto = processes.start_moto(self.moto_port, self.work / "moto.log", iam=True)
        iam = boto3.session.Session("bootstrap", "bootstrap", region_name=REGION).client(
            "iam", endpoint_url=self.moto_url)
        iam.create_user(UserName="deployer")
        iam.put_user_policy(UserName="deployer", PolicyName="admin", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="deployer")["AccessKey"]
        self.admin = Credentials(key["AccessKeyId"], key["SecretAccessKey"])
        data = load_template(DATA_TEMPLATE)
        params = resolve_parameters(data, {"Stage": self.stage}, {})
        applier = Applier(lambda service: self.client(service), REGION, ACCOUNT, f"c3-render-{self.stage}-data")
        report = applier.apply(data, params)
        if report.skipped:
            raise RuntimeError(f"data plane incomplete on moto: {report.skipped}")
        ssm = self.client("ssm")
        writes, problems = plan_secrets(ssm, self.stage, {
            "C3_API_KEY": self.comput3.get("C3_API_KEY", "simulated-local-key"),
            "C3_RENDER_API_KEY": ",".join(self.api_keys)})
        if problems:
            raise RuntimeError("; ".join(problems))
        store_secrets(ssm, self.stage, writes)
        sts = self.client("sts")
        iam = self.client("iam")
        for logical, props in self.templates.roles.items():
            name = role_name(self.stage, logical)
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(props["AssumeRolePolicyDocument"]))
            for policy in props.get("Policies", []):
                iam.put_role_policy(RoleName=name, PolicyName=policy.get("PolicyName", logical),
                                    PolicyDocument=json.dumps(policy["PolicyDocument"]))
            got = sts.assume_role(RoleArn=f"arn:aws:iam::{ACCOUNT}:role/{name}", RoleSessionName=logical,
                                  DurationSeconds=43200)["Credentials"]
            self.credentials[logical] = Credentials(got["AccessKeyId"], got["SecretAccessKey"], got["SessionToken"])
            (self.work / "policies" / f"{logical}.json").write_text(json.dumps(self.templates.policies(logical)))
        requests.post(f"{self.moto_url}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()

    # --- the processes --------------------------------------------------------------
    def base_env(self) -> dict[str, str]:
        import os

        base = {k: os.environ[k] for k in PROCESS_BASE if k in os.environ}
        return {**base, "PYTHONUNBUFFERED": "1", "AWS_ENDPOINT_URL": self.moto_url, "ALLOW_PRIVATE_URLS": "true",
                "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}

    def function_env(self, function: Function) -> dict[str, str]:
        comput3 = {k: v for k, v in self.comput3.items() if k != "C3_API_KEY"}
        return {**self.base_env(), **localize(function.env, self.api_url), **comput3,
                "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
                "AWS_LAMBDA_FUNCTION_NAME": function.function_name,
                **self.credentials[function.role].env()}

    def worker_env(self, n: int = 1) -> dict[str, str]:
        task = self.templates.task
        assert task is not None
        # ECS injects the task's secrets, read with the execution role.
        ssm = self.client("ssm", self.credentials[task.execution_role])
        names = {var: "/" + arn.split(":parameter/", 1)[1] for var, arn in task.secrets.items()}
        got = ssm.get_parameters(Names=list(names.values()), WithDecryption=True)
        values = {p["Name"]: p["Value"] for p in got["Parameters"]}
        missing = [n for n in names.values() if n not in values]
        if missing:
            raise RuntimeError(f"worker secrets missing in SSM: {missing}")
        comput3 = {k: v for k, v in self.comput3.items() if k != "C3_API_KEY"}
        return {**self.base_env(), **localize(task.env, self.api_url),
                **{var: values[name] for var, name in names.items()}, **comput3,
                "OUTPUT_DIR": str(self.work / f"worker-{n}"),
                "WORKER_HEALTH_FILE": str(self.work / f"worker-{n}.health"),
                **self.credentials[task.role].env()}

    def queue_url(self, name: str) -> str:
        """What Lambda's event source mapping knows (the queue itself, not through the role)."""
        return self.client("sqs").get_queue_url(QueueName=name)["QueueUrl"]

    def guarded(self, role: str, module: list[str], policies: Path | None = None,
                record: Path | None = None) -> list[str]:
        return [sys.executable, "-m", "infra.local.iam_guard", "--role", role_name(self.stage, role),
                "--account", ACCOUNT, "--policies", str(policies or self.work / "policies" / f"{role}.json"),
                "--record", str(record or self.record), "--", "-m", *module]

    def start_api(self, port: int, policies: Path | None = None, record: Path | None = None,
                  log_name: str = "api") -> Any:
        """The API function's process on ``port`` (another one: with other policy documents)."""
        api = self.templates.api_function()
        edge = self.work / "edge-acl.json"
        edge.write_text(json.dumps(self.templates.web_acl()))
        return processes.start(
            self.guarded(api.role, ["infra.local.api_server", "--host", "127.0.0.1", "--port", str(port),
                                    "--stage", self.stage, "--edge-acl", str(edge)], policies, record),
            env=self.function_env(api), log_path=self.work / f"{log_name}.log", clean=True)

    def start(self, schedule_every: float = 2.0, workers: int = 1) -> None:
        """The API server, one process per event-triggered function, the worker(s)."""
        api = self.templates.api_function()
        self.procs["api"] = self.start_api(self.api_port)
        for function in self.templates.functions.values():
            if function is api:
                continue
            trigger = (["--queue", function.queue, "--wait", "1", "--queue-url", self.queue_url(function.queue)]
                       if function.queue else ["--every", str(schedule_every)])
            self.procs[function.logical_id] = processes.start(
                self.guarded(function.role, ["infra.local.lambda_poller", "--handler", function.handler, *trigger]),
                env=self.function_env(function), log_path=self.work / f"{function.logical_id}.log", clean=True)
        for n in range(1, workers + 1):
            self.start_worker(n)
        processes.wait_http(f"{self.api_url}/", timeout=90, proc=self.procs["api"])

    def start_worker(self, n: int) -> Any:
        task = self.templates.task
        assert task is not None
        proc = processes.start(self.guarded(task.role, ["worker_runtime"]), env=self.worker_env(n),
                               log_path=self.work / f"worker-{n}.log", clean=True)
        self.procs[f"worker-{n}"] = proc
        return proc

    def stop(self) -> None:
        for name, proc in reversed(list(self.procs.items())):
            processes.stop(proc, timeout=30 if name.startswith("worker") else 10)
        if getattr(self, "moto", None) is not None:
            processes.stop(self.moto)

    # --- what the guard saw ---------------------------------------------------------
    def decisions(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]

    def denials(self) -> list[dict[str, Any]]:
        return [d for d in self.decisions() if not d["allowed"]]


def new_secret() -> str:
    return secrets.token_urlsafe(24)


def unused_permissions(templates: Templates, decisions: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Per role: each ``action on resource`` its policies allow that no call of the run used."""
    from infra.local.iam_guard import Request, statement_matches

    out: dict[str, list[str]] = {}
    for logical, _ in templates.roles.items():
        used = [Request(d["action"], d["resource"], tuple(d.get("context", {}).items()))
                for d in decisions if d["allowed"] and d["role"] == role_name(STAGE, logical)]
        if not used:
            continue  # a role no process of the run used (the execution role reads secrets once)
        for policy in templates.policies(logical):
            statements = policy["Statement"]
            for statement in [statements] if isinstance(statements, dict) else statements:
                actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
                resources = statement.get("Resource", "*")
                for action in actions:
                    for resource in [resources] if isinstance(resources, str) else resources:
                        narrowed = {**statement, "Action": action, "Resource": resource}
                        if not any(statement_matches(narrowed, r) for r in used):
                            out.setdefault(logical, []).append(f"{action} on {resource}")
    return out
