"""The simulated Comput3 itself, over HTTP: control plane, ledger, expiry, fault switches,
and the node plug-in contract."""

from __future__ import annotations

import sys
import time
import types

import requests

from infra.local.simulator import SimulatorProcess
from infra.local.simulator.node import APPS_MODULE, NodeServer, NodeState
from tests.support.harness import wait_until


def api(sim, path, body=None, key="default"):
    headers = {} if key is None else {"X-C3-API-KEY": sim.api_key if key == "default" else key}
    return requests.post(f"{sim.url}/api/v0{path}", json=body or {}, headers=headers, timeout=5)


def launch(sim, seconds=600):
    resp = api(sim, "/launch", {"type": "media:fast", "expires": int(time.time()) + seconds})
    assert resp.status_code == 200, resp.text
    return resp.json()


def health(sim, node, key="default", timeout=2):
    headers = {} if key is None else {"X-C3-API-KEY": sim.api_key if key == "default" else key}
    return requests.get(f"http://{node}/", headers=headers, timeout=timeout)


def refused(url):
    try:
        requests.get(url, timeout=1)
    except requests.ConnectionError:
        return True
    return False


def node_down(sim, node):
    return refused(f"http://{node}/")


def test_every_call_needs_the_key(c3_sim):
    for path in ("/launch", "/workloads", "/stop"):
        assert api(c3_sim, path, key=None).status_code == 401
        assert api(c3_sim, path, key="nope").status_code == 401
    w = launch(c3_sim)
    assert health(c3_sim, w["node"], key=None).status_code == 401
    assert health(c3_sim, w["node"]).json()["simulated"] is True
    assert c3_sim.ledger()["refused"] == 6


def test_bad_launch_requests_are_rejected(c3_sim):
    assert api(c3_sim, "/launch", {"type": "media:fast", "expires": int(time.time()) - 1}).status_code == 400
    assert api(c3_sim, "/launch", {"type": "gpu:huge", "expires": int(time.time()) + 60}).status_code == 400
    assert api(c3_sim, "/launch", {"type": "media:fast", "expires": "soon"}).status_code == 400
    assert c3_sim.ledger()["launches"] == 0
    bad = requests.post(f"{c3_sim.url}/admin/faults", json={"launch_5xxx": 1}, timeout=5)
    assert bad.status_code == 400 and "launch_5xxx" in bad.json()["error"]


def test_expiry_is_honoured_and_billing_stops_there(c3_sim):
    w = launch(c3_sim, seconds=2)
    assert [x["workload"] for x in api(c3_sim, "/workloads", {"running": True}).json()] == [w["workload"]]
    entry = wait_until(lambda: (e := c3_sim.ledger()["instances"][0])["ended_by"] and e, 10)
    assert entry["ended_by"] == "expiry" and entry["ended_at"] == w["expires"]
    assert entry["billed_seconds"] == round(w["expires"] - entry["launched_at"], 3)
    assert api(c3_sim, "/workloads", {"running": True}).json() == []
    wait_until(lambda: node_down(c3_sim, w["node"]), 5)
    late = api(c3_sim, "/stop", {"workload": w["workload"]}).json()
    assert late["stopped"] is False and late["refund_seconds"] == 0
    time.sleep(0.3)
    assert c3_sim.ledger()["instances"][0]["billed_seconds"] == entry["billed_seconds"]


def test_stop_ends_billing_and_the_node(c3_sim):
    w = launch(c3_sim)
    stop = api(c3_sim, "/stop", {"workload": w["workload"]}).json()
    assert stop["stopped"] is True and stop["refund_seconds"] > 500
    assert api(c3_sim, "/stop", {"workload": "sim-unknown"}).status_code == 404
    wait_until(lambda: node_down(c3_sim, w["node"]), 5)
    ledger = c3_sim.ledger()
    assert (ledger["launches"], ledger["stops"], ledger["running"]) == (1, 1, 0)
    billed = ledger["instances"][0]["billed_seconds"]
    time.sleep(0.3)
    assert c3_sim.ledger()["billed_seconds"] == billed


def test_node_faults_die_hide_and_forced_health(c3_sim):
    dead, hidden, sick = launch(c3_sim), launch(c3_sim), launch(c3_sim)
    c3_sim.node_action(dead["workload"], die=True)
    c3_sim.node_action(hidden["workload"], hide=True)
    c3_sim.node_action(sick["workload"], faults={"health_status": 500})
    wait_until(lambda: node_down(c3_sim, dead["node"]), 5)
    listed = {x["workload"] for x in api(c3_sim, "/workloads", {"running": True}).json()}
    assert listed == {dead["workload"], sick["workload"]}  # a dead node is still rented
    assert health(c3_sim, hidden["node"]).status_code == 200  # hidden, yet answering
    assert health(c3_sim, sick["node"]).status_code == 500
    assert c3_sim.node(sick["workload"])["faults"] == {"health_status": 500}
    ledger = c3_sim.ledger()
    assert ledger["running"] == 3  # all three still bill until stopped
    entry = next(i for i in ledger["instances"] if i["workload"] == dead["workload"])
    assert entry["dead"] and entry["running"]


def test_timed_node_faults_and_reset(c3_sim):
    c3_sim.set_faults(node_die_after=0.3, node_hide_after=0.3, node_init_seconds=0.2)
    w = launch(c3_sim)
    assert health(c3_sim, w["node"]).status_code == 503  # still initialising
    wait_until(lambda: node_down(c3_sim, w["node"]), 5)
    wait_until(lambda: api(c3_sim, "/workloads", {"running": True}).json() == [], 5)
    c3_sim.reset()
    ledger = c3_sim.ledger()
    assert (ledger["launches"], ledger["instances"], ledger["faults"]["node_die_after"]) == (0, [], None)


def test_fault_switches_from_the_environment(log_dir):
    sim = SimulatorProcess.start(env={"C3_SIM_APPS": "0", "C3_SIM_LAUNCH_5XX": "1", "C3_SIM_LAUNCH_HTML": "1",
                                      "C3_SIM_API_KEY": "env-key"},
                                 log_path=log_dir / "c3sim-env-faults.log")
    try:
        assert sim.api_key == "env-key"
        body = {"type": "media:fast", "expires": int(time.time()) + 60}
        assert api(sim, "/launch", body).status_code == 503
        html = api(sim, "/launch", body)
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        assert api(sim, "/launch", body).status_code == 200
        sim.reset()  # back to the environment's faults
        assert api(sim, "/launch", body).status_code == 503
        assert "SIMULATED" in (log_dir / "c3sim-env-faults.log").read_text()
    finally:
        sim.stop()


def test_node_apps_plug_in_through_mount_all(monkeypatch):
    """The contract with infra.local.simulator.apps: mount_all(app, state) gets the node's
    FastAPI app and its NodeState; apps read state.faults and record into state.requests."""
    seen = {}

    def mount_all(app, state):
        seen["state"] = state

        @app.post("/echo")
        async def echo(payload: dict):
            state.requests.append({"app": "echo", "params": payload})
            return {"mode": state.faults.get("echo", "ok"), "node": state.name}

    monkeypatch.setitem(sys.modules, APPS_MODULE, types.SimpleNamespace(mount_all=mount_all))
    server = NodeServer(lambda name: NodeState(name=name, workload="sim-x", api_key="k",
                                               faults={"echo": "slow"}), with_apps=True).start()
    try:
        resp = requests.post(f"http://{server.name}/echo", json={"a": 1}, timeout=10)
        assert resp.json() == {"mode": "slow", "node": server.name}
        assert seen["state"].requests == [{"app": "echo", "params": {"a": 1}}]
        assert requests.get(f"http://{server.name}/", headers={"X-C3-API-KEY": "k"}, timeout=5).status_code == 200
    finally:
        server.kill()
    wait_until(lambda: refused(f"http://{server.name}/"), 5)


def test_slow_stop_fault_delays_the_answer_and_the_end_of_billing(c3_sim):
    w = launch(c3_sim)
    c3_sim.set_faults(stop_delay=1.0)
    asked = time.time()
    assert api(c3_sim, "/stop", {"workload": w["workload"]}).json()["stopped"] is True
    assert time.time() - asked >= 1.0
    [entry] = c3_sim.ledger()["instances"]
    assert entry["ended_by"] == "stop" and entry["ended_at"] - asked >= 1.0


def test_a_node_boots_after_its_launch_answered(c3_sim):
    c3_sim.set_faults(launch_delay=0.5, node_init_seconds=0.5)
    asked = time.time()
    w = launch(c3_sim)
    assert time.time() - asked >= 0.5
    assert health(c3_sim, w["node"]).status_code == 503  # booting, like a provider's fresh node
    wait_until(lambda: health(c3_sim, w["node"]).status_code == 200, 5)
    assert time.time() - asked >= 1.0
