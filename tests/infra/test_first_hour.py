"""A new user's first hour: `make run` on a busy port, what it installs, the API's answers to
paths no route has (locally and on API Gateway), the page's trailing slash, and a client that
hangs up during a held answer (Ctrl-C during `--wait`)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import requests

from chalicelib.platform.settings import Settings
from infra.aws.template import render_app_template
from infra.local.stack import create_stack
from tests.conftest import resource_env
from tests.support import procs
from tests.support.harness import wait_until

ROOT = procs.ROOT
KEY = {"X-C3-RENDER-KEY": "first-hour-key"}


# ---- make run ---------------------------------------------------------------------------------

@pytest.fixture
def listening() -> Iterator[list[int]]:
    """Ports something already listens on (an earlier `make run`, another program)."""
    sockets: list[socket.socket] = []

    def occupy() -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sockets.append(sock)
        return sock.getsockname()[1]

    yield [occupy(), occupy()]
    for sock in sockets:
        sock.close()


def make_run(env: dict[str, str], run_dir: Path) -> subprocess.CompletedProcess:
    """`make run` itself (its install step taken as done: -o), with the test's ports."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("C3_API_KEY", "AWS_ENDPOINT_URL", "LOCALSTACK") and not k.startswith("AWS_ENDPOINT_URL_")}
    return subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed-run", "run"], cwd=ROOT,
                          env={**base, "RUN_DIR": str(run_dir), **env}, capture_output=True, text=True, timeout=120)


def test_make_run_on_busy_ports_names_them_and_their_variables(listening: list[int], tmp_path: Path) -> None:
    api, simulator = listening
    ports = {"API_PORT": str(api), "SIMULATOR_PORT": str(simulator), "MOTO_PORT": str(procs.free_port()),
             "SAMPLES_PORT": str(procs.free_port())}
    res = make_run(ports, tmp_path / "run")
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert f"port {api} is busy" in res.stderr and f"`API_PORT=<free port> make run`" in res.stderr, out
    assert f"port {simulator} is busy" in res.stderr and "`SIMULATOR_PORT=<free port> make run`" in res.stderr
    assert "MOTO_PORT=" not in out and "SAMPLES_PORT=" not in out  # free: not named
    assert "Traceback" not in out and "c3-render is up" not in out and "LOCAL COMPUT3 SIMULATOR" not in out
    assert "starting" not in out  # nothing was started
    assert not (tmp_path / "run").exists()


def test_make_run_installs_only_what_running_needs() -> None:
    run_reqs = (ROOT / "requirements-run.txt").read_text()
    dev_reqs = (ROOT / "requirements-dev.txt").read_text()
    for tool in ("pytest", "cfn-lint", "schemathesis", "selenium", "pytest-xdist"):
        assert f"\n{tool}==" not in run_reqs and f"\n{tool}==" in dev_reqs, tool
    assert "-r requirements-run.txt" in dev_reqs and "-r requirements-worker.txt" in run_reqs
    dry = subprocess.run(["make", "-n", "-B", "run"], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
    assert "-r requirements-run.txt" in dry and "requirements-dev.txt" not in dry
    assert "--quiet" not in [line for line in dry.splitlines() if "requirements-run.txt" in line and "pip" in line][0]
    dry = subprocess.run(["make", "-n", "-B", "setup"], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
    assert "-r requirements-run.txt" in dry and "-r requirements-dev.txt" in dry


# ---- the API over a socket ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def api(aws_endpoints, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    env = {**resource_env(f"f{uuid.uuid4().hex[:12]}"), "C3_RENDER_API_KEY": KEY["X-C3-RENDER-KEY"]}
    create_stack(Settings(**env))
    port = procs.free_port()
    log = tmp_path_factory.mktemp("api") / "api.log"
    proc = procs.start_api(port, env, log)
    yield f"http://127.0.0.1:{port}", log
    procs.stop(proc)


@pytest.mark.integration
@pytest.mark.parametrize("method, path", [("get", "/nope"), ("post", "/jobs/x/y/z"), ("get", "/ui/ui/app.js")])
def test_a_path_no_route_has_is_our_404(api, method: str, path: str) -> None:
    base, _ = api
    resp = requests.request(method, f"{base}{path}", headers=KEY, timeout=5)
    assert resp.status_code == 404 and resp.headers["Content-Type"] == "application/json"
    assert resp.json() == {"error": f"No route {method.upper()} {path}",
                           "details": [{"field": "path", "message": "must be one of the API's routes (see /openapi.json)"}]}


def test_api_gateway_answers_a_path_no_route_has_the_same_way() -> None:
    responses = render_app_template("prod")["Resources"]["RestAPI"]["Properties"]["GatewayResponses"]
    missing = responses["MISSING_AUTHENTICATION_TOKEN"]
    assert missing["StatusCode"] == "404"
    template = missing["ResponseTemplates"]["application/json"]
    body = json.loads(template.replace("$context.httpMethod", "GET").replace("$context.path", "/prod/nope"))
    assert body == {"error": "No route GET /prod/nope",
                    "details": [{"field": "path", "message": "must be one of the API's routes (see /openapi.json)"}]}


@pytest.mark.integration
def test_the_page_with_a_trailing_slash_is_redirected_to_the_page(api) -> None:
    base, _ = api
    resp = requests.get(f"{base}/ui/", timeout=5, allow_redirects=False)
    assert resp.status_code == 301 and resp.headers["Location"] == "../ui"
    followed = requests.get(f"{base}/ui/", timeout=5)
    assert followed.url == f"{base}/ui" and followed.status_code == 200 and "ui/app.js" in followed.text
    assert "form-action 'none'" in followed.headers["Content-Security-Policy"]


@pytest.mark.integration
def test_a_client_hanging_up_during_a_held_answer_leaves_no_traceback(api) -> None:
    """Ctrl-C during `c3-render ... --wait`: the CLI closes a connection the API holds
    (`Prefer: wait`); the API logs one line, not a traceback."""
    base, log = api
    job = requests.post(f"{base}/analyze", json={"image_url": "http://127.0.0.1:9/x.jpg"}, headers=KEY, timeout=5)
    job_id = job.json()["id"]  # no worker here: it stays queued, so the wait is held to its end
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"GET /status/{job_id} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-C3-RENDER-KEY: "
                     f"{KEY['X-C3-RENDER-KEY']}\r\nPrefer: wait=2\r\n\r\n".encode())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
    assert wait_until(lambda: '"api.client_gone"' in log.read_text(), 20, 0.1), log.read_text()[-3000:]
    assert requests.get(f"{base}/", timeout=5).status_code == 200  # still serving
    assert "Traceback" not in log.read_text()
