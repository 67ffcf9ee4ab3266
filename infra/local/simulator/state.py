"""The simulated Comput3 account: instances, billing ledger, faults. Thread-safe.

Billing follows the real rule (PROTOCOLS.md §1): an instance is billed from launch until
it is stopped or its ``expires`` passes, whichever comes first; at ``expires`` the
simulator ends it itself (node server shut down, ``ended_by: "expiry"``)."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from chalicelib.platform.logs import get_logger

from .node import NodeServer, NodeState
from .settings import Faults, SimulatorSettings

log = get_logger("c3.simulator", simulated=True)


@dataclass
class Instance:
    workload: str
    type: str
    expires: int
    launched_at: float
    server: NodeServer
    ended_at: float | None = None
    ended_by: str | None = None  # "stop" | "expiry"
    hidden: bool = False  # dropped out of /workloads (the node may still answer)
    dead: bool = False  # the node stopped answering
    die_at: float | None = None
    hide_at: float | None = None
    stop_requests: int = 0

    @property
    def node(self) -> str:
        return self.server.name

    @property
    def running(self) -> bool:
        return self.ended_at is None

    def billed(self, now: float) -> float:
        end = self.ended_at if self.ended_at is not None else now
        return round(max(0.0, min(end, self.expires) - self.launched_at), 3)

    def listing(self) -> dict[str, Any]:
        return {"workload": self.workload, "node": self.node, "type": self.type, "expires": self.expires,
                "status": "running" if self.running else "stopped"}

    def ledger_entry(self, now: float) -> dict[str, Any]:
        return {**self.listing(), "launched_at": self.launched_at, "ended_at": self.ended_at,
                "ended_by": self.ended_by, "billed_seconds": self.billed(now), "running": self.running,
                "hidden": self.hidden, "dead": self.dead, "stop_requests": self.stop_requests}


@dataclass
class Counters:
    launch_requests: int = 0
    launches: int = 0
    launch_5xx: int = 0
    launch_html: int = 0
    launch_odd_body: int = 0
    refused: int = 0
    stops: int = 0
    workloads_requests: int = 0


class Simulator:
    def __init__(self, settings: SimulatorSettings, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.clock = clock
        self._lock = threading.Lock()
        self.faults = settings.initial_faults()
        self.instances: dict[str, Instance] = {}
        self.counters = Counters()
        self._closed = threading.Event()
        self._expirer = threading.Thread(target=self._expire_loop, name="sim-expiry", daemon=True)

    def start(self) -> "Simulator":
        self._expirer.start()
        return self

    # -- control plane -----------------------------------------------------------
    def refusal(self, key: str | None) -> int | None:
        """HTTP status to refuse a control-plane call with, or None."""
        with self._lock:
            code = 403 if self.faults.refuse_key else 401 if key != self.settings.api_key else None
            if code:
                self.counters.refused += 1
        if code:
            log.warning("sim.key_refused", status=code, reason="refuse_key fault" if code == 403 else "wrong key")
        return code

    def take_launch_fault(self) -> str | None:
        with self._lock:
            self.counters.launch_requests += 1
            if self.faults.launch_5xx > 0:
                self.faults.launch_5xx -= 1
                self.counters.launch_5xx += 1
                return "5xx"
            if self.faults.launch_html > 0:
                self.faults.launch_html -= 1
                self.counters.launch_html += 1
                return "html"
            if self.faults.launch_odd_body > 0:
                self.faults.launch_odd_body -= 1
                self.counters.launch_odd_body += 1
                return "odd_body"
        return None

    def take_launch_delay(self) -> float:
        with self._lock:
            f = self.faults
            if not f.launch_delay or f.launch_delay_count == 0:
                return 0.0
            if f.launch_delay_count is not None:
                f.launch_delay_count -= 1
            return f.launch_delay

    def launch(self, workload_type: str, expires: int, answer_delay: float = 0.0) -> Instance:
        """A new instance, billed from now; its node boots (``node_init_seconds``) once the
        launch call has answered, ``answer_delay`` from now, as a provider's node does."""
        now = self.clock()
        workload = f"sim-{uuid.uuid4().hex[:12]}"
        with self._lock:
            faults = self.faults.model_copy(deep=True)

        def state(name: str) -> NodeState:
            return NodeState(name=name, workload=workload, api_key=self.settings.api_key,
                             faults=dict(faults.node), ready_at=now + answer_delay + faults.node_init_seconds)

        server = NodeServer(state, self.settings.apps).start()
        instance = Instance(workload, workload_type, expires, now, server,
                            die_at=None if faults.node_die_after is None else now + faults.node_die_after,
                            hide_at=None if faults.node_hide_after is None else now + faults.node_hide_after)
        with self._lock:
            self.instances[workload] = instance
            self.counters.launches += 1
        log.info("sim.launched", workload=workload, node=instance.node, type=workload_type, expires=expires,
                 reason="simulated GPU instance; billing starts now")
        return instance

    def running(self) -> list[Instance]:
        with self._lock:
            self.counters.workloads_requests += 1
            return [i for i in self.instances.values() if i.running and not i.hidden]

    def all(self) -> list[Instance]:
        with self._lock:
            return list(self.instances.values())

    def stop(self, workload: str) -> Instance | None:
        with self._lock:
            instance = self.instances.get(workload)
            if instance is None:
                return None
            instance.stop_requests += 1
            if not instance.running:
                return instance
            instance.ended_at, instance.ended_by = self.clock(), "stop"
            self.counters.stops += 1
        instance.server.kill()
        log.info("sim.stopped", workload=workload, node=instance.node,
                 billed_seconds=instance.billed(self.clock()), reason="stop requested")
        return instance

    # -- admin ---------------------------------------------------------------------
    def set_faults(self, changes: dict[str, Any]) -> Faults:
        with self._lock:
            self.faults = Faults(**{**self.faults.model_dump(), **changes})
            faults = self.faults
        log.warning("sim.faults_set", changes=changes, reason="fault injection (simulated)")
        return faults

    def node_action(self, workload: str, die: bool = False, hide: bool = False,
                    faults: dict[str, Any] | None = None,
                    replace_faults: dict[str, Any] | None = None) -> Instance | None:
        with self._lock:
            instance = self.instances.get(workload)
        if instance is None:
            return None
        if replace_faults is not None:
            instance.server.state.faults.clear()
            instance.server.state.faults.update(replace_faults)
        if faults:
            instance.server.state.faults.update(faults)
        if hide:
            instance.hidden = True
            log.warning("sim.node_hidden", workload=workload, reason="fault: removed from /workloads")
        if die:
            instance.dead = True
            instance.server.kill()
            log.warning("sim.node_died", workload=workload, node=instance.node,
                        reason="fault: node stops answering; still billed until stopped or expired")
        return instance

    def ledger(self) -> dict[str, Any]:
        now = self.clock()
        with self._lock:
            instances = [i.ledger_entry(now) for i in self.instances.values()]
            counters = vars(self.counters).copy()
            faults = self.faults.model_dump()
        return {"simulated": True, "now": now, **counters,
                "running": sum(1 for i in instances if i["running"]),
                "billed_seconds": round(sum(i["billed_seconds"] for i in instances), 3),
                "instances": instances, "faults": faults}

    def reset(self) -> None:
        with self._lock:
            instances = list(self.instances.values())
            self.instances.clear()
            self.counters = Counters()
            self.faults = self.settings.initial_faults()
        for instance in instances:
            instance.server.kill()
        log.info("sim.reset", reason="admin reset: instances dropped, ledger and faults cleared")

    def close(self) -> None:
        self._closed.set()
        for instance in self.all():
            instance.server.kill()

    # -- time-driven events --------------------------------------------------------
    def _expire_loop(self) -> None:
        while not self._closed.wait(self.settings.expiry_check):
            now = self.clock()
            for instance in self.all():
                if instance.running and now >= instance.expires:
                    with self._lock:
                        instance.ended_at, instance.ended_by = float(instance.expires), "expiry"
                    instance.server.kill()
                    log.info("sim.expired", workload=instance.workload, billed_seconds=instance.billed(now),
                             reason="the rental reached its expires")
                if not instance.running:
                    continue
                if instance.die_at is not None and now >= instance.die_at and not instance.dead:
                    self.node_action(instance.workload, die=True)
                if instance.hide_at is not None and now >= instance.hide_at and not instance.hidden:
                    self.node_action(instance.workload, hide=True)
