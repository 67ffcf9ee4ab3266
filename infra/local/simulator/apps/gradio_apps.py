"""The node's CSM and Whisper apps, simulated as real Gradio Blocks with the real
endpoints' api names and parameters, so the worker's gradio_client is exercised
against a real Gradio server.

Both handlers are plain (non-generator, synchronous) functions, as on a real node, so
Gradio runs them in a worker thread that nothing can stop: a cancel removes a call that
is still queued, but a running one goes on to its end (recorded as event "finished").
Gradio then frees the app's queue slot, yet the node's one GPU is still busy: the next
call, of either app, waits for it (``gpu``, one per node), as it did on a real node (a
1 s job waited 28.7 s behind a cancelled render). This is the behaviour the worker must live with
(``gradio_client``'s ``Job.cancel`` says so too).

Gradio keeps the Blocks under construction in process-wide class attributes
(``gradio.context.Context.root_block`` / ``.block``), not per thread. Nodes launched
together build their apps in parallel threads of one process, so every construction
and mount here holds ``BUILD_LOCK``; without it components and events land in another
node's Blocks ("Cannot call click outside of a gradio.Blocks context", or an app
without its api_name)."""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from . import synth  # noqa: E402
from .common import fault, record, sim_log, slow_seconds  # noqa: E402

BUILD_LOCK = threading.RLock()  # reentrant: mount() holds it around the builders, which take it too
CSM_VOICES = ["random_voice", "conversational_a", "conversational_b", "upload_voice"]
WHISPER_MODELS = ["tiny", "base", "small", "medium", "large", "large-v2", "large-v3"]


@contextmanager
def _blocks(title: str) -> Iterator[gr.Blocks]:
    """``with gr.Blocks(...)`` while holding BUILD_LOCK (see the module docstring)."""
    with BUILD_LOCK, gr.Blocks(title=title, analytics_enabled=False) as demo:
        yield demo


def mount(app: Any, node_state: Any, media: Path) -> None:
    """Build CSM and Whisper and mount them at /csm and /whisper of the node's FastAPI app."""
    gpu = threading.Lock()  # the node's one GPU, shared by its apps
    with BUILD_LOCK:
        gr.mount_gradio_app(app, csm_blocks(node_state, media, gpu), path="/csm", allowed_paths=[str(media)])
        gr.mount_gradio_app(app, whisper_blocks(node_state, media, gpu), path="/whisper",
                            allowed_paths=[str(media)])


SLOW_STEPS = 20  # the gr.Progress steps a "slow" job reports


def _maybe_slow(node_state: Any, app: str, log: Any, progress: Any = None) -> None:
    """Raise for the "error" switch; sleep for "slow" (no cancel reaches it), reporting
    gr.Progress steps as the real apps do (gradio_client sees them in Job.status().progress_data)."""
    switch = fault(node_state, app)
    if switch == "error":
        log.warning("sim.failing", reason="fault switch 'error' is on")
        raise gr.Error(f"simulated {app} failure: CUDA error: out of memory (fault switch)")
    if switch == "slow":
        seconds = slow_seconds(node_state)
        log.info("sim.slow", seconds=seconds, reason="fault switch 'slow' is on")
        for step in range(SLOW_STEPS):
            if progress is not None:
                progress((step, SLOW_STEPS), desc="generating", unit="steps")
            time.sleep(seconds / SLOW_STEPS)


def _run(node_state: Any, app: str, log: Any, gpu: threading.Lock, work: Any, progress: Any = None) -> Any:
    """The call's work on the node's GPU, to its end whatever the client does meanwhile."""
    with gpu:
        started = time.time()
        record(node_state, app, "started")
        try:
            _maybe_slow(node_state, app, log, progress)
            return work()
        finally:
            record(node_state, app, "finished", seconds=round(time.time() - started, 3))


def csm_blocks(node_state: Any, outdir: Path, gpu: threading.Lock | None = None) -> gr.Blocks:
    log = sim_log("csm", node_state)
    node_gpu = gpu or threading.Lock()

    def generate_monologue_audio(monologue_json: str, speaker_voice: str, speaker_text: str,
                                       speaker_audio: str | None, temperature: float, topk: int,
                                       max_audio_length: int, pause_duration: int,
                                       progress: gr.Progress = gr.Progress()) -> str:  # noqa: B008 - Gradio's idiom
        reference = synth.audio_shape(Path(speaker_audio)) if speaker_audio else None
        record(node_state, "csm", "request", endpoint="/generate_monologue_audio",
               monologue_json=monologue_json, speaker_voice=speaker_voice, speaker_text=speaker_text,
               speaker_audio=reference, temperature=temperature, topk=topk,
               max_audio_length=max_audio_length, pause_duration=pause_duration)
        try:
            sentences = json.loads(monologue_json)
        except ValueError:
            raise gr.Error("monologue_json is not valid JSON") from None
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences) or not sentences:
            raise gr.Error("monologue_json must be a JSON list of sentences")
        if speaker_voice == "upload_voice" and (not speaker_audio or not speaker_text):
            raise gr.Error("upload_voice needs speaker_audio and speaker_text")

        def work() -> str:
            dest = outdir / f"csm-{os.urandom(6).hex()}.wav"
            seconds = synth.speech(sentences, speaker_voice, int(max_audio_length), int(pause_duration), dest)
            log.info("sim.csm.generated", seconds=round(seconds, 3), sentences=len(sentences),
                     voice=speaker_voice, reason="simulated speech: a synthetic voiced buzz, not CSM")
            return str(dest)

        return _run(node_state, "csm", log, node_gpu, work, progress)

    with _blocks("CSM (simulated)") as demo:
        gr.Markdown("Simulated CSM text-to-speech (c3-render local simulator)")
        inputs = [
            gr.Textbox(label="monologue_json"),
            gr.Dropdown(CSM_VOICES, value="random_voice", label="speaker_voice"),
            gr.Textbox(label="speaker_text"),
            gr.Audio(type="filepath", label="speaker_audio"),
            gr.Number(value=0.9, minimum=0.0, maximum=2.0, label="temperature"),
            gr.Number(value=50, precision=0, minimum=1, label="topk"),
            gr.Number(value=10000, precision=0, minimum=1, label="max_audio_length"),
            gr.Number(value=150, precision=0, minimum=0, label="pause_duration"),
        ]
        output = gr.Audio(type="filepath", label="audio")
        gr.Button("Generate").click(generate_monologue_audio, inputs, output,
                                    api_name="generate_monologue_audio")
    return demo


def whisper_blocks(node_state: Any, outdir: Path, gpu: threading.Lock | None = None) -> gr.Blocks:
    log = sim_log("whisper", node_state)
    node_gpu = gpu or threading.Lock()

    def transcribe_audio(audio_file: str | None, model: str, task: str, language: str, device: str,
                               compute_type: str, batch_size: int, vad_method: str, word_timestamps: bool,
                               segment_resolution: str,
                               progress: gr.Progress = gr.Progress()) -> tuple[str, list[str]]:  # noqa: B008
        shape = synth.audio_shape(Path(audio_file)) if audio_file else None
        record(node_state, "whisper", "request", endpoint="/transcribe_audio", audio_file=shape,
               model=model, task=task, language=language, device=device, compute_type=compute_type,
               batch_size=batch_size, vad_method=vad_method, word_timestamps=word_timestamps,
               segment_resolution=segment_resolution)
        if shape is None:
            raise gr.Error("audio_file is required")

        def work() -> tuple[str, list[str]]:
            text = (f"[simulated whisper {model}] {task} of {shape['seconds']:.2f} seconds of audio "
                    f"(language: {language or 'detected: en'}).")
            dest = outdir / f"whisper-{os.urandom(6).hex()}.txt"
            dest.write_text(text + "\n")
            log.info("sim.whisper.transcribed", seconds=shape["seconds"], model=model,
                     reason="simulated transcript: deterministic text, not Whisper")
            return text, [str(dest)]

        return _run(node_state, "whisper", log, node_gpu, work, progress)

    with _blocks("Whisper (simulated)") as demo:
        gr.Markdown("Simulated WhisperX speech-to-text (c3-render local simulator)")
        inputs = [
            gr.Audio(type="filepath", label="audio_file"),
            gr.Dropdown(WHISPER_MODELS, value="medium", label="model"),
            gr.Dropdown(["transcribe", "translate"], value="transcribe", label="task"),
            gr.Textbox(value="", label="language"),
            gr.Dropdown(["cuda", "cpu"], value="cuda", label="device"),
            gr.Dropdown(["float16", "float32", "int8"], value="float16", label="compute_type"),
            gr.Number(value=16, precision=0, minimum=1, label="batch_size"),
            gr.Dropdown(["pyannote", "silero"], value="pyannote", label="vad_method"),
            gr.Checkbox(value=True, label="word_timestamps"),
            gr.Dropdown(["sentence", "chunk"], value="sentence", label="segment_resolution"),
        ]
        outputs = [gr.Textbox(label="transcript"), gr.File(file_count="multiple", label="files")]
        gr.Button("Transcribe").click(transcribe_audio, inputs, outputs, api_name="transcribe_audio")
    return demo
