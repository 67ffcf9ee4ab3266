"""GPU edge cases (issue 21): abandoned launches, lost adoption races, workloads the
registry does not know. GpuManagers built as the worker builds them, against the simulated
Comput3 over HTTP and the moto-backed registry; the simulator's ledger is the evidence."""

from __future__ import annotations

import time

import pytest

from chalicelib.context import Context
from chalicelib.fleet.registry import LAUNCHING, RUNNING, GpuRegistry
from chalicelib.platform.logs import get_logger
from chalicelib.platform.settings import Settings
from tests.support.fake_gpu_tasks import GPU_FAST
from tests.support.harness import FAST, ThreadWorker, final, service, submit, wait_until
from tests.support.node_apps import run_in_thread
from worker_runtime.cancel import CancelToken, TaskCancelled
from worker_runtime.gpu import GpuError, GpuSettings, build_gpu_manager
from worker_runtime.stops import Stop

pytestmark = pytest.mark.integration


@pytest.fixture
def genv(stack_env, c3_sim):
    return {**FAST, **stack_env, **GPU_FAST, **c3_sim.worker_env()}


def manager(env, **overrides):
    full = {**env, **overrides}
    ctx = Context(Settings(**full))
    return build_gpu_manager(ctx, f"w-{time.monotonic_ns()}", GpuSettings(**full)), ctx


def registry(env):
    ctx = Context(Settings(**env))
    return GpuRegistry(ctx.dynamodb, ctx.settings.gpu_table, time.time)


def test_a_cancel_during_a_hanging_launch_leaves_the_next_job_its_own_launch(genv, c3_sim):
    """Job A's launch call hangs; A is cancelled and returns at once (before Comput3 answers);
    job B launches meanwhile. A's late answer must not take B's intent (B fails with "could
    not be recorded" on the old code): B runs on its own instance, A's instance is recorded
    for the pool, and no intent is left orphaned."""
    gpu, _ = manager(genv, C3_LAUNCH_TIMEOUT="30")
    log = get_logger("test")
    try:
        c3_sim.set_faults(launch_delay=3, launch_delay_count=1)
        token_a = CancelToken()

        seen: dict = {}

        def job_a():
            try:
                return gpu.acquire("job-a", token_a, log)
            finally:  # what the registry shows the moment A's acquire returned
                seen["records"] = registry(genv).all()

        thread_a, box_a = run_in_thread(job_a)
        wait_until(lambda: c3_sim.ledger()["launches"] == 1)  # A's launch call is in flight
        token_a.cancel("cancelled by the client", Stop.CLIENT)
        c3_sim.set_faults(launch_delay=6, launch_delay_count=1)  # B's launch answers after A's
        thread_b, box_b = run_in_thread(lambda: gpu.acquire("job-b", CancelToken(), log))
        thread_a.join(10)
        assert isinstance(box_a.get("error"), TaskCancelled)
        # A returned while its launch was still unanswered: no record knows a workload yet.
        assert seen["records"] and all(r.state == LAUNCHING and r.workload is None for r in seen["records"])
        thread_b.join(20)
        assert "error" not in box_b, box_b.get("error")
        node_b = box_b["result"]
        first, second = sorted(c3_sim.ledger()["instances"], key=lambda i: i["launched_at"])
        assert node_b.workload == second["workload"]
        # A's late answer is recorded (idle, for any job), every record known, none orphaned.
        records = wait_until(lambda: len(rs := registry(genv).all()) == 2
                             and all(r.state == RUNNING and r.workload for r in rs) and rs, 10)
        by_workload = {r.workload: r for r in records}
        assert set(by_workload) == {first["workload"], second["workload"]}
        assert by_workload[second["workload"]].busy
        wait_until(lambda: registry(genv).get(by_workload[first["workload"]].id).idle, 10)
        assert c3_sim.ledger()["running"] == 2
    finally:
        gpu.shutdown()


def test_an_adoption_that_loses_a_race_to_a_heartbeat_retries_before_launching(genv, c3_sim):
    """B adopts A's idle instance; A's heartbeat bumps the record's version between B's read
    and B's conditional write (injected over the wire, at B's adopting UpdateItem). The
    record is still idle: B re-reads and adopts it instead of launching a second instance."""
    gpu_a, ctx = manager(genv)
    gpu_b, _ = manager(genv)
    log = get_logger("test")
    raced: list[str] = []

    def heartbeat_first(params, **_):
        values = params.get("ExpressionAttributeValues", {})
        if ":idle" in values and values.get(":set_owner") == {"S": gpu_b.worker_id} and not raced:
            raced.append(params["Key"]["id"]["S"])
            gpu_a.heartbeat.beat()  # a real heartbeat write of A's, landing first

    events = ctx.dynamodb.meta.events
    events.register("before-parameter-build.dynamodb.UpdateItem", heartbeat_first)
    try:
        node_a = gpu_a.acquire("job-a", CancelToken(), log)
        assert gpu_a.release("job-a", None) is False  # idle again, still A's
        node_b = gpu_b.acquire("job-b", CancelToken(), log)
        assert raced  # the race happened
        assert node_b.workload == node_a.workload
        ledger = c3_sim.ledger()
        assert (ledger["launch_requests"], ledger["running"]) == (1, 1)
        [record] = registry(genv).all()
        assert (record.owner, record.busy) == (gpu_b.worker_id, True)
    finally:
        events.unregister("before-parameter-build.dynamodb.UpdateItem", heartbeat_first)
        gpu_a.shutdown()
        gpu_b.shutdown()


def test_a_launch_answering_200_with_an_unexpected_body_leaves_no_instance_running(genv, c3_sim):
    """Comput3 started an instance but its answer names none: the job fails readably, and the
    instance is found by the intent's expires and stopped (the old code deleted the intent
    and left it billing until its rental's end)."""
    c3_sim.set_faults(launch_odd_body=1)
    gpu, _ = manager(genv)
    try:
        with pytest.raises(GpuError) as err:
            gpu.acquire("job-a", CancelToken(), get_logger("test"))
        assert "answer lacks 'workload' or 'node'" in str(err.value)
        ledger = wait_until(lambda: (l := c3_sim.ledger())["launches"] == 1 and l["running"] == 0 and l, 10)
        assert (ledger["launch_requests"], ledger["launch_odd_body"]) == (1, 1)  # never retried
        assert ledger["instances"][0]["ended_by"] == "stop"
        assert registry(genv).all() == []
    finally:
        gpu.shutdown()


# -- cancelled work on the node ------------------------------------------------------------


def app_worker(env, sim, **overrides):
    full = {**FAST, **env, **GPU_FAST, **sim.worker_env(), "WORKER_TASKS": "worker_runtime.tasks:default_tasks",
            **overrides}
    worker_id = f"w-{time.monotonic_ns()}"
    gpu = build_gpu_manager(Context(Settings(**full)), worker_id, GpuSettings(**full))
    return ThreadWorker(full, gpu=gpu, WORKER_ID=worker_id)


def node_events(sim, workload, app, event):
    return [r for r in sim.node(workload)["requests"] if r["app"] == app and r["event"] == event]


def cancel_mid_render(tw, sim, slow_seconds):
    """Job A renders slowly on the node (it reports progress); the client cancels it once the
    worker has seen some. Returns A's id and the instance."""
    sim.set_faults(node={"csm": "slow", "slow_seconds": slow_seconds})
    job_a = submit(tw.ctx, "csm", {"text": "A long monologue."})
    wait_until(lambda: (tw.ctx.store.get(job_a).progress or 0) > 0, 30)
    [instance] = sim.ledger()["instances"]
    service(tw.ctx).update(job_a, "anonymous", {"status": "cancelled"})
    sim.node_action(instance["workload"], faults={"csm": None})  # the next call renders at once
    return job_a, instance["workload"]


def test_a_node_busy_with_cancelled_work_waits_for_it_before_the_next_job(stack_env, sim_with_apps, tmp_path):
    """Gradio cannot stop A's running call: the worker keeps the instance from B (MAX_GPUS=1:
    B waits, phase waiting_for_node) until A's work has run its course, then B runs on it.
    The old code handed the node to B at once, whose call then waited behind A's on the GPU."""
    sim = sim_with_apps
    with app_worker({**stack_env, "OUTPUT_DIR": str(tmp_path / "out")}, sim, MAX_GPUS="1",
                    GPU_CANCELLED_WORK_LIMIT="60") as tw:
        job_a, workload = cancel_mid_render(tw, sim, slow_seconds=5)
        job_b = submit(tw.ctx, "csm", {"text": "Short."})
        done = final(tw.ctx, job_b, 60)
        assert done.status.value == "success", done.error
        assert "waiting_for_node" in (done.phases or {})
        [a_finished] = node_events(sim, workload, "csm", "finished")[:1]
        b_request = node_events(sim, workload, "csm", "request")[1]
        assert b_request["at"] >= a_finished["at"]  # B was sent only once A's work had ended
        ledger = sim.ledger()
        assert (ledger["launches"], ledger["stops"]) == (1, 0)


def test_cancelled_work_past_the_limit_stops_the_instance(stack_env, sim_with_apps, tmp_path):
    """A's cancelled call would hold the node ~25 s more, past GPU_CANCELLED_WORK_LIMIT=2: the
    instance is stopped at once and B gets a fresh one (the old code kept it, and B waited)."""
    sim = sim_with_apps
    with app_worker({**stack_env, "OUTPUT_DIR": str(tmp_path / "out")}, sim, MAX_GPUS="1",
                    GPU_CANCELLED_WORK_LIMIT="2") as tw:
        job_a, workload = cancel_mid_render(tw, sim, slow_seconds=30)
        ledger = wait_until(lambda: (l := sim.ledger())["stops"] == 1 and l, 20)
        assert [i["ended_by"] for i in ledger["instances"] if i["workload"] == workload] == ["stop"]
        job_b = submit(tw.ctx, "csm", {"text": "Short."})
        done = final(tw.ctx, job_b, 60)
        assert done.status.value == "success", done.error
        assert sim.ledger()["launches"] == 2


def test_with_a_free_slot_the_next_job_launches_rather_than_wait_for_cancelled_work(stack_env, sim_with_apps,
                                                                                       tmp_path):
    """MAX_GPUS=2: while A's cancelled call still runs on its node, B gets a new instance at
    once (the old code sent B to the busy node, where its call waited behind A's)."""
    sim = sim_with_apps
    with app_worker({**stack_env, "OUTPUT_DIR": str(tmp_path / "out")}, sim, MAX_GPUS="2",
                    GPU_CANCELLED_WORK_LIMIT="60") as tw:
        job_a, busy = cancel_mid_render(tw, sim, slow_seconds=8)
        job_b = submit(tw.ctx, "csm", {"text": "Short."})
        done = final(tw.ctx, job_b, 60)
        assert done.status.value == "success", done.error
        ledger = sim.ledger()
        assert ledger["launches"] == 2
        [fresh] = [i["workload"] for i in ledger["instances"] if i["workload"] != busy]
        assert len(node_events(sim, fresh, "csm", "request")) == 1  # B ran on the new instance
        assert len(node_events(sim, busy, "csm", "request")) == 1  # and never on A's
