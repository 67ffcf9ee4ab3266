"""A simulated ComfyUI REST API with the SONIC portrait nodes.

Graphs are validated like ComfyUI's /prompt (comfyui_graph.py) and run one at a time
on a background thread (comfyui_run.py); the "SONIC" render is a real MP4 (H.264 +
AAC) made from the uploaded image and audio (synth.render_portrait). /interrupt stops
the running prompt between frames; POST /queue {"delete": [...]} removes pending ones.

Fault switches (node_state.faults["comfyui"]): "down" (/system_stats 503),
"node_error" (/prompt rejects the graph), "exec_error" (the sampler fails),
"slow" (the run takes faults["slow_seconds"] unless interrupted, stepping its sampler
through SLOW_STEPS steps; like ComfyUI, an /interrupt takes effect at the next step's
start, so the prompt stays in /queue's queue_running until then).

Progress: ComfyUI sends ``{"type": "progress", "data": {"value", "max", "prompt_id",
"node"}}`` on its websocket as a sampler steps. The simulator keeps the latest of those
``data`` and also answers it as ``progress`` in ``GET /queue`` while the prompt runs (a
REST stand-in for the websocket; a client that finds no ``progress`` there, as with a
real ComfyUI, simply has none)."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from PIL import Image

from . import synth
from .comfyui_graph import Validation, error, validate
from .comfyui_run import ExecutionFailed, Interrupted, Runner
from .common import fault, record, sim_log, slow_seconds

APP = "comfyui"
SLOW_STEPS = 25  # SONICSampler's inference_steps
Queued = tuple[int, str, dict[str, Any], str, Validation]  # number, prompt id, graph, client id, validation


class ComfyUISim:
    def __init__(self, node_state: Any, root: Path):
        self.state = node_state
        self.inputs = root / "input"
        self.outputs = root / "output"
        self.temp = root / "temp"
        for folder in (self.inputs, self.outputs, self.temp):
            folder.mkdir(parents=True, exist_ok=True)
        self.log = sim_log(APP, node_state)
        self.cv = threading.Condition()
        self.pending: deque[Queued] = deque()
        self.running: Queued | None = None
        self.history: dict[str, dict[str, Any]] = {}
        self.numbers = itertools.count()
        self.files = itertools.count(1)
        self.interrupt = threading.Event()
        self.thread: threading.Thread | None = None
        self.progress: dict[str, Any] | None = None  # the latest websocket "progress" data

    def next_file(self) -> int:
        return next(self.files)

    def interrupted(self) -> bool:
        return self.interrupt.is_set()

    # -- queue and execution ----------------------------------------------------
    def enqueue(self, graph: dict[str, Any], client_id: str, checked: Validation) -> tuple[str, int]:
        prompt_id, number = str(uuid.uuid4()), next(self.numbers)
        with self.cv:
            self.pending.append((number, prompt_id, graph, client_id, checked))
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, daemon=True, name="sim-comfyui")
                self.thread.start()
            self.cv.notify()
        return prompt_id, number

    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.pending:
                    self.cv.wait()
                self.running = self.pending.popleft()
                self.interrupt.clear()
            number, prompt_id, graph, client_id, checked = self.running
            entry = self._execute(prompt_id, graph, checked)
            entry["prompt"] = [number, prompt_id, graph, {"client_id": client_id}, checked.outputs]
            with self.cv:
                self.history[prompt_id] = entry
                self.running = None
                self.progress = None

    def _execute(self, prompt_id: str, graph: dict[str, Any], checked: Validation) -> dict[str, Any]:
        started = [["execution_start", {"prompt_id": prompt_id, "timestamp": int(time.time() * 1000)}]]
        try:
            switch = fault(self.state, APP)
            if switch == "slow":
                self.log.info("sim.slow", prompt_id=prompt_id, reason="fault switch 'slow' is on")
                for step in range(SLOW_STEPS):
                    with self.cv:
                        self.progress = {"value": step, "max": SLOW_STEPS, "prompt_id": prompt_id, "node": "7"}
                    # A step runs to its end: ComfyUI looks at /interrupt between steps only.
                    time.sleep(slow_seconds(self.state) / SLOW_STEPS)
                    if self.interrupt.is_set():
                        raise Interrupted()
            if switch == "exec_error":
                raise ExecutionFailed("7", "SONICSampler", "torch.OutOfMemoryError",
                                      "CUDA out of memory. Tried to allocate 2.00 GiB (simulated fault)")
            try:
                outputs = Runner(self, graph, checked.values).outputs(checked.outputs)
            except (Interrupted, ExecutionFailed):
                raise
            except Exception as exc:  # noqa: BLE001 - any node crash is an execution error
                raise ExecutionFailed("?", "unknown", type(exc).__name__, str(exc)) from exc
        except Interrupted:
            record(self.state, APP, "interrupted", prompt_id=prompt_id)
            self.log.info("sim.interrupted", prompt_id=prompt_id, reason="POST /interrupt during the run")
            return _status(started + [["execution_interrupted", {
                "prompt_id": prompt_id, "node_id": "7", "node_type": "SONICSampler", "executed": []}]], "error")
        except ExecutionFailed as exc:
            record(self.state, APP, "failed", prompt_id=prompt_id, node_id=exc.node_id, error=str(exc))
            self.log.warning("sim.execution_failed", prompt_id=prompt_id, node=exc.node_id, error=str(exc))
            return _status(started + [["execution_error", {
                "prompt_id": prompt_id, "node_id": exc.node_id, "node_type": exc.node_type, "executed": [],
                "exception_type": exc.exc_type, "exception_message": str(exc), "traceback": [],
                "current_inputs": {}, "current_outputs": {}}]], "error")
        record(self.state, APP, "done", prompt_id=prompt_id, outputs=outputs)
        return {**_status(started + [["execution_success", {"prompt_id": prompt_id}]], "success"),
                "outputs": outputs}

    def stop(self, prompt_id: str | None) -> bool:
        with self.cv:
            running = self.running[1] if self.running else None
            hit = running is not None and (prompt_id is None or prompt_id == running)
            if hit:
                self.interrupt.set()
        record(self.state, APP, "interrupt", prompt_id=prompt_id, running=running, stopped=hit)
        return hit

    def delete(self, ids: list[str]) -> list[str]:
        with self.cv:
            removed = [p[1] for p in self.pending if p[1] in ids]
            self.pending = deque(p for p in self.pending if p[1] not in ids)
        record(self.state, APP, "queue_delete", ids=ids, removed=removed)
        return removed

    # -- HTTP --------------------------------------------------------------------
    def router(self) -> APIRouter:
        r = APIRouter()

        @r.get("/system_stats")
        def system_stats() -> Any:
            if fault(self.state, APP) == "down":
                return JSONResponse({"error": "simulated: ComfyUI is starting"}, status_code=503)
            return {"system": {"os": "posix", "comfyui_version": "simulated", "python_version": "3",
                               "embedded_python": False},
                    "devices": [{"name": "cuda:0 simulated GPU", "type": "cuda", "index": 0,
                                 "vram_total": 25769803776, "vram_free": 25769803776}]}

        @r.post("/upload/image")
        async def upload(image: UploadFile = File(...), type: str = Form("input"),
                         subfolder: str = Form(""), overwrite: str = Form("false")) -> Any:
            name = Path(image.filename or "").name
            if not name or type != "input" or ".." in Path(subfolder).parts:
                raise HTTPException(400, "bad upload")
            folder = self.inputs / subfolder
            folder.mkdir(parents=True, exist_ok=True)
            dest = folder / name
            if dest.exists() and overwrite.lower() != "true":
                dest = folder / f"{dest.stem} ({next(self.files)}){dest.suffix}"
            dest.write_bytes(await image.read())
            record(self.state, APP, "upload", name=dest.name, bytes=dest.stat().st_size, **_describe(dest))
            return {"name": dest.name, "subfolder": subfolder, "type": "input"}

        @r.post("/prompt")
        async def prompt(request: Request) -> Any:
            body = await request.json()
            if not isinstance(body, dict) or "prompt" not in body:
                return JSONResponse({"error": error("no_prompt", "No prompt provided", "No prompt provided"),
                                     "node_errors": {}}, status_code=400)
            graph, client_id = body["prompt"], body.get("client_id", "")
            record(self.state, APP, "prompt", prompt=graph, client_id=client_id)
            checked = validate(graph, self.inputs)
            if checked.error is None and fault(self.state, APP) == "node_error":
                checked = Validation(
                    error("prompt_outputs_failed_validation", "Prompt outputs failed validation"),
                    {"5": {"class_type": "SONICTLoader", "dependent_outputs": ["8"], "errors": [error(
                        "value_not_in_list", "Value not in list",
                        "sonic_unet: 'unet.pth' not in ['none'] (simulated fault: model missing)",
                        input_name="sonic_unet")]}})
            if checked.error is not None:
                self.log.warning("sim.prompt_rejected", error=checked.error["message"],
                                 nodes=list(checked.node_errors))
                return JSONResponse({"error": checked.error, "node_errors": checked.node_errors}, status_code=400)
            prompt_id, number = self.enqueue(graph, client_id, checked)
            self.log.info("sim.prompt_queued", prompt_id=prompt_id, outputs=checked.outputs,
                          ignored_outputs=list(checked.node_errors), reason="simulated ComfyUI run")
            return {"prompt_id": prompt_id, "number": number, "node_errors": checked.node_errors}

        @r.get("/history/{prompt_id}")
        def history(prompt_id: str) -> Any:
            with self.cv:
                entry = self.history.get(prompt_id)
            return {prompt_id: entry} if entry else {}

        @r.get("/history")
        def all_history() -> Any:
            with self.cv:
                return dict(self.history)

        @r.get("/queue")
        def queue() -> Any:
            with self.cv:
                running = [list(self.running[:3]) + [{}, []]] if self.running else []
                pending = [list(p[:3]) + [{}, []] for p in self.pending]
                progress = dict(self.progress) if self.progress and running else None
            body: dict[str, Any] = {"queue_running": running, "queue_pending": pending}
            if progress is not None:
                body["progress"] = progress
            return body

        @r.post("/queue")
        async def edit_queue(request: Request) -> Any:
            body = await request.json()
            if body.get("clear"):
                with self.cv:
                    ids = [p[1] for p in self.pending]
                self.delete(ids)
            if body.get("delete"):
                self.delete([str(i) for i in body["delete"]])
            return {}

        @r.post("/interrupt")
        async def interrupt(request: Request) -> Any:
            raw = await request.body()
            prompt_id = None
            if raw:
                try:
                    prompt_id = (await request.json()).get("prompt_id")
                except ValueError:
                    prompt_id = None
            self.stop(prompt_id)
            return {}

        @r.get("/view")
        def view(filename: str, subfolder: str = "", type: str = "output") -> Any:
            base = {"output": self.outputs, "input": self.inputs, "temp": self.temp}.get(type)
            path = (base / subfolder / filename) if base else None
            if path is None or ".." in Path(subfolder).parts or Path(filename).name != filename or not path.is_file():
                raise HTTPException(404, "file not found")
            return FileResponse(path)

        return r


def _status(messages: list[Any], status_str: str) -> dict[str, Any]:
    return {"outputs": {}, "meta": {},
            "status": {"status_str": status_str, "completed": status_str == "success", "messages": messages}}


def _describe(path: Path) -> dict[str, Any]:
    """What an upload is, for the request record: image size or audio shape."""
    try:
        with Image.open(path) as img:
            return {"image_size": list(img.size), "image_format": img.format}
    except Exception:  # noqa: BLE001 - not an image: try audio
        pass
    try:
        return {"audio": synth.audio_shape(path)}
    except Exception:  # noqa: BLE001
        return {}
