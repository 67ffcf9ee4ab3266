"""A process's AWS calls checked against its role's policy, in the process itself.

moto's IAM access control (on in the production-shaped profile, prod_profile.py) checks
signatures and actions, but resources only for SQS and S3 (infra/local/moto_server.py
adds DynamoDB and SSM), no IAM conditions (it denies a statement with one), and its
denial names no resource. This guard closes those gaps for the profile's processes: a
botocore hook evaluates every call (and every presigned URL) against the role's policy
documents, the same ones the role was created from on moto, and refuses what they do
not allow with an AccessDenied that names role, action and resource. Every decision is
appended to a JSON-lines file, so a test can tell which permissions were used.

    python -m infra.local.iam_guard --role NAME --policies FILE --record FILE -- -m module [args]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import runpy
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

# An S3 operation -> the IAM action AWS evaluates for it.
S3_ACTIONS = {
    "ListObjectsV2": "s3:ListBucket", "ListObjects": "s3:ListBucket", "HeadBucket": "s3:ListBucket",
    "HeadObject": "s3:GetObject", "GetObject": "s3:GetObject",
    "PutObject": "s3:PutObject", "CreateMultipartUpload": "s3:PutObject", "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject", "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "DeleteObject": "s3:DeleteObject", "DeleteObjects": "s3:DeleteObject",
}
ALWAYS_ALLOWED = {"sts:GetCallerIdentity"}


@dataclass(frozen=True)
class Request:
    """One IAM authorization request: action, resource and condition keys."""

    action: str
    resource: str
    context: tuple[tuple[str, str], ...] = ()


def requests_for(service: str, operation: str, params: Mapping[str, Any], region: str,
                 account: str) -> list[Request]:
    """What IAM evaluates for one API call (one request per resource it names)."""
    if service == "s3":
        bucket = params.get("Bucket", "*")
        action = S3_ACTIONS.get(operation, f"s3:{operation}")
        if action == "s3:ListBucket":
            prefix = params.get("Prefix")
            return [Request(action, f"arn:aws:s3:::{bucket}", (("s3:prefix", prefix),) if prefix is not None else ())]
        keys = [o["Key"] for o in params.get("Delete", {}).get("Objects", [])] or [params.get("Key")]
        return [Request(action, f"arn:aws:s3:::{bucket}" + (f"/{k}" if k else "")) for k in keys]
    action = f"{service}:{operation}"
    if service == "sqs":
        name = params.get("QueueName") or str(params.get("QueueUrl", "*")).rstrip("/").rsplit("/", 1)[-1]
        return [Request(action, f"arn:aws:sqs:{region}:{account}:{name}")]
    if service == "dynamodb":
        tables = list(params.get("RequestItems") or {}) or [params.get("TableName", "*")]
        index = params.get("IndexName")
        return [Request(action, f"arn:aws:dynamodb:{region}:{account}:table/{t}" + (f"/index/{index}" if index else ""))
                for t in tables]
    if service == "ssm":
        names = params.get("Names") or [params.get("Name", "*")]
        return [Request(action, f"arn:aws:ssm:{region}:{account}:parameter/{n.lstrip('/')}") for n in names]
    return [Request(action, "*")]


def _listed(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _match(patterns: Iterable[str], value: str, fold: bool = False) -> bool:
    for pattern in patterns:
        if fold:
            pattern, value = pattern.lower(), value.lower()
        if fnmatch.fnmatchcase(value, pattern):
            return True
    return False


def _conditions_hold(condition: Mapping[str, Any], context: Mapping[str, str]) -> bool:
    for operator, tests in condition.items():
        for key, expected in tests.items():
            actual = context.get(key)
            if actual is None:
                return False  # a condition on a key the request lacks never matches
            if operator == "StringLike" and not _match(_listed(expected), actual):
                return False
            if operator == "StringEquals" and actual not in _listed(expected):
                return False
            if operator == "Bool" and actual.lower() not in [str(v).lower() for v in _listed(expected)]:
                return False
            if operator not in ("StringLike", "StringEquals", "Bool"):
                return False  # not evaluated here: fail closed
    return True


def statement_matches(statement: Mapping[str, Any], request: Request) -> bool:
    if "Action" in statement and not _match(_listed(statement["Action"]), request.action, fold=True):
        return False
    if "NotAction" in statement and _match(_listed(statement["NotAction"]), request.action, fold=True):
        return False
    if "Resource" in statement and not _match(_listed(statement["Resource"]), request.resource):
        return False
    if "NotResource" in statement and _match(_listed(statement["NotResource"]), request.resource):
        return False
    return _conditions_hold(statement.get("Condition", {}), dict(request.context))


def allowed(policies: Iterable[Mapping[str, Any]], request: Request) -> bool:
    """IAM's rule for identity policies: an explicit Deny wins, else some Allow is needed."""
    if request.action in ALWAYS_ALLOWED:
        return True
    verdict = False
    for policy in policies:
        statements = policy.get("Statement")
        for statement in [statements] if isinstance(statements, dict) else list(statements or []):
            if statement_matches(statement, request):
                if statement.get("Effect") == "Deny":
                    return False
                verdict = True
    return verdict


class Guard:
    def __init__(self, role: str, account: str, policies: list[dict[str, Any]], record: Path):
        self.role, self.account, self.policies, self.record = role, account, policies, record
        self._seen: set[tuple[str, str, bool]] = set()
        self._lock = threading.Lock()

    def check(self, service: str, operation: str, params: Mapping[str, Any], region: str) -> None:
        from botocore.exceptions import ClientError

        for request in requests_for(service, operation, params, region, self.account):
            ok = allowed(self.policies, request)
            self._note(request, ok)
            if not ok:
                message = (f"role {self.role} is not allowed to perform {request.action} "
                           f"on resource {request.resource}")
                print(json.dumps({"event": "iam.denied", "level": "error", "role": self.role,
                                  "action": request.action, "resource": request.resource,
                                  "reason": message}), file=sys.stderr, flush=True)
                raise ClientError({"Error": {"Code": "AccessDenied", "Message": message}}, operation)

    def _note(self, request: Request, ok: bool) -> None:
        key = (request.action, request.resource, ok)
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
            with open(self.record, "a") as out:
                out.write(json.dumps({"role": self.role, "action": request.action,
                                      "resource": request.resource, "allowed": ok,
                                      "context": dict(request.context)}) + "\n")

    def install(self) -> None:
        """Hook every botocore client this process creates from now on."""
        import botocore.session

        original = botocore.session.Session.create_client
        guard = self

        def create_client(session: Any, *args: Any, **kwargs: Any) -> Any:
            client = original(session, *args, **kwargs)
            service = client.meta.service_model.signing_name or client.meta.service_model.endpoint_prefix

            def before(params: Mapping[str, Any], model: Any, **_: Any) -> None:
                guard.check(service, model.name, params, client.meta.region_name)

            client.meta.events.register("before-parameter-build", before)
            return client

        botocore.session.Session.create_client = create_client  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", required=True)
    parser.add_argument("--account", required=True)
    parser.add_argument("--policies", required=True, type=Path, help="JSON list of policy documents")
    parser.add_argument("--record", required=True, type=Path, help="JSON lines: every decision")
    parser.add_argument("target", nargs=argparse.REMAINDER, help="-- -m module [args]")
    args = parser.parse_args(argv)
    target = args.target[1:] if args.target[:1] == ["--"] else args.target
    if len(target) < 2 or target[0] != "-m":
        parser.error("expected -- -m module [args]")
    Guard(args.role, args.account, json.loads(args.policies.read_text()), args.record).install()
    sys.argv = [target[1], *target[2:]]
    sys.path.insert(0, os.getcwd())
    runpy.run_module(target[1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
