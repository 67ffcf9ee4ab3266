"""GPU_IDLE_POLICY=adaptive (chalicelib/fleet/idle.py): the pool's real decisions (Reaper
over the moto-backed registry and traffic item, the simulated Comput3 for launches and
stops) driven by an injected clock through job traces, as a keeper would run them:
a pass at each planned stop time."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError

from chalicelib.api.routes import create_app
from chalicelib.context import Context
from chalicelib.fleet.idle import Traffic, TrafficLog, adaptive_keep
from chalicelib.fleet.pool import Demand, idle_plans
from chalicelib.fleet.reaper import Reaper, reap_gpus
from chalicelib.fleet.registry import RUNNING, GpuRegistry
from chalicelib.fleet.settings import FleetSettings
from chalicelib.jobs.models import JobStatus
from chalicelib.platform.logs import get_logger
from chalicelib.platform.settings import Settings
from tests.support.harness import submit, wait_until
from tests.worker.test_gpu_manager import final, genv, gpu_worker  # noqa: F401 - fixture

pytestmark = pytest.mark.integration
T0 = float(int(time.time()))  # the simulator wants expires in its (real) future
BOOT, WORK = 6.0, 5.0


@dataclass
class Trace:
    """One worker's jobs on a pool decided by the real policy, with the clock injected."""

    ctx: Context
    settings: FleetSettings
    now: float = T0
    launches: list[float] = field(default_factory=list)
    stops: list[tuple[float, float, str]] = field(default_factory=list)  # (time, idle seconds, reason)
    free_at: float = T0

    def __post_init__(self) -> None:
        self.registry = GpuRegistry(self.ctx.dynamodb, self.ctx.settings.gpu_table, lambda: self.now)
        self.traffic = TrafficLog(self.ctx.dynamodb, self.ctx.settings.gpu_table)
        self.client = self.settings.client()
        self.reaper = Reaper(self.client, self.registry, self.settings, "keeper", lambda: self.now,
                             get_logger("test.idle"), traffic=self.traffic)

    def plans(self):
        return idle_plans(self.registry.all(), Demand(0, 0, workers=1), self.settings, self.now, self.traffic.read())

    def advance(self, until: float) -> None:
        """The keeper's passes up to ``until``: one at each planned stop that comes first."""
        while (due := min((p.stop_at for p in self.plans()), default=None)) is not None and due <= until:
            self.now = max(self.now, due)
            records = self.registry.all()
            for record, reason in self.reaper.idle_decisions(records, Demand(0, 0, workers=1), self.now):
                assert self.reaper.stop(record, reason)
                self.stops.append((self.now, self.now - record.last_used, reason))
        self.now = max(self.now, until)

    def job(self, at: float) -> None:
        """A job submitted at ``at``, run when the worker is free: on the idle instance, or a launch."""
        self.advance(max(at, self.free_at))
        self.traffic.record_arrival(at)
        idle = [r for r in self.registry.all() if r.idle]
        if idle:
            record = self.registry.update(idle[0], require_idle=True, busy=True)
        else:
            intent = self.registry.create_intent("w", int(self.now) + 7200, "media:fast", slot=0)
            workload = self.client.launch("media:fast", intent.expires).workload
            self.launches.append(self.now)
            record = self.registry.update(intent, state=RUNNING, workload=workload.workload, node=workload.node,
                                          launched_at=self.now, last_used=self.now, busy=True)
            self.now += BOOT
            self.traffic.record_boot(BOOT)
        self.now += WORK
        self.registry.update(record, busy=False, last_used=self.now)
        self.free_at = self.now


ADAPTIVE = {"GPU_IDLE_POLICY": "adaptive", "GPU_IDLE_TIMEOUT": 300, "GPU_IDLE_FLOOR": 15, "GPU_WAIT_PRICE": 2}


@pytest.fixture
def trace(stack_env, c3_sim):
    """``trace(GPU_...=...)``: a Trace on this test's tables and simulator."""
    sim = {k: v for k, v in c3_sim.worker_env().items() if k in ("C3_API_URL", "C3_API_KEY")}
    return lambda **env: Trace(Context(Settings(**stack_env)), FleetSettings(**sim, **env))


def bursts(t: Trace, count: int, gap: float = 120.0, size: int = 10) -> None:
    for b in range(count):
        for _ in range(size):
            t.job(T0 + b * gap)


def test_a_burst_keeps_the_instance_and_a_long_silence_stops_it_within_the_learned_bound(trace):
    t = trace(**ADAPTIVE)
    bursts(t, 3)
    # Kept through both 64 s gaps: waiting beats a relaunch that 10 jobs would wait for.
    assert len(t.launches) == 1 and t.stops == []
    last_arrival, last_used = T0 + 240, t.now
    [plan] = t.plans()
    bound = last_arrival + 120 * 1.05 + BOOT / 4  # the longest learned gap, with its slack
    assert last_used + 15 <= plan.stop_at <= bound + 0.01 < last_used + 300
    assert "a burst is expected within 12" in plan.reason(plan.stop_at)
    t.advance(last_used + 300)  # silence: no job comes
    [(stopped_at, idle_for, reason)] = t.stops
    assert stopped_at == plan.stop_at and 15 <= idle_for < 300
    assert "GPU_IDLE_POLICY=adaptive" in reason and "longer than every gap learned" in reason
    assert t.registry.all() == [] and not [i for i in t.client.workloads()]


def test_the_same_bursts_under_a_fixed_30_s_timeout_relaunch_every_time(trace):
    t = trace(GPU_IDLE_TIMEOUT=30)
    bursts(t, 3)
    assert len(t.launches) == 3 and [round(idle) for _, idle, _ in t.stops] == [30, 30]


def test_the_scheduled_reaper_applies_the_policy_with_no_worker_alive(trace, stack_env):
    t = trace(**ADAPTIVE)
    bursts(t, 2)
    [plan] = t.plans()
    ctx = Context(Settings(**stack_env))
    settings = t.settings

    def reap(at: float) -> int:
        return reap_gpus(t.registry, settings, clock=lambda: at, queue=ctx.jobs_queue, beacons=ctx.beacons,
                         queries=ctx.queries, traffic=t.traffic)["stopped"]

    assert reap(plan.stop_at - 1) == 0  # no keeper, no beacon: the reaper alone decides
    assert reap(plan.stop_at) == 1 and t.registry.all() == []
    assert plan.stop_at - t.now < 300  # sooner than GPU_IDLE_TIMEOUT would have stopped it


def test_a_flapping_pattern_relaunches_no_more_often_than_the_floor_allows(trace):
    t = trace(**ADAPTIVE)
    # Learned: a quiet deployment (a job every 10 minutes): stopping at once pays.
    for k in range(4):
        t.job(T0 + 600 * k)
    # Nothing learned: the break-even 18 s (launch + boot 6 s, one job waiting it at price 2);
    # then stopping at once pays, held to the floor.
    assert [round(idle) for _, idle, _ in t.stops] == [18, 15, 15]
    launches_before = len(t.launches)
    # Then jobs at gaps around the floor: 10 s after the previous one ends, then 25 s.
    start = t.now + 600
    gaps = [10.0, 25.0] * 8
    at = start
    for gap in gaps:
        t.job(at)
        at = t.now + gap
    relaunches = len(t.launches) - launches_before
    # Never stopped inside the floor; a relaunch needs an idle time of at least the floor,
    # so at most one per gap longer than it (and the first job's launch).
    assert all(idle >= 15 for _, idle, _ in t.stops), t.stops
    assert relaunches <= 1 + sum(1 for g in gaps if g > 15)
    # And it learns: the short gaps soon cost less to wait through than to relaunch for.
    assert relaunches <= 3, t.launches


def test_the_first_burst_with_nothing_learned_keeps_the_break_even_time():
    traffic = Traffic(boots=(6.0,))
    for i in range(10):
        traffic = traffic.with_arrival(T0 + i * 0.1)
    keep = adaptive_keep(traffic, T0 + 56, T0 + 56, rank=0, workers=1, wait_price=2)
    assert keep.until == pytest.approx(T0 + 56 + 6 * (1 + 2 * 10))  # launch+boot + 10 jobs waiting it
    three = adaptive_keep(traffic, T0 + 20, T0 + 20, rank=0, workers=3, wait_price=2)
    assert three.until == pytest.approx(T0 + 20 + 6 * (1 + 2 * 10 / 3))  # a third of the burst waits
    assert adaptive_keep(traffic, T0 + 20, T0 + 20, rank=3, workers=3, wait_price=2).until == T0 + 20  # unused
    assert adaptive_keep(Traffic(), T0, T0, rank=0, workers=1, wait_price=2).until is None  # nothing learned


def test_health_shows_the_spares_planned_stop_and_why(stack_env, monkeypatch):
    from chalice.test import Client

    monkeypatch.setenv("GPU_IDLE_POLICY", "adaptive")
    ctx = Context(Settings(**stack_env))
    now = time.time()
    for b in range(3):
        ctx.traffic.record_arrival(now - 300 + 120 * b)
    ctx.traffic.record_boot(6.0)
    intent = ctx.registry.create_intent("w", int(now) + 3600, "media:fast", slot=0)
    ctx.registry.update(intent, state=RUNNING, workload="wl-a", node="n", launched_at=now - 200,
                        last_used=now - 5, busy=False)
    with Client(create_app(ctx)) as client:
        health = client.http.get("/health").json_body
    policy = health["gpus"]["idle_policy"]
    assert (policy["policy"], policy["wait_price"], policy["floor"], policy["arrivals_learned"]) == \
        ("adaptive", 2.0, 15.0, 3)
    [spare] = health["gpus"]["fleet"]
    assert spare["stop_in_seconds"] <= 300 and spare["stop_at"] > now
    assert "GPU_IDLE_POLICY=adaptive" in spare["stop_reason"]
    assert spare["stop_inputs"]["bursts"] == 3 and spare["stop_inputs"]["launch_boot_s"] == 6.0


def test_a_bad_policy_setting_names_the_variable():
    with pytest.raises(ValidationError, match="GPU_IDLE_POLICY"):
        FleetSettings(GPU_IDLE_POLICY="smart")
    with pytest.raises(ValidationError, match="GPU_WAIT_PRICE"):
        FleetSettings(GPU_WAIT_PRICE=-1)


def test_concurrent_writers_lose_no_arrival(stack_env):
    import threading

    ctx = Context(Settings(**stack_env))
    logs = [TrafficLog(ctx.dynamodb, ctx.settings.gpu_table) for _ in range(4)]
    threads = [threading.Thread(target=lambda k=k: [logs[k].record_arrival(T0 + 10 * n + k) for n in range(5)])
               for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(ctx.traffic.read().arrivals) == 20


def test_the_worker_records_arrivals_and_launch_times(genv):  # noqa: F811
    with gpu_worker(genv, GPU_IDLE_POLICY="adaptive") as tw:
        jobs = [submit(tw.ctx, "csm", {"text": "quick"}) for _ in range(2)]
        for job_id in jobs:
            assert final(tw.ctx, job_id).status is JobStatus.SUCCESS
        traffic = wait_until(lambda: (t := tw.ctx.traffic.read()) and len(t.arrivals) == 2 and t, 10)
        assert sorted(traffic.arrivals) == sorted(tw.ctx.store.get(j).created_at for j in jobs)
        assert len(traffic.boots) == 1 and 0 < traffic.boots[0] < 30


def test_the_templates_set_the_policy_for_the_worker_the_reaper_and_health():
    from infra.aws.template import render_app_template

    t = render_app_template("prod")
    names = {"GPU_IDLE_POLICY": "GpuIdlePolicy", "GPU_WAIT_PRICE": "GpuWaitPrice", "GPU_IDLE_FLOOR": "GpuIdleFloor"}
    lambdas = t["Globals"]["Function"]["Environment"]["Variables"]  # the GpuReaper's and the API's (/health)
    [container] = t["Resources"]["WorkerTaskDefinition"]["Properties"]["ContainerDefinitions"]
    worker = {e["Name"]: e["Value"] for e in container["Environment"]}
    for var, parameter in names.items():
        assert lambdas[var] == worker[var] == {"Ref": parameter}
    assert t["Parameters"]["GpuIdlePolicy"]["Default"] == "fixed"
    assert t["Parameters"]["GpuIdlePolicy"]["AllowedValues"] == ["fixed", "adaptive"]
    # The traffic item is read through the state index and written with GetItem/UpdateItem:
    # the roles already hold exactly those actions on the GPU table (no new grant, no wildcard).
    worker_role = json.dumps(t["Resources"]["WorkerTaskRole"]["Properties"]["Policies"])
    assert "dynamodb:GetItem" in worker_role and "dynamodb:UpdateItem" in worker_role and "-gpus/index/by-state" in worker_role
