"""Secrets for the Lambda functions, read from SSM Parameter Store at cold start.

On AWS the deploy stores the secrets as SecureString parameters under one path
(``/c3-render/<stage>/``) and gives the functions that path in ``SECRETS_PATH``.
Before the settings are read, the parameters the API needs are copied into the
environment variables the settings already know, so no secret value ever sits in
a template, a Lambda configuration or a log. (The worker's ECS task gets its own
secrets injected by ECS from the same parameters.)

Without ``SECRETS_PATH``, or outside a Lambda runtime, nothing happens.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, MutableMapping

from chalicelib.platform import aws
from chalicelib.platform.logs import get_logger

log = get_logger("c3.secrets")

# Parameter name (under SECRETS_PATH) -> environment variable, for the API's needs only.
API_SECRETS = {"api-keys": "C3_RENDER_API_KEY", "operator-keys": "C3_RENDER_OPERATOR_KEYS",
               "webhook-secret": "WEBHOOK_SECRET", "result-link-secret": "RESULT_LINK_SECRET"}
# What the worker's task definition injects (ECS "secrets"); listed here so the deploy
# and the template use one list of names.
WORKER_SECRETS = {"comput3-api-key": "C3_API_KEY", "webhook-secret": "WEBHOOK_SECRET",
                  "result-link-secret": "RESULT_LINK_SECRET"}
ALL_SECRETS = {**API_SECRETS, **WORKER_SECRETS}


# Secrets a function cannot run without: the API must never come up open, and the GPU
# reaper cannot stop instances without the Comput3 key. The others are optional (a missing
# result-link secret disables links; operator keys are optional).
REQUIRED = ("api-keys", "comput3-api-key")


class MissingSecret(RuntimeError):
    pass


def wanted_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """The parameters this function reads: ``SECRETS_WANTED`` (comma-separated parameter
    names, set per function by the template, so that each role is granted only its own),
    or the API's when it is unset."""
    raw = environ.get("SECRETS_WANTED")
    if raw is None:
        return API_SECRETS
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_SECRETS]
    if unknown:
        raise MissingSecret(f"SECRETS_WANTED names unknown parameter(s) {', '.join(unknown)}: "
                            f"must be among {', '.join(sorted(ALL_SECRETS))}")
    return {n: ALL_SECRETS[n] for n in names}


def load_secrets(environ: MutableMapping[str, str] = os.environ, ssm: Any = None,
                 wanted: dict[str, str] | None = None) -> list[str]:
    """Copy the ``wanted`` parameters (default: ``wanted_secrets``) under ``SECRETS_PATH``
    into ``environ``.

    Returns the environment variables set. A variable already set explicitly wins
    (an operator override). Raises MissingSecret when a REQUIRED one among them is
    absent, and boto3's error when SSM cannot be read."""
    path = environ.get("SECRETS_PATH")
    # Only inside the Lambda runtime: `chalice package` and `chalice deploy` import
    # app.py with the stage's variables (SECRETS_PATH too) but must not read secrets.
    if not path or not environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        return []
    path = path.rstrip("/") + "/"
    if wanted is None:
        wanted = wanted_secrets(environ)
    if not wanted:
        return []
    if ssm is None:
        region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        ssm = aws.client("ssm", region)
    names = [path + name for name in wanted]
    resp = ssm.get_parameters(Names=names, WithDecryption=True)
    loaded = []
    for param in resp.get("Parameters", []):
        env_name = wanted[param["Name"][len(path):]]
        if not environ.get(env_name):
            environ[env_name] = param["Value"]
            loaded.append(env_name)
    missing = resp.get("InvalidParameters", [])
    log.info("secrets.loaded", path=path, variables=loaded, missing=missing)
    absent = [name for name in REQUIRED if name in wanted and not environ.get(wanted[name])]
    if absent:
        raise MissingSecret(f"SSM parameter(s) {', '.join(path + n for n in absent)} missing or empty: "
                            "refusing to start without them (run `make deploy` to store them)")
    return loaded
