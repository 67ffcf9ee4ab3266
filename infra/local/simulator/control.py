"""The simulated Comput3 control plane (PROTOCOLS.md §1) plus its admin endpoints.

    POST /api/v0/launch     {"type": "media:fast", "expires": <unix s>} -> {"workload", "node", ...}
    POST /api/v0/workloads  {"running": true} -> [{"workload", "node", "type", "expires", "status"}]
    POST /api/v0/stop       {"workload"} -> {"stopped": true, "refund_seconds"}; 404 when unknown
    GET  /admin/ledger      launches, stops, billed seconds per instance, counters, faults
    GET  /admin/faults      POST /admin/faults {...}: change fault switches (settings.Faults)
    GET  /admin/nodes/{id}  POST /admin/nodes/{id} {"die": true, "hide": true, "faults": {...}}
    POST /admin/nodes       {"faults": {...}}: the app faults of every node, running or launched later
    POST /admin/reset       drop every instance, clear the ledger, faults back to the env's

Control-plane calls need X-C3-API-KEY; admin calls are local-only (127.0.0.1) and open.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import ValidationError

from .settings import WORKLOAD_TYPES
from .state import Simulator, log

CDN_ERROR_PAGE = """<!DOCTYPE html>
<html><head><title>502 Bad Gateway (simulated)</title></head>
<body><h1>Bad Gateway</h1><p>The origin did not answer in time. (simulated CDN error page)</p></body></html>
"""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "simulated": True}, status_code=status)


async def _body(request: Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def build_control_app(sim: Simulator) -> FastAPI:
    app = FastAPI(title="Simulated Comput3 control plane", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/")
    def root() -> dict[str, Any]:
        return {"service": "Comput3 control-plane simulator", "simulated": True, "api": "/api/v0"}

    @app.post("/api/v0/launch")
    async def launch(request: Request) -> Any:
        refused = sim.refusal(request.headers.get("x-c3-api-key"))
        if refused:
            return _error(refused, "API key refused (simulated)")
        body = await _body(request)
        if body is None:
            return _error(400, "body must be a JSON object")
        workload_type, expires = body.get("type"), body.get("expires")
        if workload_type not in WORKLOAD_TYPES:
            return _error(400, f"unknown type {workload_type!r}; known: {', '.join(WORKLOAD_TYPES)}")
        if isinstance(expires, bool) or not isinstance(expires, int) or expires <= time.time():
            return _error(400, "expires must be a unix time (integer seconds) in the future")
        fault = sim.take_launch_fault()
        if fault == "5xx":
            log.warning("sim.launch_fault", fault="503", reason="simulated transient launch failure")
            return _error(503, "no capacity right now (simulated)")
        if fault == "html":
            log.warning("sim.launch_fault", fault="html", reason="simulated CDN error page instead of JSON")
            return HTMLResponse(CDN_ERROR_PAGE, status_code=200)
        delay = sim.take_launch_delay()
        instance = sim.launch(workload_type, expires, delay)  # binds a port, starts a thread: quick
        if delay:
            log.warning("sim.launch_slow", workload=instance.workload, seconds=delay,
                        reason="simulated slow launch; the instance already bills")
            await asyncio.sleep(delay)
        if fault == "odd_body":
            log.warning("sim.launch_fault", fault="odd_body", workload=instance.workload,
                        reason="simulated 200 whose body lacks workload and node; the instance already bills")
            return {"id": instance.workload, "status": "starting", "simulated": True}
        return {"workload": instance.workload, "node": instance.node, "type": instance.type,
                "expires": instance.expires, "simulated": True}

    @app.post("/api/v0/workloads")
    async def workloads(request: Request) -> Any:
        refused = sim.refusal(request.headers.get("x-c3-api-key"))
        if refused:
            return _error(refused, "API key refused (simulated)")
        body = await _body(request) or {}
        if body.get("running", True):
            return [i.listing() for i in sim.running()]
        return [i.listing() for i in sim.all() if not i.hidden]

    @app.post("/api/v0/stop")
    async def stop(request: Request) -> Any:
        refused = sim.refusal(request.headers.get("x-c3-api-key"))
        if refused:
            return _error(refused, "API key refused (simulated)")
        body = await _body(request) or {}
        workload = body.get("workload")
        if not isinstance(workload, str) or not workload:
            return _error(400, "workload (string) is required")
        delay = sim.faults.stop_delay
        if delay:
            log.warning("sim.stop_slow", workload=workload, seconds=delay,
                        reason="simulated slow stop; the instance bills until it answers")
            await asyncio.sleep(delay)
        was_running = workload in {i.workload for i in sim.all() if i.running}
        instance = sim.stop(workload)
        if instance is None:
            return _error(404, f"unknown workload {workload}")
        refund = max(0.0, instance.expires - (instance.ended_at or time.time())) if was_running else 0.0
        return {"workload": workload, "stopped": was_running, "refund_seconds": round(refund, 3),
                "simulated": True}

    # -- admin -------------------------------------------------------------------
    @app.get("/admin/ledger")
    def ledger() -> dict[str, Any]:
        return sim.ledger()

    @app.get("/admin/faults")
    def get_faults() -> dict[str, Any]:
        return sim.faults.model_dump()

    @app.post("/admin/faults")
    async def set_faults(request: Request) -> Any:
        body = await _body(request)
        if body is None:
            return _error(400, "body must be a JSON object of fault switches")
        try:
            return sim.set_faults(body).model_dump()
        except ValidationError as exc:
            return _error(400, str(exc))

    @app.get("/admin/nodes/{workload}")
    def node(workload: str) -> Any:
        instance = next((i for i in sim.all() if i.workload == workload), None)
        if instance is None:
            return _error(404, f"unknown workload {workload}")
        state = instance.server.state
        return {**instance.ledger_entry(time.time()), "faults": state.faults, "requests": state.requests}

    @app.post("/admin/nodes")
    async def all_nodes(request: Request) -> Any:
        body = await _body(request)
        faults = (body or {}).get("faults")
        if not isinstance(faults, dict):
            return _error(400, 'body must be {"faults": {...}}: e.g. {"faults": {"ollama": "slow", "slow_seconds": 60}}')
        try:
            sim.set_faults({"node": faults})
        except ValidationError as exc:
            return _error(400, str(exc))
        nodes = [i.workload for i in sim.all() if not i.dead]
        for workload in nodes:
            sim.node_action(workload, replace_faults=faults)
        return {"faults": faults, "nodes": nodes, "simulated": True}

    @app.post("/admin/nodes/{workload}")
    async def node_action(workload: str, request: Request) -> Any:
        body = await _body(request) or {}
        instance = sim.node_action(workload, die=bool(body.get("die")), hide=bool(body.get("hide")),
                                   faults=body.get("faults") if isinstance(body.get("faults"), dict) else None)
        if instance is None:
            return _error(404, f"unknown workload {workload}")
        return instance.ledger_entry(time.time())

    @app.post("/admin/reset")
    def reset() -> dict[str, Any]:
        sim.reset()
        return {"reset": True, "simulated": True}

    return app

