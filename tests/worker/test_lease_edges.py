"""The worker's edges after the task (issue 21): the result upload and the final write run
under lease renewal, and the health file is a signal that never fails a job or the worker.
Faults on the wire: the fault proxy in front of moto stalls the result's S3 PUT."""

from __future__ import annotations

import time

import pytest

from chalicelib.context import Context
from chalicelib.jobs.models import JobStatus
from chalicelib.platform.settings import Settings
from infra.local.fault_proxy import Rule
from tests.support.harness import ThreadWorker, start_worker_process, submit, wait_until
from tests.system.test_durability import children, via  # noqa: F401 - fixture

pytestmark = pytest.mark.integration
LEASE = 3


@pytest.fixture
def wenv(stack_env, tmp_path):
    return {**stack_env, "OUTPUT_DIR": str(tmp_path / "out"), "FAKE_TASK_LOG": str(tmp_path / "tasks.log"),
            "LEASE_SECONDS": str(LEASE)}


def test_a_slow_result_upload_keeps_the_lease(wenv, fault_proxy, children, tmp_path):  # noqa: F811
    """The result's PUT hangs for longer than the lease: the worker goes on renewing it (the
    old code did not, so the lease lapsed mid-upload and another worker could take the job
    over), then finishes the job on its first attempt."""
    ctx = Context(Settings(**wenv))
    hold = fault_proxy.add(Rule(service="s3", operation="PUT", action="stall"))
    children.append(start_worker_process({**wenv, **via(fault_proxy)}, tmp_path / "w.log", WORKER_ID="w-upload"))
    job_id = submit(ctx, "csm", {"text": "quick"})
    assert hold.stalled.wait(30), "the worker never uploaded the result"
    stalled_at = time.time()
    # Renewed during the upload: the lease reaches past the one taken before it.
    wait_until(lambda: ctx.store.get(job_id).lease_expires > stalled_at + LEASE + 1, 3 * LEASE)
    fault_proxy.clear()  # the PUT is answered by a reset: boto3 retries it
    job = wait_until(lambda: (j := ctx.store.get(job_id)).status.is_terminal and j, 30)
    assert (job.status, job.attempts, job.worker) == (JobStatus.SUCCESS, 1, "w-upload")


def test_a_health_file_that_cannot_be_written_fails_no_job_and_stops_no_worker(wenv, tmp_path):
    unwritable = tmp_path / "missing-dir" / "health"  # its directory does not exist
    with ThreadWorker(wenv, WORKER_HEALTH_FILE=str(unwritable), LEASE_SECONDS="3") as tw:
        jobs = [submit(tw.ctx, "csm", {"text": "sleep:1.5"}), submit(tw.ctx, "csm", {"text": "quick"})]
        done = [wait_until(lambda j=j: (x := tw.ctx.store.get(j)).status.is_terminal and x, 30) for j in jobs]
        assert [j.status for j in done] == [JobStatus.SUCCESS, JobStatus.SUCCESS]
        assert tw.thread.is_alive()
    assert not unwritable.exists()
