"""Run the simulator as its own process and talk to its admin endpoints (tests, make run)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from infra.local.processes import free_port

from .settings import DEFAULT_API_KEY

ROOT = Path(__file__).resolve().parents[3]
# Where a simulated node's apps live, relative to the "127.0.0.1:PORT" node name.
LOCAL_NODE_URLS = {
    "C3_NODE_URL": "http://{node}",
    "C3_COMFYUI_URL": "http://{node}/comfyui",
    "C3_OLLAMA_URL": "http://{node}/ollama",
}


class SimulatorProcess:
    def __init__(self, proc: subprocess.Popen, port: int, api_key: str):
        self.proc = proc
        self.port = port
        self.api_key = api_key
        self.url = f"http://127.0.0.1:{port}"
        self.session = requests.Session()

    @classmethod
    def start(cls, port: int | None = None, env: dict[str, str] | None = None, log_path: Path | None = None,
              timeout: float = 30.0) -> "SimulatorProcess":
        port = port or free_port()
        full_env = {**os.environ, **(env or {})}
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        proc = subprocess.Popen([sys.executable, "-m", "infra.local.simulator", "--port", str(port)],
                                env=full_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        sim = cls(proc, port, full_env.get("C3_SIM_API_KEY", DEFAULT_API_KEY))
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the Comput3 simulator exited with {proc.returncode} (log: {log_path})")
            try:
                requests.get(sim.url, timeout=1)
                return sim
            except requests.RequestException:
                if time.time() > deadline:
                    sim.stop()
                    raise TimeoutError(f"the Comput3 simulator did not answer on {sim.url} within {timeout}s")
                time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def worker_env(self, api_key: str | None = None) -> dict[str, str]:
        """What a worker needs to rent its GPUs here."""
        return {"C3_API_URL": f"{self.url}/api/v0", "C3_API_KEY": api_key or self.api_key, **LOCAL_NODE_URLS}

    # -- admin ------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: Any = None) -> Any:
        resp = self.session.request(method, f"{self.url}{path}", json=body, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def ledger(self) -> dict[str, Any]:
        return self._call("GET", "/admin/ledger")

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        return self._call("POST", "/admin/faults", faults)

    def node(self, workload: str) -> dict[str, Any]:
        return self._call("GET", f"/admin/nodes/{workload}")

    def node_action(self, workload: str, **action: Any) -> dict[str, Any]:
        return self._call("POST", f"/admin/nodes/{workload}", action)

    def reset(self) -> None:
        self._call("POST", "/admin/reset")
