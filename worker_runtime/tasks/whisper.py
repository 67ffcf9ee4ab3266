"""Whisper speech-to-text: the node's Gradio app ``/transcribe_audio`` -> text."""

from __future__ import annotations

from pathlib import Path

from chalicelib.jobs.models import WhisperRequest

from .. import media
from ..downloads import Downloader
from . import gradio_call
from .base import NodeFault, NodeTask, TaskContext, TaskResult
from .settings import TaskSettings

API_NAME = "/transcribe_audio"
# Inputs the app takes that the API does not expose (the values used in practice).
FIXED_INPUTS = {
    "device": "cuda",
    "compute_type": "float16",
    "batch_size": 16,
    "vad_method": "pyannote",
    "word_timestamps": True,
    "segment_resolution": "sentence",
}


def whisper_inputs(request: WhisperRequest, audio: Path) -> dict[str, object]:
    return {
        "audio_file": gradio_call.handle_file(str(audio)),
        "model": request.model,
        "task": request.task,
        "language": request.language,
        **FIXED_INPUTS,
    }


class WhisperTask(NodeTask):
    label = "Whisper"
    node_step = "the Whisper call"
    settings: TaskSettings
    downloader: Downloader

    def prepare(self, ctx: TaskContext) -> Path:
        """The audio, downloaded and made plain MP3/WAV."""
        request: WhisperRequest = ctx.request
        raw = self.downloader.fetch(request.audio_url, ctx.path("_input.download"), field="audio_url",
                                    kind="audio", cancel=ctx.cancel).path
        audio, info = media.plain_audio(raw, ctx.path("_input"), f"audio_url {request.audio_url}")
        ctx.log.info("whisper.input_ready", seconds=round(info.duration, 3), format=info.container)
        return audio

    def render(self, ctx: TaskContext, audio: Path) -> TaskResult:
        self.require_node(ctx)
        result = gradio_call.call(ctx, "Whisper", ctx.node.whisper_url, API_NAME,
                                  whisper_inputs(ctx.request, audio), self.settings.gradio_poll_interval)
        text = _transcript(result)
        ctx.log.info("whisper.done", chars=len(text))
        return TaskResult(text=text)


def _transcript(result: object) -> str:
    """The app answers (transcript text, downloadable files)."""
    text = result[0] if isinstance(result, (list, tuple)) and result else result
    if not isinstance(text, str):
        raise NodeFault(f"Whisper app returned no transcript (got {str(result)[:200]!r})")
    return text.strip()
