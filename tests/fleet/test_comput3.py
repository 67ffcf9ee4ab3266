"""The Comput3 client against the simulated control plane, over HTTP."""

from __future__ import annotations

import time

import pytest

from chalicelib.fleet.comput3 import Comput3Client, Comput3KeyRefused, LaunchAborted, LaunchFailed, WorkloadNotFound
from tests.support import procs
from tests.support.harness import wait_until

DELAYS = (0.05, 0.1, 0.1)


def client(sim, key=None, **kw):
    kw.setdefault("retry_delays", DELAYS)
    return Comput3Client(f"{sim.url}/api/v0", key or sim.api_key, **kw)


def expires(seconds=600):
    return int(time.time()) + seconds


def test_launch_list_stop_and_node_health(c3_sim):
    c = client(c3_sim)
    e = expires()
    launch = c.launch("media:fast", e)
    w = launch.workload
    assert (launch.attempts, launch.maybe_duplicated) == (1, False)
    assert w.node.startswith("127.0.0.1:") and w.expires == e and w.type == "media:fast"
    assert [x.workload for x in c.workloads()] == [w.workload]
    assert c.check_node(f"http://{w.node}", attempts=1) is None
    assert c.stop(w.workload)["stopped"] is True
    assert c.workloads() == []
    # A stopped node stops answering (uvicorn closes its socket within a tick).
    down = wait_until(lambda: c.check_node(f"http://{w.node}", attempts=1, timeout=1), 5)
    assert down.startswith(f"GET http://{w.node}/ failed: ConnectionError")
    with pytest.raises(WorkloadNotFound):
        c.stop("sim-does-not-exist")
    entry = c3_sim.ledger()["instances"][0]
    assert entry["ended_by"] == "stop" and entry["billed_seconds"] > 0


def test_launch_retries_5xx_and_html_then_succeeds(c3_sim):
    c3_sim.set_faults(launch_5xx=2, launch_html=1)
    waits = []
    launch = client(c3_sim).launch("media:fast", expires(), wait=lambda s: waits.append(s) or False)
    assert launch.attempts == 4 and launch.maybe_duplicated
    assert waits == list(DELAYS)  # growing delays, in order
    ledger = c3_sim.ledger()
    assert (ledger["launch_requests"], ledger["launch_5xx"], ledger["launch_html"], ledger["launches"]) == (4, 2, 1, 1)


@pytest.mark.parametrize("fault,reason", [("launch_5xx", "answered HTTP 503"),
                                          ("launch_html", "non-JSON page (HTTP 200, text/html")])
def test_launch_gives_up_after_the_last_delay(c3_sim, fault, reason):
    c3_sim.set_faults(**{fault: 10})
    with pytest.raises(LaunchFailed) as err:
        client(c3_sim).launch("media:fast", expires())
    assert "after 4 attempts" in str(err.value) and reason in str(err.value)
    assert err.value.maybe_launched
    ledger = c3_sim.ledger()
    assert (ledger["launch_requests"], ledger["launches"]) == (4, 0)


@pytest.mark.parametrize("refuse_fault", [False, True])
def test_refused_key_is_not_retried(c3_sim, refuse_fault):
    if refuse_fault:
        c3_sim.set_faults(refuse_key=True)
    c = client(c3_sim, key=None if refuse_fault else "wrong-key")
    with pytest.raises(Comput3KeyRefused) as err:
        c.launch("media:fast", expires())
    assert "Comput3 refused the API key" in str(err.value)
    assert f"HTTP {403 if refuse_fault else 401}" in str(err.value)
    ledger = c3_sim.ledger()
    assert (ledger["refused"], ledger["launches"]) == (1, 0)
    with pytest.raises(Comput3KeyRefused):
        c.workloads()


def test_unreachable_control_plane_is_retried_and_known_not_launched():
    c = Comput3Client(f"http://127.0.0.1:{procs.free_port()}/api/v0", "k", retry_delays=(0.01, 0.01))
    with pytest.raises(LaunchFailed) as err:
        c.launch("media:fast", expires())
    assert "after 3 attempts" in str(err.value) and "connection error" in str(err.value)
    assert err.value.maybe_launched is False  # refused before anything was sent


def test_slow_launch_times_out_and_the_retry_may_duplicate(c3_sim):
    c3_sim.set_faults(launch_delay=1.5, launch_delay_count=1)
    launch = client(c3_sim, launch_timeout=0.5).launch("media:fast", expires())
    assert launch.attempts == 2 and launch.maybe_duplicated
    # The timed-out attempt did start an instance: that is what the GPU manager sweeps.
    assert c3_sim.ledger()["launches"] == 2


def test_a_cancelled_wait_abandons_the_launch(c3_sim):
    c3_sim.set_faults(launch_5xx=5)
    with pytest.raises(LaunchAborted):
        client(c3_sim).launch("media:fast", expires(), wait=lambda s: True)
    assert c3_sim.ledger()["launch_requests"] == 1


def test_bad_launch_body_is_a_definite_failure(c3_sim):
    with pytest.raises(LaunchFailed) as err:
        client(c3_sim).launch("media:slow", expires())
    assert "HTTP 400" in str(err.value) and err.value.maybe_launched is False
    assert c3_sim.ledger()["launch_requests"] == 0
