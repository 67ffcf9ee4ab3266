"""GPU instances across real worker processes: SIGTERM, SIGKILL, workers starting together.
Evidence: the simulated Comput3's ledger and the GPU registry in DynamoDB."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from chalicelib.context import Context
from chalicelib.fleet.registry import LAUNCHING, RUNNING, GpuRegistry
from chalicelib.jobs.models import JobStatus
from chalicelib.platform.settings import Settings
from tests.support import emf, procs
from tests.support.fake_gpu_tasks import GPU_FAST
from tests.support.harness import final, start_worker_process, submit, task_events, wait_until

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


def start_scheduled_handlers(workers, env, tmp_path):
    """The API's schedule handlers (gpu_reaper among them) as `make run` runs them: the
    local Lambda poller process, every 0.5 s instead of every minute."""
    p = procs.start([sys.executable, "-m", "infra.local.lambda_poller"], log_path=tmp_path / "poller.log",
                    env={**env, "LOCAL_SCHEDULE_INTERVAL": "0.5", "LAMBDA_POLL_WAIT_SECONDS": "1"})
    workers.append(p)
    return p


def registry(env):
    ctx = Context(Settings(**env))
    return GpuRegistry(ctx.dynamodb, ctx.settings.gpu_table, time.time)


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


def test_workers_scaled_to_zero_the_scheduled_reaper_stops_what_they_left(penv, tmp_path, workers, c3_sim):
    penv = {**penv, "GPU_IDLE_TIMEOUT": "4"}
    _, a, b = two_workers_with_an_instance_each(penv, tmp_path, workers, c3_sim)
    for p in (a, b):  # every worker process dies at once (SIGKILL: no shutdown, no stop)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    assert c3_sim.ledger()["running"] == 2  # no worker left to stop them
    last_used = max(r.last_used for r in registry(penv).all())
    start_scheduled_handlers(workers, penv, tmp_path)  # no worker runs from here on
    ledger = wait_until(lambda: (l := c3_sim.ledger())["running"] == 0 and l, 60)
    assert (ledger["launches"], ledger["stops"]) == (2, 2)
    for entry in ledger["instances"]:
        # Idle instances are anyone's to adopt: stopped at GPU_IDLE_TIMEOUT, not at owner silence.
        assert entry["ended_by"] == "stop" and entry["ended_at"] - last_used >= 3.5
        assert entry["billed_seconds"] < 120
    wait_until(lambda: registry(penv).all() == [], 10)  # deleted just after Comput3 confirms
    assert "gpu.reaping" in (tmp_path / "poller.log").read_text()
    # The metrics add up to the bill: launches from the workers, billed seconds metered by the
    # reaper's passes and stops (each second once), idle seconds since the jobs ended.
    points = emf.read(tmp_path / "a.log", tmp_path / "b.log", tmp_path / "poller.log")
    assert sum(p.value for p in emf.named(points, "GpuLaunches")) == 2
    billed = sum(p.value for p in emf.named(points, "GpuBilledSeconds"))
    assert abs(billed - ledger["billed_seconds"]) < 3.0, (billed, ledger["billed_seconds"])
    assert len(emf.named(emf.read(tmp_path / "poller.log"), "GpuBilledSeconds")) > 2  # metered while running
    idle = sum(p.value for p in emf.named(points, "GpuIdleSeconds"))
    assert 2 * 3.5 <= idle <= billed


def test_an_idle_instance_serves_whichever_worker_gets_the_job(penv, tmp_path, workers, c3_sim):
    ctx = Context(Settings(**penv))
    a = spawn(workers, penv, tmp_path, "a")
    assert final(ctx, submit(ctx, "csm", {"text": "quick"})).status is JobStatus.SUCCESS
    b = spawn(workers, penv, tmp_path, "b")
    for _ in range(3):  # one at a time: one idle instance is always there, whoever gets the job
        assert final(ctx, submit(ctx, "csm", {"text": "quick"})).status is JobStatus.SUCCESS
    os.kill(a.pid, signal.SIGKILL)  # its owner dies (or scales in): the instance is still anyone's
    a.wait()
    last = submit(ctx, "csm", {"text": "quick"})
    assert final(ctx, last).status is JobStatus.SUCCESS
    assert [pid for pid, e in task_events(tmp_path / "tasks.log", last) if e == "start"] == [b.pid]
    ledger = c3_sim.ledger()
    assert (ledger["launches"], ledger["running"]) == (1, 1)
    [record] = registry(penv).all()
    assert record.workload == ledger["instances"][0]["workload"]
    assert "gpu.adopted" in (tmp_path / "b.log").read_text()


def test_workers_starting_together_with_max_gpus_1_launch_once(penv, tmp_path, workers, c3_sim):
    penv = {**penv, "MAX_GPUS": "1"}
    ctx = Context(Settings(**penv))
    jobs = [submit(ctx, "csm", {"text": "sleep:0.3"}) for _ in range(3)]
    for name in ("a", "b", "c"):
        workers.append(start_worker_process(penv, tmp_path / f"{name}.log"))
    assert all(final(ctx, j, timeout=60).status is JobStatus.SUCCESS for j in jobs)
    ledger = c3_sim.ledger()
    assert (ledger["launch_requests"], ledger["launches"], ledger["running"]) == (1, 1, 1)
    runners = {pid for j in jobs for pid, e in task_events(tmp_path / "tasks.log", j) if e == "start"}
    assert len(runners) >= 2  # the others waited for the one instance, then adopted it


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
    the call lets the scheduled reaper find the instance (by its expires) and stop it."""
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
    start_scheduled_handlers(workers, penv, tmp_path)
    assert final(ctx, job_id).status is JobStatus.SUCCESS  # taken over by b on its own instance
    ledger = wait_until(lambda: (l := c3_sim.ledger())["stops"] == 1 and l, 30)
    stopped = next(i for i in ledger["instances"] if i["workload"] == orphan["workload"])
    assert stopped["ended_by"] == "stop"
    assert (ledger["launches"], ledger["running"]) == (2, 1)
    [record] = registry(penv).all()
    assert record.state == RUNNING and record.workload != orphan["workload"]
    # Its billed seconds still reach the metrics: from the intent's creation to the sweep's stop.
    points = emf.read(tmp_path / "poller.log", tmp_path / "a.log", tmp_path / "b.log")
    [swept] = emf.named(points, "GpuBilledSeconds", workload=orphan["workload"])
    assert swept.get("unrecorded") is True
    assert abs(swept.value - stopped["billed_seconds"]) < 2.0, (swept.value, stopped["billed_seconds"])
