"""The OpenAPI document describes exactly what the API does: schemathesis generates well
over a thousand requests from it (examples, coverage, fuzzing and stateful chains through
the documented links: submit -> status -> result -> update/retry) against `chalice local`
on the moto server, with every check on. 0 server errors, 0 schema or status-code violations."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from chalicelib.platform.settings import Settings
from infra.local.stack import create_stack
from tests.conftest import resource_env
from tests.support import procs

HERE = Path(__file__).resolve().parent


@pytest.mark.timeout(400)  # ~1,700 requests: about 80 s alone, longer beside other test files
def test_the_api_does_what_its_openapi_document_says(aws_endpoints, tmp_path):
    env = {**resource_env(f"s{uuid.uuid4().hex[:12]}"), "C3_RENDER_API_KEY": "fuzz-key",
           "RESULT_LINK_SECRET": "fuzz-links", "ALLOW_PRIVATE_URLS": "true"}
    create_stack(Settings(**env))
    port = procs.free_port()
    api = procs.start_api(port, env, tmp_path / "api.log")
    try:
        run = subprocess.run(
            [str(Path(sys.executable).with_name("st")), "--config-file", str(HERE / "schemathesis.toml"),
             "run", f"http://127.0.0.1:{port}/openapi.json", "-H", "X-C3-RENDER-KEY: fuzz-key",
             "--checks", "all", "--max-examples", "50", "--workers", "1", "--seed", "20261130",
             "--request-timeout", "30"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )
    finally:
        procs.stop(api)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-8000:]
    generated = int(re.search(r"(\d+) generated", out).group(1))
    assert generated >= 1000, out[-3000:]
    assert "Stateful" in out and "❌" not in out
