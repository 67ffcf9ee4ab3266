"""One simulated GPU node: its own HTTP server on a free 127.0.0.1 port.

The node name the simulated Comput3 hands out is ``127.0.0.1:PORT``, so a worker with
``C3_NODE_URL=http://{node}``, ``C3_COMFYUI_URL=http://{node}/comfyui`` and
``C3_OLLAMA_URL=http://{node}/ollama`` reaches it like a real node.

Plug-in contract for the node's applications (CSM, Whisper, ComfyUI, Ollama): if the
module ``infra.local.simulator.apps`` exists, ``build_node_app`` calls
``apps.mount_all(app, state)`` with the FastAPI ``app`` (health already served at ``GET /``)
and this node's ``NodeState``:

    state.name       "127.0.0.1:PORT", the node host name
    state.workload   the Comput3 workload id
    state.api_key    the key every request must carry as X-C3-API-KEY
    state.faults     dict of switches, changed at run time through
                     POST /admin/nodes/{workload} {"faults": {...}} on the control plane
                     (new nodes start with the control plane's "node" fault dict).
                     Read at request time; keys are free-form per app. The health
                     endpoint reads "health_status" (answer this HTTP code instead of 200).
    state.requests   list; apps append what they received (e.g. {"app": "csm", "path":
                     ..., "params": {...}}), readable at GET /admin/nodes/{workload}
    state.log        an EventLogger labelled simulated=True
    state.work_dir   a scratch directory private to this node

Everything a node does is simulated, and its logs say so.
"""

from __future__ import annotations

import importlib
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from chalicelib.platform.logs import EventLogger, get_logger

APPS_MODULE = "infra.local.simulator.apps"


@dataclass
class NodeState:
    name: str
    workload: str
    api_key: str
    faults: dict[str, Any] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    ready_at: float = 0.0  # health answers 503 "initializing" before this time
    log: EventLogger = field(default_factory=lambda: get_logger("c3.simulator.node", simulated=True))
    work_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="c3-sim-node-")))

    def authorized(self, request: Request) -> bool:
        return request.headers.get("x-c3-api-key") == self.api_key


def build_node_app(state: NodeState, with_apps: bool = True) -> FastAPI:
    app = FastAPI(title=f"Simulated Comput3 node {state.name}", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/")
    def health(request: Request) -> JSONResponse:
        if not state.authorized(request):
            return JSONResponse({"error": "missing or wrong X-C3-API-KEY", "simulated": True}, status_code=401)
        forced = state.faults.get("health_status")
        if forced:
            return JSONResponse({"status": "fault", "simulated": True}, status_code=int(forced))
        if time.time() < state.ready_at:
            return JSONResponse({"status": "initializing", "simulated": True}, status_code=503)
        return JSONResponse({"status": "ok", "node": state.name, "workload": state.workload, "simulated": True})

    if with_apps:
        try:
            apps = importlib.import_module(APPS_MODULE)
        except ModuleNotFoundError as exc:
            if exc.name != APPS_MODULE:
                raise
            state.log.info("sim.node_apps_absent", node=state.name, reason=f"{APPS_MODULE} not installed")
        else:
            apps.mount_all(app, state)
    return app


class NodeServer:
    """Serves a node's app with uvicorn in a daemon thread. The listening socket is bound
    (and listening) before ``start`` returns, so the port is known and early requests
    wait in the backlog instead of being refused while the app is built."""

    def __init__(self, state_factory: Any, with_apps: bool):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.name = f"127.0.0.1:{self.port}"
        self.state: NodeState = state_factory(self.name)
        self.with_apps = with_apps
        self._server: uvicorn.Server | None = None
        self._killed = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name=f"sim-node-{self.port}", daemon=True)

    def start(self) -> "NodeServer":
        self._thread.start()
        return self

    def _serve(self) -> None:
        try:
            app = build_node_app(self.state, self.with_apps)
        except Exception:  # noqa: BLE001 - a broken app plug-in: the node never answers, as a dead one
            self.state.log.error("sim.node_build_failed", node=self.name, exc_info=True)
            self.sock.close()
            return
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=1)
        with self._lock:
            if self._killed.is_set():
                self.sock.close()
                return
            self._server = uvicorn.Server(config)
        self._server.run(sockets=[self.sock])

    def kill(self) -> None:
        """Stop answering at once (a node that died, or a stopped instance)."""
        with self._lock:
            self._killed.set()
            server = self._server
        if server is not None:
            # Listening stops within uvicorn's 0.1 s tick; requests in flight get up to
            # timeout_graceful_shutdown, and the lifespan (which Gradio mounts use) ends cleanly.
            server.should_exit = True
        else:
            try:
                self.sock.close()
            except OSError:
                pass

    @property
    def alive(self) -> bool:
        return not self._killed.is_set()
