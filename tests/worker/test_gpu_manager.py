"""GPU management through the worker loop (in-process), against the simulated Comput3 over
HTTP and the moto-backed registry. The simulator's ledger is the evidence: launches,
stops and billed seconds."""

from __future__ import annotations

import time
from functools import partial

import pytest

from chalicelib.context import Context
from chalicelib.fleet.reaper import reap_gpus
from chalicelib.fleet.registry import LAUNCHING, RUNNING, STOPPING, GpuRegistry
from chalicelib.fleet.settings import FleetSettings
from chalicelib.jobs.models import JobStatus
from chalicelib.platform.settings import Settings
from tests.support.fake_gpu_tasks import GPU_FAST
from tests.support.harness import FAST, ThreadWorker, final as final_job, submit, task_events, wait_until
from worker_runtime.gpu import GpuSettings, build_gpu_manager

pytestmark = pytest.mark.integration


@pytest.fixture
def genv(stack_env, c3_sim, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TASK_LOG", str(tmp_path / "tasks.log"))
    return {**stack_env, **GPU_FAST, **c3_sim.worker_env(), "OUTPUT_DIR": str(tmp_path / "out")}


def gpu_worker(env, **overrides):
    """A ThreadWorker whose Worker gets a real GpuManager built from the same settings."""
    full = {**FAST, **env, **overrides}
    worker_id = f"w-{time.monotonic_ns()}"
    ctx = Context(Settings(**full))
    gpu = build_gpu_manager(ctx, worker_id, GpuSettings(**full))
    return ThreadWorker(env, gpu=gpu, WORKER_ID=worker_id, **overrides)


final = partial(final_job, timeout=20.0)


def registry(env):
    ctx = Context(Settings(**env))
    return GpuRegistry(ctx.dynamodb, ctx.settings.gpu_table, time.time)


def nodes_used(log_path, job_id):
    return [e.split("=", 1)[1] for _, e in task_events(log_path, job_id) if e.startswith("node=")]


def test_one_instance_serves_sequential_jobs_and_is_stopped_at_exit(genv, c3_sim, tmp_path):
    with gpu_worker(genv) as tw:
        jobs = []
        for _ in range(3):
            jobs.append(submit(tw.ctx, "csm", {"text": "sleep:0.2"}))
            assert final(tw.ctx, jobs[-1]).status is JobStatus.SUCCESS
        ledger = c3_sim.ledger()
        assert (ledger["launches"], ledger["running"]) == (1, 1)
        workload = ledger["instances"][0]["workload"]
        assert all(nodes_used(tmp_path / "tasks.log", j) == [workload] for j in jobs)
        [record] = registry(genv).all()
        assert (record.workload, record.state, record.busy) == (workload, "running", False)
    ledger = c3_sim.ledger()
    assert (ledger["launches"], ledger["stops"], ledger["running"]) == (1, 1, 0)
    assert registry(genv).all() == []


def test_idle_instance_is_shut_down_and_the_next_job_launches_anew(genv, c3_sim):
    with gpu_worker(genv, GPU_IDLE_TIMEOUT="1") as tw:
        first = submit(tw.ctx, "csm", {"text": "quick"})
        done = final(tw.ctx, first)
        ledger = wait_until(lambda: (l := c3_sim.ledger())["running"] == 0 and l, 10)
        entry = ledger["instances"][0]
        assert entry["ended_by"] == "stop"
        # Kept for the idle timeout (counted from the task's end, just before the job's
        # final write), then stopped: billed far less than until its expires (7200 s).
        assert entry["ended_at"] - done.finished_at >= 0.7
        assert 1 <= entry["billed_seconds"] < 60
        assert registry(genv).all() == []
        second = submit(tw.ctx, "csm", {"text": "quick"})
        assert final(tw.ctx, second).status is JobStatus.SUCCESS
        assert c3_sim.ledger()["launches"] == 2


def test_launch_retries_then_succeeds(genv, c3_sim):
    c3_sim.set_faults(launch_5xx=2, launch_html=1)
    with gpu_worker(genv) as tw:
        job = final(tw.ctx, submit(tw.ctx, "csm", {"text": "quick"}))
        assert job.status is JobStatus.SUCCESS
    ledger = c3_sim.ledger()
    assert (ledger["launch_requests"], ledger["launches"], ledger["stops"]) == (4, 1, 1)


def test_launch_failure_exhausting_retries_fails_the_job(genv, c3_sim):
    c3_sim.set_faults(launch_5xx=2, launch_html=100)
    with gpu_worker(genv) as tw:
        job = final(tw.ctx, submit(tw.ctx, "csm", {"text": "quick"}))
    assert job.status is JobStatus.FAILED
    assert job.error == ("Could not launch a Comput3 GPU (media:fast) after 4 attempts; last error: "
                         f"POST {c3_sim.url}/api/v0/launch answered a non-JSON page "
                         "(HTTP 200, text/html; charset=utf-8)")
    ledger = c3_sim.ledger()
    assert (ledger["launch_requests"], ledger["launch_5xx"], ledger["launch_html"], ledger["launches"]) == (4, 2, 2, 0)
    assert registry(genv).all() == []  # the launch intent was reconciled and removed


def test_refused_key_fails_the_job_without_retrying(genv, c3_sim):
    with gpu_worker({**genv, "C3_API_KEY": "not-the-key"}) as tw:
        job = final(tw.ctx, submit(tw.ctx, "csm", {"text": "quick"}))
    assert job.status is JobStatus.FAILED
    assert job.error == (f"Comput3 refused the API key (HTTP 401 from POST {c3_sim.url}/api/v0/launch): "
                         "check C3_API_KEY")
    ledger = c3_sim.ledger()
    assert (ledger["refused"], ledger["launch_requests"], ledger["launches"]) == (1, 0, 0)
    assert registry(genv).all() == []


@pytest.mark.parametrize("fault", ["die", "hide"])
def test_unhealthy_node_mid_job_fails_the_job_and_stops_the_instance(genv, c3_sim, tmp_path, fault):
    interval, attempts, delay = 0.5, 3, 0.1
    with gpu_worker(genv) as tw:
        job_id = submit(tw.ctx, "csm", {"text": "sleep:30"})
        [workload] = wait_until(lambda: nodes_used(tmp_path / "tasks.log", job_id))  # the task runs on it
        broke_at = time.time()
        c3_sim.node_action(workload, **{fault: True})
        job = final(tw.ctx, job_id)
        assert job.status is JobStatus.FAILED
        # Which check failed, never which node (the log has that: gpu.unhealthy, job.node_fault).
        failed = ("the instance is no longer listed by the Comput3 workloads API" if fault == "hide"
                  else "its health endpoint did not answer 200 OK")
        assert job.error == (f"The GPU node failed its health check during the job ({failed}, {attempts} "
                             "attempts); the instance was stopped"), job.error
        assert workload not in job.error
        # Found by the next monitor round: one interval plus its own retry attempts
        # (slack for a loaded machine), long before the 30 s job would have ended.
        assert job.finished_at - broke_at < interval + attempts * delay + 5
        entry = wait_until(lambda: (e := c3_sim.ledger()["instances"][0])["ended_by"] and e, 10)
        assert entry["ended_by"] == "stop" and c3_sim.ledger()["running"] == 0
        assert registry(genv).all() == []


def test_node_fault_stops_its_instance(genv, c3_sim):
    with gpu_worker(genv) as tw:
        job = final(tw.ctx, submit(tw.ctx, "csm", {"text": "nodefail:model crashed"}))
        assert job.error == "GPU node error during the job's work on the GPU node; the instance was stopped"
        assert wait_until(lambda: c3_sim.ledger()["stops"] == 1, 10)
        assert c3_sim.ledger()["running"] == 0


def test_instance_past_refresh_age_is_replaced_after_its_job(genv, c3_sim):
    with gpu_worker(genv, GPU_LIFETIME="120", GPU_REFRESH_AFTER="1") as tw:
        first = final(tw.ctx, submit(tw.ctx, "csm", {"text": "sleep:1.2"}))
        second = final(tw.ctx, submit(tw.ctx, "csm", {"text": "quick"}))
        assert first.status is JobStatus.SUCCESS and second.status is JobStatus.SUCCESS
        old, new = sorted(c3_sim.ledger()["instances"], key=lambda i: i["launched_at"])
    assert old["ended_by"] == "stop" and old["ended_at"] <= new["launched_at"]
    for entry in (old, new):  # rented with expires = launch + GPU_LIFETIME
        assert abs(entry["expires"] - (entry["launched_at"] + 120)) <= 2


def test_duplicate_from_a_timed_out_launch_is_stopped(genv, c3_sim):
    # The first launch answers after the client gave up, yet Comput3 started it.
    c3_sim.set_faults(launch_delay=2, launch_delay_count=1)
    with gpu_worker(genv, C3_LAUNCH_TIMEOUT="0.5") as tw:
        job = final(tw.ctx, submit(tw.ctx, "csm", {"text": "quick"}))
        assert job.status is JobStatus.SUCCESS
        ledger = wait_until(lambda: (l := c3_sim.ledger())["running"] == 1 and l, 10)
        assert ledger["launches"] == 2
        stray = next(i for i in ledger["instances"] if not i["running"])
        assert stray["ended_by"] == "stop"
        [record] = registry(genv).all()
        assert record.workload != stray["workload"]


def test_intent_is_recorded_before_launch(genv, c3_sim):
    c3_sim.set_faults(launch_delay=1.5)
    with gpu_worker(genv) as tw:
        job_id = submit(tw.ctx, "csm", {"text": "quick"})
        wait_until(lambda: c3_sim.ledger()["launches"] == 1)  # the launch call is in flight
        [intent] = registry(genv).all()
        assert (intent.state, intent.workload, intent.owner) == (LAUNCHING, None, tw.settings.worker_id)
        assert final(tw.ctx, job_id).status is JobStatus.SUCCESS
        [record] = registry(genv).all()
        assert record.id == intent.id and record.expires == intent.expires
        assert record.workload == c3_sim.ledger()["instances"][0]["workload"]


def test_health_checks_cost_one_listing_per_interval_per_worker(genv, c3_sim):
    with gpu_worker(genv, GPU_HEALTH_INTERVAL="0.5") as tw:
        job_id = submit(tw.ctx, "csm", {"text": "sleep:4"})
        started = c3_sim.ledger()["workloads_requests"]
        assert final(tw.ctx, job_id).status is JobStatus.SUCCESS
        # About 8 monitor rounds; the boot poll and the checks before reuse share the listing.
        assert c3_sim.ledger()["workloads_requests"] - started <= 4 / 0.5 + 2


def test_a_slow_stop_does_not_delay_heartbeats(genv, c3_sim):
    """The keeper stops an idle instance through a /stop that takes 4 s while a new job runs
    on another instance: that one's heartbeats go on (their own thread), so the reaper
    (GPU_OWNER_GRACE=3) never takes it for abandoned."""
    c3_sim.set_faults(stop_delay=4)
    with gpu_worker(genv, GPU_IDLE_TIMEOUT="0.5") as tw:
        reg = registry(genv)
        assert final(tw.ctx, submit(tw.ctx, "csm", {"text": "quick"})).status is JobStatus.SUCCESS
        [old] = wait_until(lambda: [r for r in reg.all() if r.state == STOPPING], 10)  # the slow stop began
        job_id = submit(tw.ctx, "csm", {"text": "sleep:7"})
        [new] = wait_until(lambda: [r for r in reg.all() if r.state == RUNNING and r.busy], 10)
        silences, began = [], time.time()
        while reg.get(old.id) is not None:  # the stop is still in flight
            silences.append(time.time() - reg.get(new.id).heartbeat)
            time.sleep(0.2)  # sampling period of the observation, not a wait for a condition
        assert time.time() - began >= 2 and max(silences) < 2.0  # heartbeats every 0.5 s throughout
        assert reap_gpus(reg, FleetSettings(**genv))["stopped"] == 0
        assert reg.get(new.id).state == RUNNING
        assert final(tw.ctx, job_id).status is JobStatus.SUCCESS
        ledger = c3_sim.ledger()
        stopped = [i["workload"] for i in ledger["instances"] if i["ended_by"] == "stop"]
        assert stopped[:1] == [old.workload] and new.workload not in stopped[:1]
