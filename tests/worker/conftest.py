"""Fixtures of the worker tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def sim_with_apps(log_dir, request):
    """A simulated Comput3 whose nodes serve the real node apps (CSM, Whisper, ComfyUI, Ollama)."""
    from infra.local.simulator import SimulatorProcess

    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in request.node.name)
    sim = SimulatorProcess.start(log_path=log_dir / f"c3sim-{name}.log")
    yield sim
    sim.stop()
