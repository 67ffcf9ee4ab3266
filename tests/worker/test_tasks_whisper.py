"""The Whisper task against the simulated node's real Gradio app."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.harness import wait_until
from tests.support.node_apps import (  # noqa: F401 - fixtures
    SimNode,
    inputs,
    make_context,
    run_in_thread,
    sim,
    supervise,
    task_for,
)
from tests.support.samples import SampleServer
from worker_runtime.cancel import TaskCancelled
from worker_runtime.tasks.base import TaskError
from worker_runtime.tasks.whisper import FIXED_INPUTS


def test_transcribes_with_every_parameter_passed_through(sim: SimNode, inputs: SampleServer,
                                                         tmp_path: Path) -> None:
    params = {"audio_url": inputs.url("speech.wav"), "model": "large-v3", "task": "translate", "language": "de"}
    ctx = make_context("whisper", params, tmp_path, sim.node)
    result = task_for("whisper").run(ctx)

    assert result.text == "[simulated whisper large-v3] translate of 2.20 seconds of audio (language: de)."
    [call] = sim.state.events("whisper", "request")
    assert (call["model"], call["task"], call["language"]) == ("large-v3", "translate", "de")
    assert {k: call[k] for k in FIXED_INPUTS} == {
        "device": "cuda", "compute_type": "float16", "batch_size": 16, "vad_method": "pyannote",
        "word_timestamps": True, "segment_resolution": "sentence"}
    # Plain WAV is sent as it came: stereo, same length; kept under the spec's name.
    assert call["audio_file"] == {"channels": 2, "sample_rate": 44100, "seconds": 2.2}
    assert (tmp_path / f"{ctx.job.id}_input.wav").is_file()


def test_defaults_and_video_input_converted_to_audio(sim: SimNode, inputs: SampleServer, tmp_path: Path) -> None:
    ctx = make_context("whisper", {"audio_url": inputs.url("clip.mp4")}, tmp_path, sim.node)
    result = task_for("whisper").run(ctx)
    [call] = sim.state.events("whisper", "request")
    assert (call["model"], call["task"], call["language"]) == ("medium", "transcribe", "")
    assert call["audio_file"]["seconds"] == pytest.approx(1.5, abs=0.1)
    assert (tmp_path / f"{ctx.job.id}_input.mp3").is_file()
    assert "language: detected" in (result.text or "")


@pytest.mark.parametrize("name, reason", [
    ("portrait.jpg", "is not a readable audio or video file: not a format allowed (WAV, MP3, FLAC, Ogg, AAC, MP4/MOV, Matroska/WebM)"),
    ("broken.mp3", "is not a readable audio or video file: not a format allowed (WAV, MP3, FLAC, Ogg, AAC, MP4/MOV, Matroska/WebM)"),
])
def test_input_that_is_not_audio_fails_readably(sim: SimNode, inputs: SampleServer, tmp_path: Path,
                                                name: str, reason: str) -> None:
    url = inputs.url(name)
    with pytest.raises(TaskError) as info:
        task_for("whisper").run(make_context("whisper", {"audio_url": url}, tmp_path, sim.node))
    assert str(info.value) == f"audio_url {url} {reason}"
    assert sim.state.events("whisper") == []


def test_html_error_page_is_not_audio(sim: SimNode, inputs: SampleServer, tmp_path: Path) -> None:
    url = inputs.base + "/html"
    with pytest.raises(TaskError) as info:
        task_for("whisper").run(make_context("whisper", {"audio_url": url}, tmp_path, sim.node))
    assert str(info.value) == f"Could not download audio_url {url}: the server sent text/html, not an audio or video file"


def test_app_error_is_the_job_error(sim: SimNode, inputs: SampleServer, tmp_path: Path) -> None:
    sim.state.faults["whisper"] = "error"
    ctx = make_context("whisper", {"audio_url": inputs.url("speech.wav")}, tmp_path, sim.node)
    with pytest.raises(TaskError, match=r"^Whisper app failed: simulated whisper failure: CUDA error"):
        task_for("whisper").run(ctx)


def test_a_cancel_ends_the_task_but_not_the_running_gradio_call(sim: SimNode, inputs: SampleServer,
                                                                tmp_path: Path) -> None:
    sim.state.faults.update(whisper="slow", slow_seconds=3)
    ctx = make_context("whisper", {"audio_url": inputs.url("speech.wav")}, tmp_path, sim.node)
    progress: list = []
    ctx.report = lambda phase=None, progress_=None, **kw: progress.append(kw.get("progress", progress_))
    thread, box = run_in_thread(lambda: task_for("whisper").run(ctx))
    wait_until(lambda: any(progress), timeout=10)  # the worker saw the call run
    ctx.cancel.cancel("job was marked cancelled while running", "client")
    thread.join(10)
    assert isinstance(box.get("error"), TaskCancelled)
    assert not sim.state.events("whisper", "finished")
    assert ctx.extras["node_busy_for"] > 0
    wait_until(lambda: sim.state.events("whisper", "finished"), timeout=10)


def test_max_time_ends_the_task_and_the_node_finishes_the_call(sim: SimNode, inputs: SampleServer,
                                                               tmp_path: Path) -> None:
    sim.state.faults.update(whisper="slow", slow_seconds=3)
    ctx = make_context("whisper", {"audio_url": inputs.url("speech.wav")}, tmp_path, sim.node, max_time=1)
    outcome = supervise(task_for("whisper"), ctx)
    assert outcome.error == "Job exceeded max_time of 1 seconds"
    wait_until(lambda: sim.state.events("whisper", "finished"), timeout=10)


@pytest.mark.parametrize("name, body", [
    ("concat.mp3", "ffconcat version 1.0\nfile 'secret.wav'\n"),
    ("playlist.mp3", "#EXTM3U\n#EXTINF:2.2,\nsecret.wav\n"),
])
def test_media_that_names_other_files_is_refused(sim: SimNode, inputs: SampleServer, tmp_path: Path,
                                                 name: str, body: str) -> None:
    """An "audio" file that is a list of other files (FFmpeg's concat demuxer, an HLS
    playlist): FFmpeg's probing would read the work directory's secret.wav as the input.
    Sniffed, it opens with no allowed demuxer, and the node never sees a byte of it."""
    from tests.support.samples import audio_file

    audio_file(tmp_path / "secret.wav", 2.2)  # another file in the job's work directory
    (inputs.root / name).write_text(body)
    url = inputs.url(name)
    with pytest.raises(TaskError) as info:
        task_for("whisper").run(make_context("whisper", {"audio_url": url}, tmp_path, sim.node))
    assert str(info.value) == (f"audio_url {url} is not a readable audio or video file: not a format allowed "
                               "(WAV, MP3, FLAC, Ogg, AAC, MP4/MOV, Matroska/WebM)")
    assert sim.state.events("whisper") == []
