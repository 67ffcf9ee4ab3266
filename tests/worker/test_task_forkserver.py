"""The worker's task forkserver (worker_runtime/isolation.py warm_up): a task child starts
with the task modules (and gradio_client with them) already imported, so a job's child is
a fork, not a fork plus imports. Run in fresh interpreters: the forkserver is per process."""

from __future__ import annotations

import json
import subprocess
import sys

from infra.local.processes import ROOT

CHILD_SEES = """
import json, sys, time
from pathlib import Path
from chalicelib.jobs.models import JobStatus, JobType, parse_job_request
from chalicelib.jobs.record import Job
from chalicelib.platform.logs import get_logger
from worker_runtime.cancel import CancelToken
from worker_runtime.isolation import TaskProcess, warm_up
from worker_runtime.tasks.base import TaskContext

if sys.argv[1] == "warm":
    warm_up(["worker_runtime.tasks.csm"])
job = Job(id="0" * 36, type=JobType.CSM, params={"text": "x"}, status=JobStatus.RUNNING, owner="o",
          created_at=0, complete_by=time.time() + 60, max_time=60, expires_at=0)
ctx = TaskContext(job=job, request=parse_job_request(JobType.CSM, {"text": "x"}), output_dir=Path(sys.argv[2]),
                  cancel=CancelToken(), log=get_logger("test"))
from tests.support.fake_tasks import loaded_modules
print(json.dumps(TaskProcess(None, 5).call(ctx, loaded_modules)))
"""


def _child_modules(mode: str, tmp_path) -> list[str]:
    out = subprocess.run([sys.executable, "-c", CHILD_SEES, mode, str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_warmed_up_forkserver_forks_children_with_the_task_modules_imported(tmp_path):
    warm = _child_modules("warm", tmp_path)
    assert "worker_runtime.tasks.csm" in warm and "gradio_client" in warm
    # Without the warm-up, the child has only what the step's own unpickling imported.
    cold = _child_modules("cold", tmp_path)
    assert "worker_runtime.tasks.csm" not in cold and "gradio_client" not in cold
