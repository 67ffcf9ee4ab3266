"""How long an idle GPU instance is kept: GPU_IDLE_POLICY=fixed (the seed's rule: a set idle
time) or adaptive (below). The pool (chalicelib/fleet/pool.py) asks ``adaptive_keep`` for
each idle instance it does not need for a queued job, and clamps the answer between
GPU_IDLE_FLOOR and its fixed bound (GPU_IDLE_TIMEOUT for the spares, GPU_SURPLUS_IDLE
for the surplus).

Adaptive is the ski-rental problem decided from the traffic the deployment has seen.
Keeping an idle instance costs its price per second; stopping it costs a relaunch when the
next job comes: launch + boot seconds billed, and every job of that burst waiting as long,
each waiting second valued at GPU_WAIT_PRICE GPU seconds, shared by the instances the
burst can use (one per live worker):

    relaunch = D * (1 + GPU_WAIT_PRICE * jobs_in_burst / instances_it_uses)

Arrivals (the submission times of recent GPU jobs) are grouped into bursts (an arrival
within D of the previous one joins its burst): the gaps between bursts are the samples.
Given the silence since the last arrival, the gaps longer than it are what may come next;
the instance is kept until the end of the one covered gap that minimises the expected cost
(idle seconds until the covered arrivals, plus the idle time and relaunch of the others),
or stopped now when stopping is cheapest. With no gap learned yet it is kept for the
relaunch cost itself, the break-even rule (never worse than twice the best choice). A
silence longer than every gap seen stops it.

The traffic is per deployment: one item in the GPU table (``TrafficLog``), written by the
workers (an arrival when a job asks for an instance, a launch + boot time when a new
instance answers) and read by every decider, the scheduled reaper included, so the
policy holds with no worker alive.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal

from botocore.exceptions import ClientError

from chalicelib.fleet.registry import STATE_INDEX
from chalicelib.platform.logs import get_logger

Policy = Literal["fixed", "adaptive"]
TRAFFIC_ID = "pool#traffic"
TRAFFIC_STATE = "traffic"  # found through the state index (every role that decides may query it)
ARRIVALS_KEPT = 200
BOOTS_KEPT = 20
DEFAULT_BOOT = 60.0  # launch + boot seconds assumed before any was measured
WRITE_ATTEMPTS = 10
WRITE_BACKOFF = 0.02  # seconds, times the attempt number, jittered: writers at once spread out


@dataclass(frozen=True)
class Burst:
    first: float
    last: float
    size: int


@dataclass(frozen=True)
class Traffic:
    """What the pool has learned: recent GPU job arrivals and launch + boot times."""

    arrivals: tuple[float, ...] = ()  # submission times, ascending
    boots: tuple[float, ...] = ()  # launch + boot seconds of recent instances, oldest first

    def with_arrival(self, at: float) -> "Traffic":
        # A job's second attempt (its worker died) counts again: it needs an instance again.
        return replace(self, arrivals=tuple(sorted((*self.arrivals, at)))[-ARRIVALS_KEPT:])

    def with_boot(self, seconds: float) -> "Traffic":
        return replace(self, boots=(*self.boots, round(seconds, 3))[-BOOTS_KEPT:])

    @property
    def boot_seconds(self) -> float:
        return statistics.median(self.boots) if self.boots else DEFAULT_BOOT

    def bursts(self, join: float) -> list[Burst]:
        out: list[Burst] = []
        for at in self.arrivals:
            if out and at - out[-1].last <= join:
                out[-1] = Burst(out[-1].first, at, out[-1].size + 1)
            else:
                out.append(Burst(at, at, 1))
        return out


@dataclass(frozen=True)
class Keep:
    """The adaptive answer for one idle instance: keep it until ``until`` (None: no
    traffic to learn from, the fixed bound applies), and why, with the inputs."""

    until: float | None
    why: str
    inputs: dict[str, Any] = field(default_factory=dict)


def adaptive_keep(traffic: Traffic, now: float, last_used: float, rank: int, workers: int | None,
                  wait_price: float) -> Keep:
    """Until when idle instance number ``rank`` (0 = the first kept for future jobs) pays."""
    d = traffic.boot_seconds
    bursts = traffic.bursts(join=d)
    inputs: dict[str, Any] = {"arrivals": len(traffic.arrivals), "bursts": len(bursts),
                              "launch_boot_s": round(d, 2), "boots_measured": len(traffic.boots),
                              "wait_price": wait_price, "workers": workers, "rank": rank}
    if not bursts:
        return Keep(None, "no GPU job arrival recorded yet", inputs)

    def relaunch(size: int) -> tuple[bool, float]:
        # No live worker: the one that starts for the next job takes the instance.
        uses = min(size, max(1, workers)) if workers is not None else size
        return uses > rank, d * (1 + wait_price * size / max(1, uses))

    last = bursts[-1]
    silent = now - last.last
    inputs["silent_s"] = round(silent, 1)
    gaps = [(nxt.first - prev.last, nxt.size) for prev, nxt in zip(bursts, bursts[1:])]
    if not gaps:
        needed, cost = relaunch(last.size)
        inputs["relaunch_gpu_s"] = round(cost, 1)
        if not needed:
            return Keep(now, f"a burst of {last.size} job(s) needs fewer than {rank + 1} idle instances", inputs)
        return Keep(last_used + cost, f"no gap between bursts learned yet: kept for the relaunch cost, "
                                      f"{cost:.0f} GPU s (break-even)", inputs)
    # A gap is still open until its slack has passed (its job may be on its way to the instance).
    ahead = sorted((g, size) for g, size in gaps if g + _slack(g, d) > silent)
    inputs["gaps_learned"] = len(gaps)
    inputs["gaps_ahead"] = len(ahead)
    if not ahead:
        return Keep(now, f"silent for {silent:.0f} s, longer than every gap learned "
                         f"(longest {max(g for g, _ in gaps):.0f} s): no job expected", inputs)
    samples = [(last.last + g, *relaunch(size)) for g, size in ahead]  # (arrival, needed, relaunch)

    def expected(until: float) -> float:
        total = 0.0
        for arrival, needed, cost in samples:
            if needed and arrival <= until and until > now:  # kept, and its job comes in time
                total += max(0.0, arrival - now)
            else:
                total += until - now + (cost if needed else 0.0)
        return total / len(samples)

    candidates = [now] + [arrival + _slack(arrival - last.last, d) for arrival, _, _ in samples]
    best = min(candidates, key=lambda until: (round(expected(until), 6), until))
    stop_now = expected(now)
    inputs["relaunch_gpu_s"] = round(statistics.median(c for _, n, c in samples if n), 1) \
        if any(n for _, n, _ in samples) else None
    inputs["expected_cost_stop_now"] = round(stop_now, 1)
    inputs["expected_cost_kept"] = round(expected(best), 1)
    if best == now:
        return Keep(now, f"stopping now costs less: expected {stop_now:.1f} GPU s (relaunch "
                         f"{inputs['relaunch_gpu_s']} GPU s per needed burst) against keeping for any of "
                         f"the {len(ahead)} gap(s) longer than the {silent:.0f} s silence", inputs)
    return Keep(best, f"a burst is expected within {best - last.last:.0f} s of the last arrival: keeping "
                      f"costs {expected(best):.1f} GPU s expected against {stop_now:.1f} for stopping now "
                      f"(launch + boot {d:.1f} s, GPU_WAIT_PRICE={wait_price:g})", inputs)


def _slack(gap: float, launch_boot: float) -> float:
    """How long after an expected arrival the instance waits for its job to reach it
    (dispatch, inputs checked before any instance is asked for) and for the gap's jitter:
    in proportion to the times involved, so the policy decides the same at any time scale."""
    return 0.25 * launch_boot + 0.05 * gap


class TrafficLog:
    """The deployment's ``Traffic``, one item of the GPU table, written by conditional
    read-modify-write (``ver``) so workers appending at once lose nothing."""

    def __init__(self, dynamodb: Any, table: str, log: Any = None):
        self._ddb = dynamodb
        self.table = table
        self.log = log if log is not None else get_logger("c3.gpu_traffic")

    def read(self) -> Traffic:
        """Through the state index, like the registry's reads (eventually consistent)."""
        resp = self._ddb.query(TableName=self.table, IndexName=STATE_INDEX, KeyConditionExpression="#s = :s",
                               ExpressionAttributeNames={"#s": "state"},
                               ExpressionAttributeValues={":s": {"S": TRAFFIC_STATE}})
        items = [i for i in resp.get("Items", []) if i.get("id", {}).get("S") == TRAFFIC_ID]
        return _decode(items[0]) if items else Traffic()

    def record_arrival(self, at: float) -> bool:
        return self._change(lambda t: t.with_arrival(at), "arrival")

    def record_boot(self, seconds: float) -> bool:
        return self._change(lambda t: t.with_boot(seconds), "launch + boot time")

    def _change(self, change: Callable[[Traffic], Traffic], what: str) -> bool:
        """Best effort: the policy falls back to fewer samples, never fails a job."""
        for attempt in range(WRITE_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0, WRITE_BACKOFF * attempt))
            try:
                item = self._ddb.get_item(TableName=self.table, Key={"id": {"S": TRAFFIC_ID}},
                                          ConsistentRead=True).get("Item")
                seen = int(item["ver"]["N"]) if item else 0
                new = change(_decode(item) if item else Traffic())
                self._ddb.update_item(
                    TableName=self.table, Key={"id": {"S": TRAFFIC_ID}},
                    UpdateExpression="SET #a = :a, #b = :b, #v = :v, #s = :s",
                    ConditionExpression="attribute_not_exists(#v) OR #v = :seen",
                    ExpressionAttributeNames={"#a": "arrivals", "#b": "boots", "#v": "ver", "#s": "state"},
                    ExpressionAttributeValues={":a": _numbers(new.arrivals), ":b": _numbers(new.boots),
                                               ":v": {"N": str(seen + 1)}, ":seen": {"N": str(seen)},
                                               ":s": {"S": TRAFFIC_STATE}})
                return True
            except ClientError as exc:
                if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                    continue  # another writer appended meanwhile: read again
                error = str(exc)
                break
            except Exception as exc:  # noqa: BLE001 - best effort, see above
                error = str(exc)
                break
        else:
            error = f"{WRITE_ATTEMPTS} conflicting writes in a row"
        self.log.warning("gpu.traffic_unrecorded", what=what, error=error,
                         reason="the adaptive idle policy learns from one sample less")
        return False


def _numbers(values: tuple[float, ...]) -> dict[str, Any]:
    return {"L": [{"N": repr(float(v))} for v in values]}


def _decode(item: dict[str, Any]) -> Traffic:
    def floats(name: str) -> tuple[float, ...]:
        return tuple(float(v["N"]) for v in item.get(name, {}).get("L", []))

    return Traffic(arrivals=tuple(sorted(floats("arrivals"))), boots=floats("boots"))
