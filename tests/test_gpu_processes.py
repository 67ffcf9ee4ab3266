"""GPU instances across real worker processes: SIGTERM, SIGKILL, workers starting together.
Evidence: the simulated Comput3's ledger and the GPU registry in DynamoDB."""

from __future__ import annotations

import os
import signal
import time

import pytest

from chalicelib.context import Context
from chalicelib.models import JobStatus
from chalicelib.settings import Settings
from tests.support.fake_gpu_tasks import GPU_FAST
from tests.support.harness import start_worker_process, submit, task_events, wait_until
from worker_runtime.gpu.registry import LAUNCHING, RUNNING, GpuRegistry

pytestmark = pytest.mark.integration


@pytest.fixture
def penv(stack_env, c3_sim, tmp_path):
    return {**stack_env, **GPU_FAST, **c3_sim.worker_env(), "OUTPUT_DIR": str(tmp_path / "out"),
            "FAKE_TASK_LOG": str(tmp_path / "tasks.log"), "LEASE_SECONDS": "3", "RENDER_POLLING_INTERVAL": "0.3"}


def spawn(workers, env, tmp_path, name, **extra):
    p = start_worker_process(env, tmp_path / f"{name}.log", **extra)
    workers.append(p)
    wait_until(lambda: "worker.started" in (tmp_path / f"{name}.log").read_text(), 30)
    return p


def registry(env):
    ctx = Context(Settings(**env))
    return GpuRegistry(ctx.dynamodb, ctx.settings.gpu_table, time.time)


def final(ctx, job_id, timeout=30.0):
    return wait_until(lambda: (j := ctx.store.get(job_id)) and j.status.is_terminal and j, timeout)


def running_on_node(tmp_path, job_id):
    return [e for _, e in task_events(tmp_path / "tasks.log", job_id) if e.startswith("node=")]


def two_workers_with_an_instance_each(penv, tmp_path, workers, c3_sim):
    ctx = Context(Settings(**penv))
    a = spawn(workers, penv, tmp_path, "a")
    b = spawn(workers, penv, tmp_path, "b")
    jobs = [submit(ctx, "csm", {"text": "sleep:2"}) for _ in range(2)]
    assert all(final(ctx, j).status is JobStatus.SUCCESS for j in jobs)
    runners = {pid for j in jobs for pid, e in task_events(tmp_path / "tasks.log", j) if e == "start"}
    assert runners == {a.pid, b.pid}  # one job each, at the same time
    return ctx, a, b


def test_two_workers_starting_together_launch_one_instance_each(penv, tmp_path, workers, c3_sim):
    ctx, a, b = two_workers_with_an_instance_each(penv, tmp_path, workers, c3_sim)
    ledger = c3_sim.ledger()
    assert (ledger["launches"], ledger["running"]) == (2, 2)
    records = registry(penv).all()
    assert len({r.owner for r in records}) == 2 and {r.state for r in records} == {RUNNING}
    # More work for both: each reuses its own instance, never a third launch.
    more = [submit(ctx, "csm", {"text": "sleep:0.5"}) for _ in range(4)]
    assert all(final(ctx, j).status is JobStatus.SUCCESS for j in more)
    assert c3_sim.ledger()["launches"] == 2


def test_sigkill_of_every_worker_leaves_orphans_that_the_next_worker_stops(penv, tmp_path, workers, c3_sim):
    _, a, b = two_workers_with_an_instance_each(penv, tmp_path, workers, c3_sim)
    for p in (a, b):
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    killed_at = time.time()
    assert c3_sim.ledger()["running"] == 2  # nobody left to stop them
    spawn(workers, penv, tmp_path, "c")
    ledger = wait_until(lambda: (l := c3_sim.ledger())["running"] == 0 and l, 30)
    assert (ledger["launches"], ledger["stops"]) == (2, 2)
    for entry in ledger["instances"]:
        # Stopped once the owners' silence passed GPU_OWNER_GRACE (3 s), not at expires.
        assert entry["ended_by"] == "stop" and entry["ended_at"] - killed_at >= 2
        assert entry["billed_seconds"] < 120
    assert registry(penv).all() == []


@pytest.mark.parametrize("when", ["idle", "mid-job"])
def test_sigterm_stops_the_instance(penv, tmp_path, workers, c3_sim, when):
    ctx = Context(Settings(**penv))
    job_id = submit(ctx, "csm", {"text": "quick" if when == "idle" else "sleep:30"})
    a = spawn(workers, penv, tmp_path, "a", SHUTDOWN_GRACE="0.5")
    if when == "idle":
        assert final(ctx, job_id).status is JobStatus.SUCCESS
    else:
        wait_until(lambda: running_on_node(tmp_path, job_id), 20)
    assert c3_sim.ledger()["running"] == 1
    a.send_signal(signal.SIGTERM)
    assert a.wait(timeout=20) == 0
    ledger = c3_sim.ledger()
    assert (ledger["launches"], ledger["stops"], ledger["running"]) == (1, 1, 0)
    assert ledger["instances"][0]["ended_by"] == "stop"
    assert registry(penv).all() == []
    if when == "mid-job":
        assert ctx.store.get(job_id).status is JobStatus.QUEUED  # handed back for another worker


def test_sigkill_mid_launch_the_unrecorded_instance_is_found_and_stopped(penv, tmp_path, workers, c3_sim):
    """Killed between the launch call and recording its answer: the intent written before
    the call lets the next worker find the instance (by its expires) and stop it."""
    c3_sim.set_faults(launch_delay=30, launch_delay_count=1)
    ctx = Context(Settings(**penv))
    job_id = submit(ctx, "csm", {"text": "quick"})
    a = spawn(workers, penv, tmp_path, "a")
    wait_until(lambda: c3_sim.ledger()["launches"] == 1, 20)
    [intent] = registry(penv).all()
    assert intent.state == LAUNCHING and intent.workload is None
    os.kill(a.pid, signal.SIGKILL)
    a.wait()
    orphan = c3_sim.ledger()["instances"][0]
    assert orphan["running"] and orphan["expires"] == intent.expires
    spawn(workers, penv, tmp_path, "b")
    assert final(ctx, job_id).status is JobStatus.SUCCESS  # taken over by b on its own instance
    ledger = wait_until(lambda: (l := c3_sim.ledger())["stops"] == 1 and l, 30)
    stopped = next(i for i in ledger["instances"] if i["workload"] == orphan["workload"])
    assert stopped["ended_by"] == "stop"
    assert (ledger["launches"], ledger["running"]) == (2, 1)
    [record] = registry(penv).all()
    assert record.state == RUNNING and record.workload != orphan["workload"]
