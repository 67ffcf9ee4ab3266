"""``python -m infra.local.simulator --port N``: the simulated Comput3 on 127.0.0.1."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from chalicelib.platform.logs import configure

from .control import build_control_app
from .settings import SimulatorSettings
from .state import Simulator, log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Simulated Comput3.AI control plane and GPU nodes (127.0.0.1 only)")
    parser.add_argument("--port", type=int, default=8790, help="control-plane port (default 8790)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure(args.log_level)
    settings = SimulatorSettings()
    sim = Simulator(settings).start()
    url = f"http://127.0.0.1:{args.port}"
    log.warning("sim.started", url=url, api=f"{url}/api/v0", api_key=settings.api_key, apps=settings.apps,
                faults=sim.faults.model_dump(),
                reason="SIMULATED Comput3: no real GPU is rented; nodes are local HTTP servers")
    try:
        uvicorn.run(build_control_app(sim), host="127.0.0.1", port=args.port, log_level="warning",
                    access_log=False, timeout_graceful_shutdown=0.5)
    finally:
        sim.close()
        log.info("sim.stopped_all", reason="simulator exiting; every simulated node shut down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
