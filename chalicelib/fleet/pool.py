"""The GPU pool's policy, in one place: how many instances the work needs, and which idle
ones to stop. The registry (chalicelib/fleet/registry.py) is the pool's state; these are
pure decisions over a snapshot of it, acted on by conditional writes elsewhere:

    scale-in   ``idle_to_stop``: idle instances beyond the jobs waiting and GPU_WARM_SPARES
               stop once idle GPU_SURPLUS_IDLE; the spares once idle GPU_IDLE_TIMEOUT.
               GPU_IDLE_POLICY=adaptive stops both sooner when the traffic learned says
               no job is expected soon enough to pay for the wait (``idle_plans``,
               chalicelib/fleet/idle.py).
               The spares kept are the instances furthest from their rental's end (the
               oldest goes first). Run by every worker's keeper thread (seconds) and by the
               API's scheduled gpu_reaper (every minute, when no worker runs).
    scale-out  ``slots_to_launch``: when the queue holds more jobs that free workers will
               take than there are idle instances and launches ahead, the lowest free
               slots for the difference (within MAX_GPUS). Every decider
               picks the same slots from the same snapshot, and a slot's record is created
               with ``attribute_not_exists``, so deciders acting at once launch each
               instance once (no stampede). Run by the workers' keepers (every second,
               woken at once by a job's acquire), not by the scheduled handler: a minute is
               longer than a burst.

The stop itself is a claim conditional on the record's version, serial, state "running"
and busy false (``Reaper.claim``): an adoption in between changes the version, so a job is
never handed an instance being stopped, and a busy instance is never stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from chalicelib.fleet.idle import Traffic, adaptive_keep
from chalicelib.fleet.registry import LAUNCHING, RUNNING, GpuRecord
from chalicelib.fleet.settings import FleetSettings
from chalicelib.jobs.models import JobStatus


@dataclass(frozen=True)
class Demand:
    """Jobs that need an instance, from the job queues' attributes (``LaneQueues.depth``:
    every priority lane summed)."""

    queued: int  # visible messages: jobs no worker holds yet
    running: int  # in flight: jobs a worker holds (running, or about to)
    workers: int | None = None  # live workers (beacons); None = unknown

    @property
    def jobs(self) -> int:
        return self.queued + self.running

    def __str__(self) -> str:
        workers = "" if self.workers is None else f", {self.workers} live worker(s)"
        return f"{self.queued} queued, {self.running} running{workers}"


def read_demand(queue: Any, beacons: Any | None = None, queries: Any | None = None) -> Demand:
    """The queue's depth (``queue``: the lanes, whose depth sums every lane), its visible
    messages checked against the jobs table's queued jobs (``queries``): copies of finished jobs' messages (a killed worker's, the reconciler's)
    wait in the queue too, and must not make the pool rent instances for no job."""
    depth = queue.depth()
    queued = depth["messages"]
    if queued and queries is not None:
        jobs = queries.in_dispatch(JobStatus.QUEUED)
        # Read the queue again after the table: the caller compares these figures with the
        # registry it reads next, and a worker that takes a job in between must show as busy.
        depth = queue.depth()
        queued = depth["messages"] if jobs.approximate else min(depth["messages"], jobs.value)
    workers = beacons.alive() if beacons is not None else None
    return Demand(queued=queued, running=depth["in_flight"], workers=workers)


def demand_reader(read: Callable[[], Demand], log: Any) -> Callable[[], Demand | None]:
    """``read`` that answers None (and logs why) when the queue cannot be read: the pool
    then keeps to the idle timeout alone and launches nothing ahead."""

    def safe() -> Demand | None:
        try:
            return read()
        except Exception as exc:  # noqa: BLE001 - no demand figure, no pool decision
            log.warning("gpu.demand_unavailable", error=str(exc),
                        reason="queue depth unreadable: no surplus stops and no launches ahead this pass")
            return None

    return safe


def _keep_order(record: GpuRecord) -> tuple[int, float]:
    # Furthest from its rental's end first: the oldest instance is the first to go.
    return (-record.expires, -(record.launched_at or record.created_at))


@dataclass(frozen=True)
class IdlePlan:
    """When an idle instance stops (``stop_at``), why, and what the decision used."""

    record: GpuRecord
    stop_at: float
    describe: Callable[[float], str]  # the reason, given the time of the stop
    inputs: dict[str, Any]

    def reason(self, now: float) -> str:
        return self.describe(now)


def idle_plans(records: list[GpuRecord], demand: Demand | None, settings: FleetSettings, now: float,
               traffic: Traffic | None = None) -> list[IdlePlan]:
    """The planned stop of every idle instance. Instances kept for queued jobs, and every
    one under GPU_IDLE_POLICY=fixed, stop at their bound: the spares (GPU_WARM_SPARES, the
    oldest goes first) after GPU_IDLE_TIMEOUT, the surplus after GPU_SURPLUS_IDLE. Under
    ``adaptive`` the others stop when the learned ``traffic`` says waiting no longer pays
    (chalicelib/fleet/idle.py), within [GPU_IDLE_FLOOR, their bound]; with no traffic
    readable they keep their bound. Without a demand figure every idle instance is a spare."""
    s = settings
    plans: list[IdlePlan] = []
    idle = []
    for r in records:
        if not r.idle or r.last_used is None:
            continue
        if r.age(now) >= s.refresh_after:
            plans.append(IdlePlan(r, now, lambda n, r=r: f"idle and up for {r.age(n):.0f} s "
                                                         f"(GPU_REFRESH_AFTER={s.refresh_after:g})", {}))
        else:
            idle.append(r)
    idle.sort(key=_keep_order)
    queued = demand.queued if demand is not None else 0
    keep = s.warm_spares + (queued if demand is not None else len(idle))
    kept = [r.id for r in idle[:keep]]
    adaptive = s.idle_policy == "adaptive" and traffic is not None
    for rank, r in enumerate(idle):
        last_used: float = r.last_used  # type: ignore[assignment]
        if rank < keep or s.surplus_idle > s.idle_timeout:
            head, bound, rule = "", s.idle_timeout, f"(GPU_IDLE_TIMEOUT={s.idle_timeout:g})"
        else:
            head, bound = "surplus: ", s.surplus_idle
            rule = (f"(GPU_SURPLUS_IDLE={s.surplus_idle:g}) with {len(idle)} idle and {demand}; kept "
                    f"{kept or 'none'} (GPU_WARM_SPARES={s.warm_spares} + the jobs queued), the oldest goes first")
        inputs: dict[str, Any] = {"policy": s.idle_policy, "bound_s": bound}
        stop_at = last_used + bound
        if adaptive and rank >= queued:
            assert traffic is not None
            answer = adaptive_keep(traffic, now, last_used, rank - queued,
                                   demand.workers if demand is not None else None, s.wait_price)
            inputs.update(answer.inputs)
            if answer.until is not None:
                floor = min(s.idle_floor, bound)
                kept_for = min(max(answer.until - last_used, floor), bound)
                stop_at = last_used + kept_for
                limit = (f", raised to GPU_IDLE_FLOOR={s.idle_floor:g}" if kept_for == floor > answer.until - last_used
                         else f", cut to its bound {rule}" if kept_for == bound < answer.until - last_used else "")
                rule = f"(GPU_IDLE_POLICY=adaptive: {answer.why}; kept {kept_for:.0f} s{limit})"
            else:
                rule = f"{rule} (GPU_IDLE_POLICY=adaptive: {answer.why}: the bound applies)"
        inputs["planned_idle_s"] = round(stop_at - last_used, 1)
        plans.append(IdlePlan(r, stop_at, lambda n, h=head, t=rule, u=last_used: f"{h}idle for {n - u:.0f} s {t}",
                              inputs))
    return plans


def idle_to_stop(records: list[GpuRecord], demand: Demand | None, settings: FleetSettings,
                 now: float, traffic: Traffic | None = None) -> list[tuple[GpuRecord, str]]:
    """Idle instances to stop now (their planned stop has come), each with its reason."""
    return [(p.record, p.reason(now)) for p in idle_plans(records, demand, settings, now, traffic)
            if now >= p.stop_at]


def slots_to_launch(records: list[GpuRecord], demand: Demand, max_gpus: int) -> tuple[list[int], str]:
    """The free slots to launch into now (lowest first, so deciders agree), and why.

    Launched ahead: one instance per queued job that a free worker (live, holding no job)
    will take next and that no idle instance or launch ahead already covers, while
    running + launching instances stay within MAX_GPUS. A job a worker already holds is
    that worker's to cover (it adopts an idle instance, waits for a launch ahead, or
    launches): counting it here too would race the worker into two launches for one job.
    An instance beyond the workers that can use it only bills."""
    supply = [r for r in records if r.state in (LAUNCHING, RUNNING)]
    covering = [r for r in supply if r.idle or r.ahead]
    # A worker between two jobs has no message in flight for a moment, while the registry,
    # read a moment later, already shows its instance busy with the next job: a worker
    # is counted busy by whichever of the two figures says more.
    busy = sum(1 for r in supply if r.state == RUNNING and r.busy)
    free_workers = demand.queued if demand.workers is None else max(0, demand.workers - max(demand.running, busy))
    takers = min(demand.queued, free_workers)
    missing = min(takers - len(covering), max_gpus - len(supply))
    if missing <= 0:
        return [], ""
    taken = {r.slot for r in records}
    free = [k for k in range(max_gpus) if k not in taken][:missing]
    why = (f"{demand}: {takers} queued job(s) a free worker takes next, against {len(covering)} idle or "
           f"launching ahead; {len(supply)} instance(s) running or launching (MAX_GPUS={max_gpus})")
    return free, why
