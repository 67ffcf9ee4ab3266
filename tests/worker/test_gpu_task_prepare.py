"""GpuTask asks a task whether a job needs its prepare step: one that does not (a CSM job
without a voice to clone) goes to its node at once, with no prepare child."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from chalicelib.jobs.models import JobStatus, JobType, parse_job_request
from chalicelib.jobs.record import Job
from chalicelib.platform.logs import get_logger
from worker_runtime.cancel import CancelToken
from worker_runtime.gpu.task import GpuTask
from worker_runtime.tasks.base import TaskContext, TaskResult
from worker_runtime.tasks.csm import CsmTask


class Steps:
    needs_gpu = True

    def __init__(self) -> None:
        self.prepared = 0

    def needs_prepare(self, request: Any) -> bool:
        return request == "download"

    def prepare(self, ctx: TaskContext) -> str:
        self.prepared += 1
        return "converted input"

    def render(self, ctx: TaskContext, inputs: Any) -> TaskResult:
        return TaskResult(text=f"{inputs} on {ctx.node}")


class OneNode:
    def acquire(self, job_id: str, token: CancelToken, log: Any, on_phase: Any = None,
                arrived_at: float | None = None) -> str:
        return "node-1"

    def watch(self, job_id: str, node: Any, token: CancelToken) -> None:
        pass

    def release(self, job_id: str, node_fault: Any, busy_for: float | None = None) -> bool:
        return False


def _ctx(request: Any) -> TaskContext:
    job = Job(id="0" * 36, type=JobType.CSM, params={"text": "x"}, status=JobStatus.RUNNING, owner="o",
              created_at=0, complete_by=time.time() + 60, max_time=60, expires_at=0)
    return TaskContext(job=job, request=request, output_dir=Path("."), cancel=CancelToken(), log=get_logger("t"))


def test_a_job_with_nothing_to_prepare_skips_the_step_and_one_with_inputs_runs_it():
    steps = Steps()
    assert GpuTask(steps, OneNode()).run(_ctx("text only")).text == "None on node-1"
    assert steps.prepared == 0
    assert GpuTask(steps, OneNode()).run(_ctx("download")).text == "converted input on node-1"
    assert steps.prepared == 1


def test_csm_prepares_only_a_voice_to_clone():
    csm = CsmTask(settings=None, downloader=None)
    assert not csm.needs_prepare(parse_job_request(JobType.CSM, {"text": "hi"}))
    assert csm.needs_prepare(parse_job_request(JobType.CSM, {
        "text": "hi", "voice": "clone", "reference_audio_url": "https://x.org/v.wav", "reference_text": "hello"}))
