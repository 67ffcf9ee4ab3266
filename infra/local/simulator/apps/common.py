"""What the simulated node apps share: request recording, fault switches, logging.

``node_state`` is the simulator's NodeState (name, workload, api_key, faults, requests).
Each app appends what it received to ``node_state.requests`` as a dict
``{"app", "event", "at", ...fields}`` so tests can check that parameters arrived as
sent, and reads its switch from ``node_state.faults[app]`` ("error", "slow", ...)."""

from __future__ import annotations

import time
from typing import Any

from chalicelib.platform.logs import EventLogger, get_logger

DEFAULT_SLOW_SECONDS = 600.0


def sim_log(app: str, node_state: Any) -> EventLogger:
    """Every line says it comes from a simulated app."""
    return get_logger(f"c3.simulator.{app}", simulated=True, node=getattr(node_state, "name", None))


def record(node_state: Any, app: str, event: str, **fields: Any) -> dict[str, Any]:
    entry = {"app": app, "event": event, "at": time.time(), **fields}
    node_state.requests.append(entry)  # list.append is atomic: safe from app threads
    return entry


def fault(node_state: Any, app: str) -> str | None:
    return (getattr(node_state, "faults", None) or {}).get(app)


def slow_seconds(node_state: Any) -> float:
    """How long a "slow" job runs unless stopped (faults["slow_seconds"])."""
    return float((getattr(node_state, "faults", None) or {}).get("slow_seconds", DEFAULT_SLOW_SECONDS))
