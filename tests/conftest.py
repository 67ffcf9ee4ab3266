"""Fixtures: a real moto server over HTTP, and per-test AWS resources with unique names."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from chalicelib import aws
from chalicelib.context import Context
from chalicelib.settings import Settings
from infra.local.stack import create_stack
from tests.support import procs

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def aws_endpoints(log_dir: Path) -> Iterator[dict[str, str]]:
    """Start the AWS emulator for the session and point boto3 at it through the
    standard variables (set in os.environ, so subprocesses inherit them)."""
    port = procs.free_port()
    proc = procs.start_moto(port, log_dir / "moto.log")
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    aws.reset_clients()
    yield env
    procs.stop(proc)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    aws.reset_clients()


def resource_env(prefix: str) -> dict[str, str]:
    return {
        "JOBS_TABLE": f"{prefix}-jobs",
        "GPU_TABLE": f"{prefix}-gpus",
        "JOBS_QUEUE": f"{prefix}-jobs",
        "JOBS_DLQ": f"{prefix}-jobs-dlq",
        "INTAKE_QUEUE": f"{prefix}-intake",
        "EVENTS_QUEUE": f"{prefix}-events",
        "RESULTS_BUCKET": f"{prefix}-results",
    }


@pytest.fixture
def stack_env(aws_endpoints: dict[str, str]) -> dict[str, str]:
    """Fresh, uniquely named resources for one test, as environment variables."""
    env = resource_env(f"t{uuid.uuid4().hex[:12]}")
    env.update({"WEBHOOK_INTERVAL": "0.05", "WEBHOOK_TIMEOUT": "2"})
    create_stack(Settings(**env))
    return env


@pytest.fixture
def settings(stack_env: dict[str, str]) -> Settings:
    return Settings(**stack_env)


@pytest.fixture
def ctx(settings: Settings) -> Context:
    return Context(settings)
