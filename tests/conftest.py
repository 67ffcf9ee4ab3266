"""Fixtures: real AWS emulators over HTTP (moto, or LocalStack + DynamoDB Local: see
C3_TEST_PROFILE), and per-test AWS resources with unique names."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from chalicelib.context import Context
from chalicelib.platform import aws
from chalicelib.platform.settings import Settings, get_settings
from infra.local import emulators
from infra.local.stack import create_stack
from tests.support import procs
from tests.support.receiver import Receiver

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Local mode, as in `make run`: the receivers and sample servers live on 127.0.0.1.
# Tests of the egress policy turn it off (``private_urls``, or explicit settings).
os.environ.setdefault("ALLOW_PRIVATE_URLS", "true")


@pytest.fixture
def private_urls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bool], None]]:
    """``private_urls(False)`` turns local mode off for this process's request models
    (they read the cached ``get_settings()``) and for processes started afterwards."""

    def set_mode(allowed: bool) -> None:
        monkeypatch.setenv("ALLOW_PRIVATE_URLS", "true" if allowed else "false")
        get_settings.cache_clear()

    yield set_mode
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


# Which AWS emulators the suite runs on: "moto" (default, one moto server) or "localstack"
# (LocalStack for SQS and S3 + DynamoDB Local for DynamoDB). Only the endpoints differ.
PROFILE = os.environ.get("C3_TEST_PROFILE", "moto")
PROFILES = ("moto", "localstack")


def pytest_configure(config: pytest.Config) -> None:
    if PROFILE not in PROFILES:
        raise pytest.UsageError(f"C3_TEST_PROFILE={PROFILE!r}: must be one of {', '.join(PROFILES)}")


def pytest_report_header(config: pytest.Config) -> str:
    return f"AWS profile: {PROFILE} (C3_TEST_PROFILE)"


def _start_profile(log_dir: Path) -> tuple[dict[str, str], Callable[[], None]]:
    if PROFILE == "localstack":
        try:
            return emulators.start_localstack_profile(log_dir / "emulators")
        except emulators.EmulatorError as exc:
            # Loud and failing: a profile that cannot run must never pass as skipped.
            pytest.exit(f"LOCALSTACK PROFILE FAILED (C3_TEST_PROFILE=localstack): {exc}", returncode=3)
    port = procs.free_port()
    proc = procs.start_moto(port, log_dir / "moto.log")
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
    return env, lambda: procs.stop(proc)


@pytest.fixture(scope="session")
def aws_endpoints(log_dir: Path) -> Iterator[dict[str, str]]:
    """Start the AWS emulators of the profile for the session and point boto3 at them through
    the standard variables (set in os.environ, so subprocesses inherit them; endpoint
    variables the profile does not set are removed for the session)."""
    env, stop = _start_profile(log_dir)
    managed = {*env, "AWS_ENDPOINT_URL", *emulators.ENDPOINT_VARS}
    saved = {k: os.environ.get(k) for k in managed}
    for k in managed - set(env):
        os.environ.pop(k, None)
    os.environ.update(env)
    aws.reset_clients()
    yield env
    stop()
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
        "STATS_TABLE": f"{prefix}-stats",
        "JOBS_QUEUE": f"{prefix}-jobs",
        "JOBS_DLQ": f"{prefix}-jobs-dlq",
        "INTAKE_QUEUE": f"{prefix}-intake",
        "EVENTS_QUEUE": f"{prefix}-events",
        "WEBHOOKS_QUEUE": f"{prefix}-webhooks",
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
def workers() -> Iterator[list]:
    """Worker processes a test starts; stopped at its end."""
    started: list = []
    yield started
    for p in started:
        procs.stop(p)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A local webhook receiver that records every delivery."""
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def settings(stack_env: dict[str, str]) -> Settings:
    return Settings(**stack_env)


@pytest.fixture
def ctx(settings: Settings) -> Context:
    return Context(settings)


@pytest.fixture
def c3_sim(log_dir: Path, request: pytest.FixtureRequest):
    """A fresh simulated Comput3 process for one test: control plane + bare nodes (health
    only; C3_SIM_APPS=0 keeps the node apps out). ``.worker_env()`` points a worker at it."""
    from infra.local.simulator import SimulatorProcess

    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in request.node.name)
    sim = SimulatorProcess.start(env={"C3_SIM_APPS": "0"}, log_path=log_dir / f"c3sim-{name}.log")
    yield sim
    sim.stop()


@pytest.fixture
def fault_proxy(aws_endpoints: dict[str, str]):
    """A fault-injecting proxy in front of the moto server (see infra/local/fault_proxy.py):
    processes pointed at ``fault_proxy.url`` see throttles, 5xx, resets and stalls on the wire."""
    from infra.local.fault_proxy import FaultProxy

    if "AWS_ENDPOINT_URL" not in aws_endpoints:
        pytest.skip("the fault proxy fronts the single moto endpoint (C3_TEST_PROFILE=moto)")
    proxy = FaultProxy(aws_endpoints["AWS_ENDPOINT_URL"]).start()
    yield proxy
    proxy.stop()
