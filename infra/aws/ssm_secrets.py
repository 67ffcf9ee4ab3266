"""The deploy's side of the secrets: SecureString parameters under /c3-render/<stage>/.

Values come from the deploying shell's environment (the same variable names the
services read: C3_API_KEY, C3_RENDER_API_KEY, C3_RENDER_OPERATOR_KEYS (optional), WEBHOOK_SECRET) and are written to
SSM Parameter Store, never into a template or a stack parameter. A later deploy
without them keeps what is stored. Standard parameters and the AWS-managed key
cost nothing at rest.
"""

from __future__ import annotations

import base64
import os
from typing import Any, Mapping

from chalicelib.platform.secrets import ALL_SECRETS

REQUIRED = ("comput3-api-key", "api-keys")
DESCRIPTIONS = {
    "comput3-api-key": "the Comput3.AI API key the workers rent GPUs with",
    "api-keys": "comma-separated API keys clients send as X-C3-RENDER-KEY or Bearer",
    "operator-keys": "comma-separated operator keys: every tenant's jobs on the operators' page (optional)",
    "webhook-secret": "Standard Webhooks signing secret (generated when absent)",
}


def secrets_path(stage: str) -> str:
    return f"/c3-render/{stage}/"


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def plan_secrets(ssm: Any, stage: str, environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(values to write, problems): given values are written; a required secret that is
    neither given nor stored is a problem; a missing webhook secret is generated."""
    path = secrets_path(stage)
    stored = {p["Name"][len(path):] for p in
              ssm.get_parameters(Names=[path + n for n in ALL_SECRETS])["Parameters"]}
    writes: dict[str, str] = {}
    problems: list[str] = []
    for name, variable in ALL_SECRETS.items():
        value = (environ.get(variable) or "").strip()
        if value:
            writes[name] = value
        elif name in REQUIRED and name not in stored:
            problems.append(f"missing secret {path}{name} ({DESCRIPTIONS[name]}): "
                            f"set {variable} for this deploy; it is stored in SSM, not in the template")
        elif name == "webhook-secret" and name not in stored:
            writes[name] = new_webhook_secret()
    return writes, problems


def store_secrets(ssm: Any, stage: str, values: Mapping[str, str]) -> list[str]:
    path = secrets_path(stage)
    for name, value in values.items():
        ssm.put_parameter(Name=path + name, Value=value, Type="SecureString", Overwrite=True,
                          Description=f"c3-render {stage}: {DESCRIPTIONS[name]}")
    return [path + name for name in values]


def purge_secrets(ssm: Any, stage: str) -> list[str]:
    names = [secrets_path(stage) + n for n in ALL_SECRETS]
    resp = ssm.delete_parameters(Names=names)
    return resp.get("DeletedParameters", [])
