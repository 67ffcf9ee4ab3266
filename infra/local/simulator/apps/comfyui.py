"""A simulated ComfyUI REST API with the SONIC portrait nodes.

Graphs are validated like ComfyUI does (comfyui_graph.py) and run one at a time on
a background thread; the "SONIC" render is a real MP4 (H.264 + AAC) made from the
uploaded image and audio (synth.render_portrait). /interrupt stops the running
prompt between frames; POST /queue {"delete": [...]} removes pending ones.

Fault switches (node_state.faults["comfyui"]): "down" (/system_stats 503),
"node_error" (/prompt rejects the graph), "exec_error" (the sampler fails),
"slow" (the run waits up to faults["slow_seconds"] unless interrupted)."""

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
from PIL import Image, ImageOps

from . import synth
from .comfyui_graph import NODE_TYPES, validate
from .common import fault, record, sim_log, slow_seconds

APP = "comfyui"


class Interrupted(Exception):
    pass


class ExecutionFailed(Exception):
    def __init__(self, node_id: str, node_type: str, exc_type: str, message: str):
        super().__init__(message)
        self.node_id, self.node_type, self.exc_type = node_id, node_type, exc_type


class ComfyUISim:
    def __init__(self, node_state: Any, root: Path):
        self.state = node_state
        self.inputs = root / "input"
        self.outputs = root / "output"
        self.inputs.mkdir(parents=True, exist_ok=True)
        self.outputs.mkdir(parents=True, exist_ok=True)
        self.log = sim_log(APP, node_state)
        self.cv = threading.Condition()
        self.pending: deque[tuple[int, str, dict[str, Any], str]] = deque()
        self.running: tuple[int, str, dict[str, Any], str] | None = None
        self.history: dict[str, dict[str, Any]] = {}
        self.numbers = itertools.count()
        self.files = itertools.count(1)
        self.interrupt = threading.Event()
        self.thread: threading.Thread | None = None

    # -- queue and execution ----------------------------------------------------
    def enqueue(self, graph: dict[str, Any], client_id: str) -> tuple[str, int]:
        prompt_id, number = str(uuid.uuid4()), next(self.numbers)
        with self.cv:
            self.pending.append((number, prompt_id, graph, client_id))
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
            number, prompt_id, graph, client_id = self.running
            entry = self._execute(prompt_id, graph)
            entry["prompt"] = [number, prompt_id, graph, {"client_id": client_id},
                               [n for n, v in graph.items() if NODE_TYPES[v["class_type"]].get("output_node")]]
            with self.cv:
                self.history[prompt_id] = entry
                self.running = None

    def _execute(self, prompt_id: str, graph: dict[str, Any]) -> dict[str, Any]:
        started = [["execution_start", {"prompt_id": prompt_id, "timestamp": int(time.time() * 1000)}]]
        try:
            switch = fault(self.state, APP)
            if switch == "slow":
                self.log.info("sim.slow", prompt_id=prompt_id, reason="fault switch 'slow' is on")
                if self.interrupt.wait(slow_seconds(self.state)):
                    raise Interrupted()
            if switch == "exec_error":
                raise ExecutionFailed("7", "SONICSampler", "torch.OutOfMemoryError",
                                      "CUDA out of memory. Tried to allocate 2.00 GiB (simulated fault)")
            try:
                outputs = Runner(self, graph).outputs()
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
            graph, client_id = body.get("prompt"), body.get("client_id", "")
            record(self.state, APP, "prompt", prompt=graph, client_id=client_id)
            error, node_errors = validate(graph, self.inputs)
            if error is None and fault(self.state, APP) == "node_error":
                error = {"type": "prompt_outputs_failed_validation",
                         "message": "Prompt outputs failed validation", "details": "", "extra_info": {}}
                node_errors = {"5": {"class_type": "SONICTLoader", "dependent_outputs": ["8"], "errors": [{
                    "type": "value_not_in_list", "message": "Value not in list",
                    "details": "sonic_unet: 'unet.pth' not in ['none'] (simulated fault: model missing)",
                    "extra_info": {"input_name": "sonic_unet"}}]}}
            if error is not None:
                self.log.warning("sim.prompt_rejected", error=error["message"], nodes=list(node_errors))
                return JSONResponse({"error": error, "node_errors": node_errors}, status_code=400)
            prompt_id, number = self.enqueue(graph, client_id)
            self.log.info("sim.prompt_queued", prompt_id=prompt_id, reason="simulated SONIC render")
            return {"prompt_id": prompt_id, "number": number, "node_errors": {}}

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
            return {"queue_running": running, "queue_pending": pending}

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
            base = {"output": self.outputs, "input": self.inputs}.get(type)
            path = (base / subfolder / filename) if base else None
            if path is None or ".." in Path(subfolder).parts or Path(filename).name != filename or not path.is_file():
                raise HTTPException(404, "file not found")
            return FileResponse(path)

        return r


class Runner:
    """Evaluates the graph from its output nodes, node by node (memoized)."""

    def __init__(self, sim: ComfyUISim, graph: dict[str, Any]):
        self.sim, self.graph, self.done = sim, graph, {}

    def outputs(self) -> dict[str, Any]:
        result = {}
        for node_id, node in self.graph.items():
            if NODE_TYPES[node["class_type"]].get("output_node"):
                result[node_id] = self.value(node_id)[0]
        return result

    def value(self, node_id: str) -> tuple[Any, ...]:
        if node_id not in self.done:
            node = self.graph[node_id]
            args = {k: (self.value(v[0])[v[1]] if isinstance(v, list) else v)
                    for k, v in (node.get("inputs") or {}).items()}
            if self.sim.interrupt.is_set():
                raise Interrupted()
            handler = getattr(self, "_" + node["class_type"].replace("+", "_plus"))
            try:
                self.done[node_id] = handler(node_id, **args)
            except (Interrupted, ExecutionFailed):
                raise
            except Exception as exc:  # noqa: BLE001 - reported like ComfyUI: the node and the exception
                raise ExecutionFailed(node_id, node["class_type"], type(exc).__name__, str(exc)) from exc
        return self.done[node_id]

    def _LoadImage(self, node_id: str, image: str) -> tuple[Any, ...]:
        with Image.open(self.sim.inputs / image) as img:
            return ImageOps.exif_transpose(img).convert("RGB"), None

    def _LoadAudio(self, node_id: str, audio: str) -> tuple[Any, ...]:
        return (self.sim.inputs / audio,)

    def _ImageResize_plus(self, node_id: str, image: Image.Image, width: int, height: int,
                          method: str, condition: str, **_: Any) -> tuple[Any, ...]:
        w, h = image.size
        if method == "keep proportion":
            ratio = min(width / w if width else 1e9, height / h if height else 1e9)
            tw, th = round(w * ratio), round(h * ratio)
        else:
            tw, th = width or w, height or h
        bigger, smaller = tw < w or th < h, tw > w or th > h
        if condition == "always" or (condition == "downscale if bigger" and bigger) or \
                (condition == "upscale if smaller" and smaller):
            image = image.resize((tw, th), Image.Resampling.LANCZOS)
        return image, image.width, image.height

    def _ImageOnlyCheckpointLoader(self, node_id: str, ckpt_name: str) -> tuple[Any, ...]:
        return f"model:{ckpt_name}", f"clip_vision:{ckpt_name}", f"vae:{ckpt_name}"

    def _SONICTLoader(self, node_id: str, dtype: str, **_: Any) -> tuple[Any, ...]:
        return "sonic", dtype

    def _SONIC_PreData(self, node_id: str, audio: Path, image: Image.Image, min_resolution: int,
                       duration: float, **_: Any) -> tuple[Any, ...]:
        return ({"image": image, "audio": audio, "min_resolution": min_resolution, "duration": duration},)

    def _SONICSampler(self, node_id: str, data_dict: dict[str, Any], fps: float, **_: Any) -> tuple[Any, ...]:
        return {**data_dict, "fps": fps}, fps

    def _VHS_VideoCombine(self, node_id: str, images: dict[str, Any], frame_rate: float,
                          filename_prefix: str, audio: Path | None = None, **_: Any) -> tuple[Any, ...]:
        if audio is None:
            raise ExecutionFailed(node_id, "VHS_VideoCombine", "ValueError", "the simulator renders with audio only")
        image: Image.Image = images["image"]
        scale = images["min_resolution"] / min(image.size)  # SONIC renders at min_resolution
        size = (round(image.width * scale), round(image.height * scale))
        prefix = Path(filename_prefix)
        folder = self.sim.outputs / prefix.parent
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / f"{prefix.name}_{next(self.sim.files):05}.mp4"
        try:
            seconds = synth.render_portrait(image, audio, size, float(frame_rate), float(images["duration"]),
                                            dest, self.sim.interrupt.is_set)
        except InterruptedError:
            dest.unlink(missing_ok=True)
            raise Interrupted() from None
        self.sim.log.info("sim.rendered", file=dest.name, seconds=round(seconds, 3), size=f"{size[0]}x{size[1]}",
                          reason="simulated SONIC: still image + loudness bar, not a model")
        subfolder = "" if str(prefix.parent) == "." else str(prefix.parent)
        return ({"gifs": [{"filename": dest.name, "subfolder": subfolder, "type": "output",
                           "format": "video/h264-mp4", "frame_rate": frame_rate}]},)


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
