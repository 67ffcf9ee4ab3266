"""Portrait video: image + audio -> the SONIC workflow on the node's ComfyUI -> MP4."""

from __future__ import annotations

import math
import random
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from chalicelib.jobs.models import PortraitRequest

from .. import media
from ..cancel import TaskCancelled
from ..downloads import Downloader
from .base import NodeTask, TaskContext, TaskResult
from .comfyui import CONFIRM_TIMEOUT, STOP_TIMEOUT, ComfyUI, find_video
from .settings import TaskSettings
from .sonic_workflow import VIDEO_NODE, sonic_workflow

MAX_SEED = 2**31 - 1  # SONICSampler's seed range


@dataclass(frozen=True)
class PortraitInputs:
    image: Path  # upright RGB JPEG, at most MAX_IMAGE_SIDE
    audio: Path  # plain MP3/WAV
    width: int  # the box the workflow fits the image into
    height: int
    duration: int  # clip seconds


class PortraitTask(NodeTask):
    label = "Portrait"
    node_step = "the ComfyUI workflow"
    settings: TaskSettings
    downloader: Downloader

    def prepare(self, ctx: TaskContext) -> PortraitInputs:
        s = self.settings
        request: PortraitRequest = ctx.request
        image_path = ctx.path("_portrait.jpg")
        image = media.prepare_image(self._fetch(ctx, request.image_url, "image_url", "image", "_portrait.download"),
                                    image_path, s.max_image_side, f"image_url {request.image_url}",
                                    max_pixels=s.max_image_pixels)
        audio_raw = self._fetch(ctx, request.audio_url, "audio_url", "audio", "_audio.download")
        audio_path, audio = media.plain_audio(audio_raw, ctx.path("_audio"), f"audio_url {request.audio_url}")
        duration = media.clip_seconds(audio.duration, s.portrait_extra_seconds)
        width, height = media.fit_within(image.width, image.height, s.portrait_max_width, s.portrait_max_height)
        ctx.log.info("portrait.inputs_ready", image=f"{image.width}x{image.height}",
                     original=f"{image.original_width}x{image.original_height}",
                     fit=f"{width}x{height}", audio_seconds=round(audio.duration, 3),
                     audio_format=audio.container, duration=duration)
        return PortraitInputs(image_path, audio_path, width, height, duration)

    def render(self, ctx: TaskContext, inputs: PortraitInputs) -> TaskResult:
        self.require_node(ctx)
        s = self.settings
        image_path, audio_path = inputs.image, inputs.audio
        width, height, duration = inputs.width, inputs.height, inputs.duration
        comfy = ComfyUI(ctx.node.comfyui_url, ctx.node.headers, s.node_request_timeout, ctx.log,
                       node=ctx.node.name)
        try:
            comfy.wait_ready(ctx.cancel, s.comfyui_ready_timeout, s.comfyui_poll_interval)
            image_name = comfy.upload(image_path, image_path.name)
            audio_name = comfy.upload(audio_path, audio_path.name)
            ctx.cancel.raise_if_cancelled()
            seed = s.portrait_seed if s.portrait_seed is not None else random.randint(0, MAX_SEED)
            workflow = sonic_workflow(image_name, audio_name, width, height, duration, seed,
                                      prefix=f"c3render/{ctx.job.id}")
            prompt_id = comfy.queue(workflow, client_id=uuid.uuid4().hex)
            ctx.log.info("portrait.queued", prompt_id=prompt_id, seed=seed)
            stopped = threading.Event()

            def stop() -> None:
                try:
                    if not comfy.stop(prompt_id):  # the node may still be rendering it: for how long, unknown
                        ctx.extras["node_busy_for"] = math.inf
                finally:
                    stopped.set()

            ctx.cancel.on_cancel(stop)
            try:
                outputs = comfy.wait(prompt_id, ctx.cancel, s.comfyui_poll_interval, ctx.report)
            except TaskCancelled:
                stopped.wait(STOP_TIMEOUT * 2 + CONFIRM_TIMEOUT)  # the interrupt confirmed (or not) first
                raise
            video = comfy.download(find_video(outputs, prefer=VIDEO_NODE), ctx.path(".mp4"))
        finally:
            comfy.close()
        media.check_video(video, "ComfyUI's output")
        ctx.log.info("portrait.done", prompt_id=prompt_id, bytes=video.stat().st_size)
        return TaskResult(path=video, ext="mp4")

    def _fetch(self, ctx: TaskContext, url: str, field: str, kind: str, suffix: str) -> Path:
        return self.downloader.fetch(url, ctx.path(suffix), field=field, kind=kind, cancel=ctx.cancel).path
