"""A simulated Ollama generate API with a "vision model" that describes an image from
its pixels (size, orientation, dominant colours, brightness): deterministic text.

Streams NDJSON like Ollama (``"stream"`` defaults to true) or answers one JSON object.
A client that disconnects mid-stream stops the generation (recorded as "cancelled").
Fault switches (node_state.faults["ollama"]): "error" (HTTP 500), "slow" (the model
"loads" for faults["slow_seconds"] before answering)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import time
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image, UnidentifiedImageError

from . import synth
from .common import fault, record, sim_log, slow_seconds

APP = "ollama"
MODELS = ("llama3.2-vision:11b", "llama3.2-vision:90b", "llava:7b", "llava:13b")
WORDS_PER_CHUNK = 3
CHUNK_DELAY = 0.01


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def router(node_state: Any) -> APIRouter:
    r = APIRouter()
    log = sim_log(APP, node_state)

    @r.get("/api/tags")
    def tags() -> Any:
        return {"models": [{"name": m, "model": m} for m in MODELS]}

    @r.post("/api/generate")
    async def generate(request: Request) -> Any:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid JSON body")
        images = body.get("images") or []
        decoded: list[Image.Image] = []
        problems = []
        for data in images:
            try:
                img = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
                img.load()
                decoded.append(img)
            except (binascii.Error, ValueError):
                problems.append("illegal base64 data")
            except (UnidentifiedImageError, OSError):
                problems.append("image: unknown format")
        record(node_state, APP, "request", endpoint="/api/generate", model=body.get("model"),
               prompt=body.get("prompt"), stream=body.get("stream", True),
               images=[{"size": list(i.size), "format": i.format} for i in decoded])
        model = body.get("model")
        if model not in MODELS:
            return _error(404, f"model '{model}' not found, try pulling it first")
        if problems:
            return _error(400, problems[0])
        if fault(node_state, APP) == "error":
            log.warning("sim.failing", reason="fault switch 'error' is on")
            return _error(500, "simulated: llama runner process has terminated: CUDA error (fault switch)")
        if decoded:
            text = synth.describe(decoded[0], model)
        else:
            text = f"[simulated {model}] No image was given; the prompt was {len(body.get('prompt') or '')} characters."
        delay = slow_seconds(node_state) if fault(node_state, APP) == "slow" else 0.0
        log.info("sim.generate", model=model, images=len(decoded), stream=body.get("stream", True),
                 reason="simulated vision model: describes pixels, not content")
        if body.get("stream", True) is False:
            await asyncio.sleep(delay)
            return _final(model, text)
        return StreamingResponse(_stream(node_state, log, model, text, delay), media_type="application/x-ndjson")

    return r


def _chunk(model: str, response: str, done: bool) -> dict[str, Any]:
    return {"model": model, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "response": response, "done": done}


def _final(model: str, text: str) -> dict[str, Any]:
    return {**_chunk(model, text, True), "done_reason": "stop", "total_duration": 0, "eval_count": len(text.split())}


async def _stream(node_state: Any, log: Any, model: str, text: str, delay: float) -> AsyncIterator[bytes]:
    try:
        await asyncio.sleep(delay)
        words = text.split(" ")
        for i in range(0, len(words), WORDS_PER_CHUNK):
            piece = " ".join(words[i:i + WORDS_PER_CHUNK]) + (" " if i + WORDS_PER_CHUNK < len(words) else "")
            yield (json.dumps(_chunk(model, piece, False)) + "\n").encode()
            await asyncio.sleep(CHUNK_DELAY)
        yield (json.dumps({**_final(model, ""), "response": ""}) + "\n").encode()
    except asyncio.CancelledError:
        record(node_state, APP, "cancelled")
        log.info("sim.cancelled", reason="the client disconnected; generation stopped")
        raise
