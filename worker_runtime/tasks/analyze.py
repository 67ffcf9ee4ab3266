"""Image analysis: the node's vision model through Ollama's generate API -> text."""

from __future__ import annotations

import base64
from pathlib import Path

from chalicelib.jobs.models import AnalyzeRequest

from .. import media
from ..downloads import Downloader
from . import ollama
from .base import NodeFault, NodeTask, TaskContext, TaskResult
from .settings import TaskSettings


class AnalyzeTask(NodeTask):
    label = "Image analysis"
    node_step = "the Ollama generate call"
    settings: TaskSettings
    downloader: Downloader

    def prepare(self, ctx: TaskContext) -> Path:
        """The image as a JPEG the model takes."""
        s = self.settings
        request: AnalyzeRequest = ctx.request
        raw = self.downloader.fetch(request.image_url, ctx.path("_input.download"), field="image_url",
                                    kind="image", cancel=ctx.cancel).path
        # The model takes JPEG/PNG; anything Pillow reads is re-encoded as JPEG at a size it handles.
        image_path = ctx.path("_input.jpg")
        image = media.prepare_image(raw, image_path, s.analyze_max_side, f"image_url {request.image_url}",
                                    max_pixels=s.max_image_pixels)
        ctx.log.info("analyze.image_ready", size=f"{image.width}x{image.height}",
                     original=f"{image.original_width}x{image.original_height}", model=s.analyze_model)
        return image_path

    def render(self, ctx: TaskContext, image_path: Path) -> TaskResult:
        self.require_node(ctx)
        s = self.settings
        body = {
            "model": s.analyze_model,
            "prompt": s.analyze_prompt,
            "images": [base64.b64encode(image_path.read_bytes()).decode("ascii")],
        }
        text = ollama.generate(ctx.node.ollama_url, ctx.node.headers, body, ctx.cancel,
                               s.node_request_timeout, node=ctx.node.name)
        if not text:
            raise NodeFault(f"The vision model {s.analyze_model} returned an empty description")
        ctx.log.info("analyze.done", chars=len(text))
        return TaskResult(text=text)
