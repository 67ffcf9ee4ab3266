"""The short soak (`make soak` runs the long one): 80 jobs of all four types on 3 worker
processes, a worker SIGKILLed every 15 s and replaced, GPU nodes dying mid-job, half the
webhooks refused, AWS throttles on the wire. Every check of infra/soak.py must hold."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.support import procs


@pytest.mark.timeout(600)  # the run is bounded by its own --timeout; this is the backstop
def test_short_soak_loses_nothing_and_sends_each_webhook_once(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "infra.soak", "--jobs", "80", "--workers", "3", "--kill-every", "15",
         "--timeout", "400", "--work", str(tmp_path)],
        cwd=procs.ROOT, capture_output=True, text=True, timeout=600,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    figures = json.loads(re.search(r'^\{\n  "soak".*?^\}', run.stdout, re.S | re.M).group(0))["soak"]
    assert figures["lost"] == 0 and figures["double_webhooks"] == 0 and figures["silent"] == 0
    assert figures["worker_kills"] >= 1, "the run ended before any worker was killed"
    assert figures["aws_faults_injected"] >= 1 and figures["node_deaths"] >= 1
    assert "FAIL" not in run.stdout
