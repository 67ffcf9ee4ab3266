"""CSM text-to-speech: the node's Gradio app ``/generate_monologue_audio`` -> MP3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from chalicelib.jobs.models import CsmRequest

from .. import media
from ..downloads import Downloader
from . import gradio_call
from .base import NodeFault, NodeTask, TaskContext, TaskResult
from .settings import TaskSettings

API_NAME = "/generate_monologue_audio"
# The API's voice names -> the CSM app's speaker_voice choices.
VOICES = {
    "random": "random_voice",
    "conversational_a": "conversational_a",
    "conversational_b": "conversational_b",
    "clone": "upload_voice",
}


def csm_inputs(request: CsmRequest, reference: Path | None) -> dict[str, object]:
    """The named inputs of the app's endpoint, from the job's request."""
    return {
        "monologue_json": json.dumps(request.sentences()),
        "speaker_voice": VOICES[request.voice],
        "speaker_text": request.reference_text or "",
        "speaker_audio": gradio_call.handle_file(str(reference)) if reference is not None else None,
        "temperature": request.temperature,
        "topk": request.topk,
        "max_audio_length": request.max_audio_length,
        "pause_duration": request.pause_duration,
    }


class CsmTask(NodeTask):
    label = "CSM"
    node_step = "the CSM call"
    settings: TaskSettings
    downloader: Downloader

    def needs_prepare(self, request: CsmRequest) -> bool:
        return request.voice == "clone"

    def prepare(self, ctx: TaskContext) -> Path | None:
        """The voice to clone, if any, as a mono WAV."""
        request: CsmRequest = ctx.request
        return self.reference_audio(ctx, request) if request.voice == "clone" else None

    def render(self, ctx: TaskContext, reference: Path | None) -> TaskResult:
        self.require_node(ctx)
        result = gradio_call.call(ctx, "CSM", ctx.node.csm_url, API_NAME,
                                  csm_inputs(ctx.request, reference), self.settings.gradio_poll_interval)
        produced = _result_path(result)
        out = ctx.path(".mp3")
        info = media.probe_audio(produced, "the CSM app's audio")
        if info.is_plain and info.container == "mp3":
            shutil.copyfile(produced, out)
        else:
            media.convert_audio(produced, out, "the CSM app's audio")
        ctx.log.info("csm.done", seconds=round(info.duration, 3), from_format=info.container)
        return TaskResult(path=out, ext="mp3")

    def reference_audio(self, ctx: TaskContext, request: CsmRequest) -> Path:
        """Download the voice to clone and make it a mono WAV, as the app expects."""
        url = request.reference_audio_url or ""
        source = f"reference_audio_url {url}"
        raw = self.downloader.fetch(url, ctx.path("_reference.download"), field="reference_audio_url",
                                    kind="audio", cancel=ctx.cancel).path
        mono = ctx.path("_reference.wav")
        seconds = media.convert_audio(raw, mono, source, mono=True)
        ctx.log.info("csm.reference_ready", seconds=round(seconds, 3))
        return mono


def _result_path(result: object) -> Path:
    """The app returns a file path (possibly inside a tuple or a FileData dict)."""
    if isinstance(result, (list, tuple)) and result:
        result = result[0]
    if isinstance(result, dict):
        result = result.get("path") or result.get("name")
    if not isinstance(result, str) or not Path(result).is_file():
        raise NodeFault(f"CSM app returned no audio file (got {str(result)[:200]!r})")
    return Path(result)
