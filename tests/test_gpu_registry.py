"""The GPU registry's conditional writes and the reaper's rules, on the moto-backed table and
the simulated Comput3."""

from __future__ import annotations

import threading
import time

import pytest

from chalicelib.logs import get_logger
from tests.support.fake_gpu_tasks import GPU_FAST
from worker_runtime.comput3 import Comput3Client
from worker_runtime.gpu import GpuSettings
from worker_runtime.gpu.reaper import Reaper, SweepDeferred
from worker_runtime.gpu.registry import LAUNCHING, RUNNING, STOPPING, GpuRegistry, RecordLost

pytestmark = pytest.mark.integration

GRACE, IDLE = 3.0, 5.0


@pytest.fixture
def reg(ctx):
    return GpuRegistry(ctx.dynamodb, ctx.settings.gpu_table, time.time)


@pytest.fixture
def c3(c3_sim):
    return Comput3Client(f"{c3_sim.url}/api/v0", c3_sim.api_key, retry_delays=(), stop_retry_delays=())


def reaper(reg, c3, worker_id):
    settings = GpuSettings(**{**GPU_FAST, "C3_API_KEY": "k", "GPU_OWNER_GRACE": str(GRACE),
                              "GPU_IDLE_TIMEOUT": str(IDLE)})
    return Reaper(c3, reg, settings, worker_id, time.time, get_logger("test.reaper", worker=worker_id))


def rented(reg, c3, owner, heartbeat_age=0.0, idle_for=0.0, busy=False):
    """A record as a worker leaves it after launching (and maybe using) an instance."""
    now = time.time()
    intent = reg.create_intent(owner, int(now) + 600, "media:fast")
    w = c3.launch("media:fast", intent.expires).workload
    return reg.update(intent, state=RUNNING, workload=w.workload, node=w.node, launched_at=now,
                      heartbeat=now - heartbeat_age, last_used=now - idle_for, busy=busy)


def test_only_one_of_many_concurrent_claims_wins(reg, c3, c3_sim):
    record = rented(reg, c3, "dead-worker", heartbeat_age=60)
    reapers = [reaper(reg, c3, f"w{i}") for i in range(6)]
    wins, start = [], threading.Barrier(len(reapers))

    def go(r):
        start.wait()
        if r.claim(record, "test") is not None:
            wins.append(r.worker_id)

    threads = [threading.Thread(target=go, args=(r,)) for r in reapers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    current = reg.get(record.id)
    assert (current.state, current.owner) == (STOPPING, wins[0])


def test_an_owner_learns_its_record_was_taken_over(reg, c3, c3_sim):
    mine = rented(reg, c3, "slow-worker", heartbeat_age=60)
    assert reaper(reg, c3, "other").stop(mine, "owner silent")
    with pytest.raises(RecordLost) as err:
        reg.update(mine, heartbeat=time.time())  # the owner wakes up and heartbeats
    assert err.value.current is None  # stopped and deleted
    assert c3_sim.ledger()["stops"] == 1


def test_reap_pass_stops_only_what_nobody_should_pay_for(reg, c3, c3_sim):
    busy = rented(reg, c3, "alive", busy=True, idle_for=60)
    fresh_idle = rented(reg, c3, "alive", idle_for=1)
    silent = rented(reg, c3, "dead", heartbeat_age=GRACE + 5)
    idle = rented(reg, c3, "alive", idle_for=IDLE + 5)
    live_intent = reg.create_intent("launcher", int(time.time()) + 900, "media:fast")
    stale_intent = reg.update(reg.create_intent("crashed", int(time.time()) + 950, "media:fast"),
                              heartbeat=time.time() - GRACE - 5)  # its launch never reached Comput3

    assert reaper(reg, c3, "me").reap_pass() == 3
    left = {r.id for r in reg.all()}
    assert left == {busy.id, fresh_idle.id, live_intent.id}
    ledger = c3_sim.ledger()
    stopped = {i["workload"] for i in ledger["instances"] if not i["running"]}
    assert stopped == {silent.workload, idle.workload}
    assert stale_intent.id not in left and ledger["launches"] == 4


def test_sweep_waits_while_a_live_launch_shares_the_expires(reg, c3, c3_sim):
    expires = int(time.time()) + 700
    live = reg.create_intent("launcher", expires, "media:fast")
    c3.launch("media:fast", expires)  # the launcher's instance, not recorded yet
    dead = reg.update(reg.create_intent("crashed", expires, "media:fast"), heartbeat=time.time() - 60)
    r = reaper(reg, c3, "me")
    with pytest.raises(SweepDeferred):
        r.sweep(expires, exclude_id=dead.id)
    assert c3_sim.ledger()["running"] == 1  # not stopped under the live launcher's feet
    reg.delete(live)
    assert len(r.sweep(expires, exclude_id=dead.id)) == 1
    assert c3_sim.ledger()["running"] == 0


def test_untracked_workloads_of_others_are_left_alone(reg, c3, c3_sim):
    c3.launch("media:fast", int(time.time()) + 800)  # someone else's, no intent anywhere
    stale = reg.update(reg.create_intent("crashed", int(time.time()) + 850, "media:fast"),
                       heartbeat=time.time() - 60)
    assert reaper(reg, c3, "me").reap_pass() == 1  # the stale intent is resolved...
    assert reg.get(stale.id) is None
    assert c3_sim.ledger()["running"] == 1  # ...but an instance it did not launch keeps running


def test_intent_is_written_once_with_a_ttl(reg, ctx):
    intent = reg.create_intent("w", int(time.time()) + 100, "media:fast")
    assert intent.state == LAUNCHING and reg.get(intent.id) == intent
    item = ctx.dynamodb.get_item(TableName=reg.table, Key={"id": {"S": intent.id}})["Item"]
    assert int(item["expires_at"]["N"]) == intent.expires + 86400  # DynamoDB TTL drops old records


def test_own_records_are_reaped_only_when_no_longer_tracked(reg, c3, c3_sim):
    live = rented(reg, c3, "me", heartbeat_age=GRACE + 5)  # in use right now (say, a long heartbeat gap)
    forgotten = rented(reg, c3, "me", heartbeat_age=GRACE + 5)  # e.g. recording it failed mid-launch
    r = reaper(reg, c3, "me")
    r.live_ids = lambda: {live.id}
    assert r.reap_pass() == 1
    assert {x.id for x in reg.all()} == {live.id}
    stopped = [i["workload"] for i in c3_sim.ledger()["instances"] if not i["running"]]
    assert stopped == [forgotten.workload]
