"""The elastic GPU pool (chalicelib/fleet/pool.py): its decisions on registry snapshots, the
race between a stop and an adoption, and a burst on real worker processes, with the
simulated Comput3's ledger as the evidence."""

from __future__ import annotations

import threading
import time

import pytest

from chalicelib.context import Context
from chalicelib.fleet.pool import Demand, idle_to_stop, read_demand, slots_to_launch
from chalicelib.fleet.reaper import Reaper
from chalicelib.fleet.registry import LAUNCHING, RUNNING, STOPPING, GpuRecord, GpuRegistry, RecordLost
from chalicelib.fleet.settings import FleetSettings
from chalicelib.jobs.models import JobStatus
from chalicelib.platform.logs import get_logger
from chalicelib.platform.settings import Settings
from tests.fleet.test_gpu_processes import penv, registry, spawn, start_scheduled_handlers  # noqa: F401 - fixture
from tests.support.fake_gpu_tasks import GPU_FAST
from tests.support.harness import submit, task_events, wait_until

NOW = 10_000.0
SETTINGS = FleetSettings(GPU_IDLE_TIMEOUT=300, GPU_SURPLUS_IDLE=30, GPU_WARM_SPARES=1)


def rec(slot: int, state: str = RUNNING, busy: bool = False, idle_for: float = 0.0, age: float = 100.0,
        ahead: bool = False) -> GpuRecord:
    launched = NOW - age
    return GpuRecord(id=f"gpu-slot-{slot}", state=state, owner="w", heartbeat=NOW, version=1,
                     expires=int(launched) + 7200, type="media:fast", created_at=launched,
                     workload=None if state == LAUNCHING else f"wl-{slot}", node="n",
                     launched_at=launched, last_used=NOW - idle_for, busy=busy, serial=str(slot), ahead=ahead)


# -- decisions -------------------------------------------------------------------------
def test_idle_surplus_stops_after_surplus_idle_keeping_the_youngest_as_spare():
    records = [rec(0, idle_for=40, age=900), rec(1, idle_for=40, age=100), rec(2, idle_for=40, age=500),
               rec(3, busy=True)]
    stops = idle_to_stop(records, Demand(queued=0, running=1), SETTINGS, NOW)
    assert sorted(r.id for r, _ in stops) == ["gpu-slot-0", "gpu-slot-2"]  # the youngest (slot 1) stays
    assert all("surplus: idle for 40 s" in why and "GPU_SURPLUS_IDLE=30" in why for _, why in stops)


def test_nothing_stops_inside_the_surplus_window_or_while_jobs_wait():
    records = [rec(0, idle_for=20), rec(1, idle_for=20, age=50)]
    assert idle_to_stop(records, Demand(queued=0, running=0), SETTINGS, NOW) == []
    records = [rec(0, idle_for=60), rec(1, idle_for=60, age=50)]
    assert idle_to_stop(records, Demand(queued=1, running=0), SETTINGS, NOW) == []  # 1 waits + 1 spare


def test_the_spare_keeps_the_idle_timeout_and_unknown_demand_stops_only_by_it():
    [(spare, why)] = idle_to_stop([rec(0, idle_for=301)], Demand(0, 0), SETTINGS, NOW)
    assert "GPU_IDLE_TIMEOUT=300" in why
    assert idle_to_stop([rec(0, idle_for=200), rec(1, idle_for=200)], None, SETTINGS, NOW) == []


def test_launches_ahead_cover_the_queue_within_workers_and_max_gpus():
    slots, why = slots_to_launch([rec(3, idle_for=1)], Demand(queued=10, running=0, workers=3), max_gpus=10)
    assert slots == [0, 1] and "10 queued" in why  # 3 free workers: 1 idle + 2 launches
    # Jobs the workers hold are theirs to cover: only free workers' next jobs launch ahead.
    assert slots_to_launch([], Demand(queued=7, running=3, workers=3), 10)[0] == []
    assert slots_to_launch([rec(5, busy=True)], Demand(queued=7, running=1, workers=3), 10)[0] == [0, 1]
    slots, _ = slots_to_launch([], Demand(queued=10, running=0, workers=None), max_gpus=4)
    assert slots == [0, 1, 2, 3]
    booting = [rec(0, state=LAUNCHING, ahead=True), rec(1, busy=True)]
    assert slots_to_launch(booting, Demand(queued=1, running=1, workers=5), 10)[0] == []  # covered
    assert slots_to_launch([rec(0, busy=True)], Demand(queued=0, running=1, workers=5), 10)[0] == []


# -- the race: a stop and an adoption decided from the same snapshot -------------------
@pytest.mark.integration
def test_a_stop_and_an_adoption_at_once_exactly_one_wins(stack_env):
    ctx = Context(Settings(**stack_env))
    registry = GpuRegistry(ctx.dynamodb, ctx.settings.gpu_table, time.time)
    log = get_logger("test.pool")
    deciders = [Reaper(None, registry, SETTINGS, f"decider-{i}", time.time, log) for i in range(2)]  # type: ignore[arg-type]
    for round_ in range(15):
        intent = registry.create_intent("w", 4_000_000_000 + round_, "media:fast", slot=round_)
        snapshot = registry.update(intent, state=RUNNING, workload=f"wl-{round_}", node="n",
                                   launched_at=time.time(), last_used=time.time() - 60, busy=False)
        results: dict[str, object] = {}
        barrier = threading.Barrier(3)

        def stop(i: int) -> None:
            barrier.wait()
            results[f"stop{i}"] = deciders[i].claim(snapshot, "surplus (test)")

        def adopt() -> None:
            barrier.wait()
            try:
                results["adopt"] = registry.update(snapshot, require_idle=True, owner="job-worker", busy=True)
            except RecordLost:
                results["adopt"] = None

        threads = [threading.Thread(target=stop, args=(0,)), threading.Thread(target=stop, args=(1,)),
                   threading.Thread(target=adopt)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [k for k, v in results.items() if v is not None]
        assert len(winners) == 1, results
        stored = registry.get(snapshot.id)
        if winners == ["adopt"]:
            assert (stored.state, stored.busy, stored.owner) == (RUNNING, True, "job-worker")
            # A decider holding the old (idle) snapshot can never stop it now.
            assert deciders[0].claim(snapshot, "stale") is None
        else:
            assert stored.state == STOPPING and not stored.busy
            with pytest.raises(RecordLost):  # no job can be handed an instance being stopped
                registry.update(snapshot, require_idle=True, owner="job-worker", busy=True)


# -- real worker processes and the scheduled reaper ----------------------------------
def ended(ledger):
    return sorted((i for i in ledger["instances"] if not i["running"]), key=lambda i: i["ended_at"])


@pytest.mark.integration
def test_a_burst_scales_out_then_in_to_one_spare_which_stops_at_the_idle_timeout(penv, tmp_path, workers, c3_sim):  # noqa: F811
    surplus, idle_timeout, interval = 2.0, 8.0, 0.5
    penv = {**penv, "GPU_SURPLUS_IDLE": str(surplus), "GPU_IDLE_TIMEOUT": str(idle_timeout), "MAX_GPUS": "5"}
    ctx = Context(Settings(**penv))
    for name in ("a", "b", "c"):
        spawn(workers, penv, tmp_path, name)
    start_scheduled_handlers(workers, penv, tmp_path)
    burst = [submit(ctx, "csm", {"text": "sleep:0.5"}) for _ in range(10)]
    done = [wait_until(lambda j=j: (x := ctx.store.get(j)) and x.status.is_terminal and x, 60) for j in burst]
    assert all(j.status is JobStatus.SUCCESS for j in done)
    last = max(j.finished_at for j in done)
    ledger = c3_sim.ledger()
    assert 1 <= ledger["launches"] <= 3  # one instance per worker at most, never one per job

    # All but one stop within GPU_SURPLUS_IDLE (+ one reap interval and the stop call).
    ledger = wait_until(lambda: (l := c3_sim.ledger())["running"] <= 1 and l, surplus + 10)
    assert ledger["running"] == 1
    for entry in ended(ledger):
        assert entry["ended_by"] == "stop" and entry["ended_at"] - last <= surplus + interval + 3
    # No instance stopped while a job ran on it: every job on it had finished first.
    for entry in ledger["instances"]:
        used = [j for j in done if f"node={entry['workload']}" in
                [e for _, e in task_events(tmp_path / "tasks.log", j.id)]]
        assert all(entry["ended_at"] is None or entry["ended_at"] >= j.finished_at - 0.5 for j in used)
    logs = "".join((tmp_path / f"{n}.log").read_text() for n in ("a", "b", "c", "poller"))
    assert "surplus: idle for" in logs and "GPU_SURPLUS_IDLE=2" in logs

    # A job in the spare's idle window reuses it: no launch.
    launches = ledger["launches"]
    again = submit(ctx, "csm", {"text": "quick"})
    assert wait_until(lambda: (x := ctx.store.get(again)).status.is_terminal and x, 30).status is JobStatus.SUCCESS
    assert c3_sim.ledger()["launches"] == launches
    reused_at = time.time()

    # The spare stops at the idle timeout, not at the surplus one.
    ledger = wait_until(lambda: (l := c3_sim.ledger())["running"] == 0 and l, idle_timeout + 15)
    spare = ended(ledger)[-1]
    assert spare["ended_at"] - reused_at >= idle_timeout - 1.0
    assert "GPU_IDLE_TIMEOUT=8" in "".join((tmp_path / f"{n}.log").read_text() for n in ("a", "b", "c", "poller"))


@pytest.mark.integration
def test_a_job_arriving_in_the_surplus_window_reuses_an_idle_instance(penv, tmp_path, workers, c3_sim):  # noqa: F811
    penv = {**penv, "GPU_SURPLUS_IDLE": "6", "GPU_IDLE_TIMEOUT": "30"}
    ctx = Context(Settings(**penv))
    for name in ("a", "b"):
        spawn(workers, penv, tmp_path, name)
    first = [submit(ctx, "csm", {"text": "sleep:1"}) for _ in range(2)]
    assert all(wait_until(lambda j=j: (x := ctx.store.get(j)).status.is_terminal and x, 30).status
               is JobStatus.SUCCESS for j in first)
    assert wait_until(lambda: c3_sim.ledger()["launches"] == 2, 10)
    later = [submit(ctx, "csm", {"text": "quick"}) for _ in range(2)]  # both instances idle < 6 s
    assert all(wait_until(lambda j=j: (x := ctx.store.get(j)).status.is_terminal and x, 30).status
               is JobStatus.SUCCESS for j in later)
    ledger = c3_sim.ledger()
    assert (ledger["launches"], ledger["stops"]) == (2, 0)


def pool_managers(env, *demands):
    """GpuManagers on the simulator and the stack's registry (one registry client), one per
    demand reader."""
    from worker_runtime.gpu import GpuManager, GpuSettings

    settings = GpuSettings(**env)
    shared = registry(env)
    return [GpuManager(settings, settings.client(), shared, f"w{i}", demand=d) for i, d in enumerate(demands)]


@pytest.mark.integration
def test_two_workers_launching_ahead_at_once_launch_each_instance_once(stack_env, c3_sim, monkeypatch):
    env = {**stack_env, **GPU_FAST, **c3_sim.worker_env()}
    demand = Demand(queued=5, running=0, workers=3)  # 3 free workers, 5 jobs queued: 3 instances
    managers = pool_managers(env, lambda: demand, lambda: demand)
    shared = managers[0].registry
    barrier = threading.Barrier(2)

    def decide(m):
        barrier.wait()
        m.keeper.pool_pass()

    threads = [threading.Thread(target=decide, args=(m,)) for m in managers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    idle = wait_until(lambda: len(r := [x for x in shared.all() if x.idle]) == 3 and r, 20)
    assert all(r.ahead for r in idle) and sorted(r.slot for r in idle) == [0, 1, 2]
    assert (c3_sim.ledger()["launch_requests"], c3_sim.ledger()["launches"]) == (3, 3)
    for m in managers:  # covered now: another pass launches nothing
        m.keeper.pool_pass()
    assert c3_sim.ledger()["launches"] == 3
    for m in managers:
        m.shutdown()
    first = managers[0]
    for r in shared.all():
        Reaper(first.client, shared, first.settings, "test", time.time, get_logger("test.pool")).stop(r, "test over")
    assert wait_until(lambda: c3_sim.ledger()["running"] == 0, 10)


@pytest.mark.integration
def test_a_launch_ahead_whose_job_a_worker_took_meanwhile_is_withdrawn_before_the_call(stack_env, c3_sim):
    """The keeper read one queued job and a free worker; by the time its intent is written
    the worker holds that job (it claims its own slot): the intent is withdrawn, unlaunched."""
    env = {**stack_env, **GPU_FAST, **c3_sim.worker_env()}
    readings = iter([Demand(queued=1, running=0, workers=1), Demand(queued=0, running=1, workers=1)])
    [keeper] = pool_managers(env, lambda: next(readings))
    keeper.keeper.pool_pass()
    assert next(readings, None) is None  # read twice: to decide, and again once the intent was written
    assert keeper.keeper.registry.all() == [] and not keeper.held.ahead  # withdrawn, never launched
    assert c3_sim.ledger()["launch_requests"] == 0
    keeper.shutdown()


@pytest.mark.integration
@pytest.mark.parametrize("launch", ["booting", "idle"])
def test_a_job_claim_yields_to_a_pool_launch_written_after_its_registry_read(stack_env, c3_sim, tmp_path,
                                                                             monkeypatch, caplog, launch):
    """Another worker's keeper launches ahead for the job this worker just took, between this
    worker's registry read and its own claim: the claim yields and the job adopts that launch,
    whether it is still booting when the claim reads again or already idle (a quick boot)."""
    from tests.worker.test_gpu_manager import gpu_worker

    monkeypatch.setenv("FAKE_TASK_LOG", str(tmp_path / "tasks.log"))
    env = {**stack_env, **GPU_FAST, **c3_sim.worker_env(), "OUTPUT_DIR": str(tmp_path / "out")}
    [other] = pool_managers(env, lambda: Demand(queued=1, running=0, workers=2))  # it saw the job queued
    if launch == "booting":
        c3_sim.set_faults(launch_delay=1.0)  # still booting when this worker reads again
    tw = gpu_worker(env)
    mine = tw.worker.gpu
    claim = mine.registry.create_intent

    def keeper_writes_first(owner, expires, workload_type, slot, ahead=False):
        if not ahead and not other.keeper.registry.all():
            other.keeper.pool_pass()  # its intent lands between this worker's read and its write
            if launch == "idle":
                wait_until(lambda: any(r.idle for r in other.keeper.registry.all()), 10)
        return claim(owner, expires, workload_type, slot, ahead)

    monkeypatch.setattr(mine.registry, "create_intent", keeper_writes_first)
    with tw:
        job = submit(tw.ctx, "csm", {"text": "quick"})
        assert wait_until(lambda: (x := tw.ctx.store.get(job)).status.is_terminal and x, 30).status is JobStatus.SUCCESS
        ledger = c3_sim.ledger()
        assert (ledger["launch_requests"], ledger["launches"]) == (1, 1)  # the pool's launch only
        [record] = mine.registry.all()
        assert record.workload == ledger["instances"][0]["workload"] and record.owner == tw.settings.worker_id
        assert [e for _, e in task_events(tmp_path / "tasks.log", job) if e.startswith("node=")] == \
            [f"node={record.workload}"]
        [yielded] = [r.fields for r in caplog.records if r.getMessage() == "gpu.launch_yielded"]
        assert yielded["job_id"] == job and ("waits for it" if launch == "booting" else "adopts it") in yielded["reason"]
    other.shutdown()


def test_a_worker_between_two_jobs_is_not_a_free_worker():
    """Its message is acked before it receives the next one, and its instance is busy again
    by the time the registry is read: three busy instances mean three busy workers."""
    busy = [rec(k, busy=True) for k in range(3)]
    assert slots_to_launch(busy, Demand(queued=4, running=2, workers=3), 10)[0] == []
    assert slots_to_launch(busy[:2], Demand(queued=4, running=2, workers=3), 10)[0] == [2]  # one really free


@pytest.mark.integration
def test_copies_of_finished_jobs_messages_are_no_demand(ctx):
    """A killed worker's message, or the reconciler's re-send, can outlive its job in the
    queue: the pool counts queued jobs, not messages, and rents nothing for them."""
    done = submit(ctx, "csm", {"text": "done"})
    ctx.store.claim(done, "w1", 60)
    ctx.store.transition(done, JobStatus.SUCCESS, worker="w1")
    for _ in range(3):
        ctx.jobs_queue.send(done)  # stale copies
    assert ctx.jobs_queue.depth()["messages"] == 4
    assert read_demand(ctx.jobs_queue, ctx.beacons).queued == 4  # the queue alone overcounts
    assert read_demand(ctx.jobs_queue, ctx.beacons, ctx.queries).queued == 0
    submit(ctx, "csm", {"text": "waits"})
    assert read_demand(ctx.jobs_queue, ctx.beacons, ctx.queries).queued == 1
