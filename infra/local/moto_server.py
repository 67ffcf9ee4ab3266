"""The local moto server, with DynamoDB requests serialized.

moto's server is threaded and its DynamoDB backend checks a ConditionExpression and
writes the item without a lock, so two concurrent conditional writes can both
"win" — real DynamoDB (and DynamoDB Local) never lets that happen, and this
project's state machine relies on it. Serializing DynamoDB calls (one lock, only
for requests whose X-Amz-Target names DynamoDB) restores AWS's semantics while SQS
long polls keep running in parallel.

    python -m infra.local.moto_server -H 127.0.0.1 -p 4566 [--iam]

With ``--iam`` (the production-shaped profile, infra/local/prod_profile.py), moto's IAM
access control checks DynamoDB and SSM calls against the resources they name: moto
itself checks those services' actions against the resource ``*`` only, which a policy
scoped to a table or a parameter never matches (every call would be denied).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any, Callable, Iterable

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple


class SerializedDynamoDB:
    """WSGI middleware: one DynamoDB request at a time, everything else concurrent."""

    def __init__(self, app: Callable[..., Iterable[bytes]]):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            return self.app(environ, start_response)
        with self.lock:
            result = self.app(environ, start_response)
            try:
                return [b"".join(result)]
            finally:
                close = getattr(result, "close", None)
                if close:
                    close()


def _named_resources(response: Any) -> list[str]:
    """The ARNs a DynamoDB, SSM or SQS GetQueueUrl request acts on (what IAM evaluates on AWS)."""
    region, account = response.region, response.current_account
    if response.service_name == "dynamodb":
        params = response.body if isinstance(response.body, dict) else {}
        tables = list(params.get("RequestItems") or {}) or [params.get("TableName")]
        index = params.get("IndexName")
        return [f"arn:aws:dynamodb:{region}:{account}:table/{t}" + (f"/index/{index}" if index else "")
                for t in tables if t]
    if response.service_name == "sqs":  # GetQueueUrl names its queue, moto looks for a URL
        name = response._get_param("QueueName")
        return [f"arn:aws:sqs:{region}:{account}:{name}"] if name else []
    if response.service_name == "ssm":
        names = response._get_param("Names") or [response._get_param("Name")]
        return [f"arn:aws:ssm:{region}:{account}:parameter/{n.lstrip('/')}" for n in names if n]
    return []


def enable_resource_checks() -> None:
    """Make moto's access control evaluate DynamoDB and SSM calls per named resource."""
    from moto.core.authorization import ActionAuthenticatorMixin

    original = ActionAuthenticatorMixin._authenticate_and_authorize_normal_action

    def checked(self: Any, resource: str = "*") -> None:
        resources = _named_resources(self) if resource == "*" else []
        for one in resources or [resource]:
            original(self, one)

    ActionAuthenticatorMixin._authenticate_and_authorize_normal_action = checked  # type: ignore[method-assign]
    s3_original = ActionAuthenticatorMixin._authenticate_and_authorize_s3_action

    def s3_checked(self: Any, bucket_name: str | None = None, key_name: str | None = None) -> None:
        # moto's access control cannot read a presigned URL (query-string signature; it fails
        # on the missing Authorization header): the signer's permission is checked when it
        # signs (infra/local/iam_guard.py sees generate_presigned_url).
        if "Authorization" not in self.headers and "X-Amz-Credential" in (self.querystring or {}):
            return
        s3_original(self, bucket_name, key_name)

    ActionAuthenticatorMixin._authenticate_and_authorize_s3_action = s3_checked  # type: ignore[method-assign]
    _bucket_policies_with_conditions()


def _bucket_policies_with_conditions() -> None:
    """moto denies whenever a bucket policy statement has a condition it cannot evaluate
    (the TLS-only Deny of data.yaml then denies every object call). Evaluate them as AWS
    does, for a request over TLS, which is what the SDK uses on AWS (the local wire is HTTP)."""
    import json

    from moto.iam.access_control import PermissionResult
    from moto.s3.models import FakeBucket

    from infra.local.iam_guard import Request, statement_matches

    def get_permission(bucket: Any, action: str, resource: str) -> Any:
        if bucket.policy is None:
            return PermissionResult.NEUTRAL
        statements = json.loads(bucket.policy.decode()).get("Statement", [])
        request = Request(action, resource, (("aws:SecureTransport", "true"),))
        verdict = PermissionResult.NEUTRAL
        for statement in [statements] if isinstance(statements, dict) else statements:
            if statement_matches(statement, request):
                if statement.get("Effect") == "Deny":
                    return PermissionResult.DENIED
                verdict = PermissionResult.PERMITTED
        return verdict

    FakeBucket.get_permission = get_permission  # type: ignore[method-assign]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=4566)
    parser.add_argument("--iam", action="store_true", help="check DynamoDB/SSM calls per resource")
    args = parser.parse_args()
    if args.iam:
        enable_resource_checks()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, SerializedDynamoDB(app), threaded=True, request_handler=MotoRequestHandler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
