"""The GPU registry's conditional writes and the reaper's rules, on the moto-backed table and
the simulated Comput3."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from chalicelib.fleet.comput3 import Comput3Client
from chalicelib.fleet.reaper import Reaper, SweepDeferred
from chalicelib.fleet.registry import LAUNCHING, RUNNING, STOPPING, GpuRegistry, RecordLost, SlotTaken
from chalicelib.platform.logs import get_logger
from tests.support.fake_gpu_tasks import GPU_FAST
from worker_runtime.gpu import GpuSettings

pytestmark = pytest.mark.integration

GRACE, IDLE = 3.0, 5.0
_slots = itertools.count()


def intent(reg, owner, expires):
    return reg.create_intent(owner, expires, "media:fast", next(_slots))


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
    new = intent(reg, owner, int(now) + 600)
    w = c3.launch("media:fast", new.expires).workload
    return reg.update(new, state=RUNNING, workload=w.workload, node=w.node, launched_at=now,
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
    silent = rented(reg, c3, "dead", heartbeat_age=GRACE + 5, busy=True)  # died mid-job
    left_idle = rented(reg, c3, "dead", heartbeat_age=GRACE + 5, idle_for=1)  # anyone's to adopt
    idle = rented(reg, c3, "alive", idle_for=IDLE + 5)
    live_intent = intent(reg, "launcher", int(time.time()) + 900)
    stale_intent = reg.update(intent(reg, "crashed", int(time.time()) + 950),
                              heartbeat=time.time() - GRACE - 5)  # its launch never reached Comput3

    assert reaper(reg, c3, "me").reap_pass() == 3
    left = {r.id for r in reg.all()}
    assert left == {busy.id, fresh_idle.id, left_idle.id, live_intent.id}
    ledger = c3_sim.ledger()
    stopped = {i["workload"] for i in ledger["instances"] if not i["running"]}
    assert stopped == {silent.workload, idle.workload}
    assert stale_intent.id not in left and ledger["launches"] == 5


def test_sweep_waits_while_a_live_launch_shares_the_expires(reg, c3, c3_sim):
    expires = int(time.time()) + 700
    live = intent(reg, "launcher", expires)
    c3.launch("media:fast", expires)  # the launcher's instance, not recorded yet
    dead = reg.update(intent(reg, "crashed", expires), heartbeat=time.time() - 60)
    r = reaper(reg, c3, "me")
    with pytest.raises(SweepDeferred):
        r.sweep(expires, exclude_id=dead.id)
    assert c3_sim.ledger()["running"] == 1  # not stopped under the live launcher's feet
    reg.delete(live)
    assert len(r.sweep(expires, exclude_id=dead.id)) == 1
    assert c3_sim.ledger()["running"] == 0


def test_workloads_unknown_to_the_registry_are_stopped_past_the_grace(reg, c3, c3_sim):
    """Every pass lists Comput3's workloads: one no record knows (a late launch answer, a
    duplicate after the sweep) is stopped once past GPU_UNKNOWN_GRACE (its age told by the
    expires every launch sends, now + GPU_LIFETIME); a younger one, or one sharing its
    expires with a launching intent (its answer may be about to be recorded), is left."""
    now = int(time.time())
    lifetime, grace = 7200, 180  # the settings' defaults
    escaped = c3.launch("media:fast", now + lifetime - grace - 30).workload  # launched 210 s ago
    young = c3.launch("media:fast", now + lifetime - 20).workload
    pending = intent(reg, "launcher", now + lifetime - 600)
    answering = c3.launch("media:fast", pending.expires).workload  # its launch answered, not recorded yet
    stale = reg.update(intent(reg, "crashed", now + 850), heartbeat=time.time() - 60)
    assert reaper(reg, c3, "me").reap_pass() == 2  # the stale intent is resolved, the escaped one stopped
    assert reg.get(stale.id) is None
    running = {i["workload"] for i in c3_sim.ledger()["instances"] if i["running"]}
    assert running == {young.workload, answering.workload}
    assert escaped.workload not in running


def test_intent_is_written_once_with_a_ttl(reg, ctx):
    new = reg.create_intent("w", int(time.time()) + 100, "media:fast", 0)
    assert new.state == LAUNCHING and reg.get(new.id) == new and new.slot == 0
    item = ctx.dynamodb.get_item(TableName=reg.table, Key={"id": {"S": new.id}})["Item"]
    assert int(item["expires_at"]["N"]) == new.expires + 86400  # DynamoDB TTL drops old records
    with pytest.raises(SlotTaken):  # one record per slot: MAX_GPUS holds however many launch at once
        reg.create_intent("other", int(time.time()) + 100, "media:fast", 0)


def test_a_stale_copy_never_matches_the_slots_next_record(reg):
    old = reg.create_intent("w", int(time.time()) + 100, "media:fast", 0)
    reg.delete(old)
    new = reg.create_intent("w2", int(time.time()) + 100, "media:fast", 0)
    assert (new.id, new.version) == (old.id, old.version)  # same slot, same version number...
    with pytest.raises(RecordLost):  # ...but another record
        reg.update(old, heartbeat=time.time())


def test_own_records_are_reaped_only_when_no_longer_tracked(reg, c3, c3_sim):
    live = rented(reg, c3, "me", heartbeat_age=GRACE + 5, busy=True)  # in use (say, a long heartbeat gap)
    forgotten = rented(reg, c3, "me", heartbeat_age=GRACE + 5, busy=True)  # e.g. recording it failed
    r = reaper(reg, c3, "me")
    r.live_ids = lambda: {live.id}
    assert r.reap_pass() == 1
    assert {x.id for x in reg.all()} == {live.id}
    stopped = [i["workload"] for i in c3_sim.ledger()["instances"] if not i["running"]]
    assert stopped == [forgotten.workload]


def test_registry_reads_query_the_state_index_never_scan(ctx, c3, c3_sim):
    calls = []

    class Recording:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(ctx.dynamodb, name)

    reg = GpuRegistry(Recording(), ctx.settings.gpu_table, time.time)
    record = rented(reg, c3, "dead", busy=True, heartbeat_age=GRACE + 5)
    assert {r.id for r in reg.all()} == {record.id}
    assert reaper(reg, c3, "me").reap_pass() == 1
    assert "query" in calls and "scan" not in calls
