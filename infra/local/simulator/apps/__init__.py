"""The GPU node's applications, simulated (every log line carries ``simulated: true``).

``mount_all(app, node_state)`` puts them on the node's FastAPI app:

    /csm/       CSM text-to-speech, a real Gradio app (api_name /generate_monologue_audio)
    /whisper/   Whisper speech-to-text, a real Gradio app (api_name /transcribe_audio)
    /comfyui/   ComfyUI REST API with the SONIC portrait nodes (renders a real MP4)
    /ollama/    Ollama generate API with a vision model that describes pixels

All of them require the node's ``X-C3-API-KEY``. Each records what it received in
``node_state.requests`` and obeys its switch in ``node_state.faults`` (see each module)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from .common import sim_log

PREFIXES = ("/csm", "/whisper", "/comfyui", "/ollama")


class NodeKeyMiddleware:
    """Plain ASGI (not BaseHTTPMiddleware), so streaming and disconnects pass through."""

    def __init__(self, app: Any, node_state: Any, prefixes: tuple[str, ...] = PREFIXES):
        self.app = app
        self.state = node_state
        self.prefixes = prefixes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(self.prefixes) and self.state.api_key:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            if headers.get("x-c3-api-key") != self.state.api_key:
                body = json.dumps({"error": "missing or wrong X-C3-API-KEY (simulated node)"}).encode()
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def mount_all(app: FastAPI, node_state: Any, workdir: Path | None = None) -> Path:
    """Mount the four apps; files they make live under ``workdir`` (else the node's
    ``work_dir``, else a new temp dir), which is returned."""
    from . import comfyui, gradio_apps, ollama  # gradio is heavy: imported only when a node is built

    root = Path(workdir or getattr(node_state, "work_dir", None) or tempfile.mkdtemp(prefix="c3-sim-apps-"))
    media = root / "gradio"
    media.mkdir(parents=True, exist_ok=True)
    app.add_middleware(NodeKeyMiddleware, node_state=node_state)
    gradio_apps.mount(app, node_state, media)  # serialised across nodes: see gradio_apps
    app.include_router(comfyui.ComfyUISim(node_state, root / "comfyui").router(), prefix="/comfyui")
    app.include_router(ollama.router(node_state), prefix="/ollama")
    sim_log("node", node_state).info("sim.apps_mounted", apps=[p.strip("/") for p in PREFIXES],
                                     workdir=str(root), reason="simulated GPU node applications")
    return root
