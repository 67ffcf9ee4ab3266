"""The portrait task against the simulated node's ComfyUI (SONIC workflow)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from chalicelib.platform.logs import get_logger
from tests.support import samples
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
from worker_runtime.cancel import CancelToken, TaskCancelled
from worker_runtime.tasks.base import TaskError
from worker_runtime.tasks.comfyui import ComfyUI
from worker_runtime.tasks.sonic_workflow import sonic_workflow


def graph_of(sim: SimNode) -> dict:
    [call] = sim.state.events("comfyui", "prompt")
    return call["prompt"]


def test_renders_an_mp4_from_the_sonic_workflow(sim: SimNode, inputs: SampleServer, tmp_path: Path) -> None:
    params = {"image_url": inputs.url("large.jpg"), "audio_url": inputs.url("speech.wav")}
    ctx = make_context("portrait", params, tmp_path, sim.node)
    result = task_for("portrait", PORTRAIT_SEED=1234).run(ctx)

    assert (result.path, result.ext) == (tmp_path / f"{ctx.job.id}.mp4", "mp4")
    image_up, audio_up = sim.state.events("comfyui", "upload")
    # 3000x2000 is scaled to 2048 px first; the audio goes up as it came (plain WAV).
    assert (image_up["name"], image_up["image_size"]) == (f"{ctx.job.id}_portrait.jpg", [2048, 1365])
    assert (audio_up["name"], audio_up["audio"]["seconds"]) == (f"{ctx.job.id}_audio.wav", 2.2)
    # The graph is exactly the SONIC workflow: fit in 1280x720, clip = ceil(2.2 s) + 3.
    expected = sonic_workflow(image_up["name"], audio_up["name"], 1080, 720, 6, 1234, f"c3render/{ctx.job.id}")
    assert graph_of(sim) == expected
    # The video decodes: SONIC's short side (min_resolution 576), the aspect kept,
    # as long as the audio (trim_to_audio), at the sampler's 24 fps.
    facts = samples.video_facts(result.path)
    assert (facts["width"], facts["height"], facts["fps"]) == (864, 576, 24.0)
    assert facts["audio_seconds"] == pytest.approx(2.2, abs=0.1)
    assert facts["video_seconds"] == pytest.approx(2.2, abs=0.1)


def test_exif_rotated_image_and_video_as_audio(sim: SimNode, inputs: SampleServer, tmp_path: Path) -> None:
    params = {"image_url": inputs.url("rotated.jpg"), "audio_url": inputs.url("clip.mp4")}
    ctx = make_context("portrait", params, tmp_path, sim.node)
    result = task_for("portrait").run(ctx)
    image_up, audio_up = sim.state.events("comfyui", "upload")
    assert image_up["image_size"] == [240, 320]  # upright, not upscaled
    assert audio_up["name"] == f"{ctx.job.id}_audio.mp3"  # the video's sound, converted
    resize = graph_of(sim)["2"]["inputs"]
    assert (resize["width"], resize["height"]) == (240, 320)
    assert graph_of(sim)["6"]["inputs"]["duration"] == 5.0  # ceil(1.5) + 3
    facts = samples.video_facts(result.path)
    assert (facts["width"], facts["height"]) == (576, 768)
    assert facts["audio_seconds"] == pytest.approx(1.5, abs=0.1)


def test_rejected_graph_reports_comfyuis_node_errors(sim: SimNode, inputs: SampleServer, tmp_path: Path) -> None:
    sim.state.faults["comfyui"] = "node_error"
    params = {"image_url": inputs.url("portrait.jpg"), "audio_url": inputs.url("speech.mp3")}
    with pytest.raises(TaskError) as info:
        task_for("portrait").run(make_context("portrait", params, tmp_path, sim.node))
    assert str(info.value) == (
        "ComfyUI rejected the workflow: Prompt outputs failed validation; node 5 (SONICTLoader): "
        "Value not in list: sonic_unet: 'unet.pth' not in ['none'] (simulated fault: model missing)")


def test_failed_run_reports_the_failing_node(sim: SimNode, inputs: SampleServer, tmp_path: Path) -> None:
    sim.state.faults["comfyui"] = "exec_error"
    params = {"image_url": inputs.url("portrait.jpg"), "audio_url": inputs.url("speech.mp3")}
    with pytest.raises(TaskError) as info:
        task_for("portrait").run(make_context("portrait", params, tmp_path, sim.node))
    assert str(info.value) == ("ComfyUI failed in node 7 (SONICSampler): torch.OutOfMemoryError: "
                               "CUDA out of memory. Tried to allocate 2.00 GiB (simulated fault)")


def test_cancel_interrupts_the_running_prompt(sim: SimNode, inputs: SampleServer, tmp_path: Path) -> None:
    sim.state.faults.update(comfyui="slow", slow_seconds=30)
    params = {"image_url": inputs.url("portrait.jpg"), "audio_url": inputs.url("speech.mp3")}
    ctx = make_context("portrait", params, tmp_path, sim.node)
    thread, box = run_in_thread(lambda: task_for("portrait").run(ctx))
    wait_until(lambda: sim.state.events("comfyui", "prompt"), timeout=10)
    ctx.cancel.cancel("job was marked cancelled while running", "client")
    thread.join(10)
    assert isinstance(box.get("error"), TaskCancelled)
    [interrupt] = sim.state.events("comfyui", "interrupt")
    assert interrupt["stopped"] is True
    assert sim.state.events("comfyui", "queue_delete")
    # Confirmed before the task ended: the prompt was gone from the node's queue.
    assert sim.state.events("comfyui", "interrupted") and "node_busy_for" not in ctx.extras


def test_an_interrupt_the_node_does_not_confirm_in_time_marks_it_busy(sim: SimNode, inputs: SampleServer,
                                                                      tmp_path: Path) -> None:
    """ComfyUI stops a run at its next step only: with 5 s steps the prompt is still in
    /queue's queue_running when the confirmation gives up (3 s), so the node counts as busy for
    an unknown time (the worker then stops the instance rather than wait)."""
    sim.state.faults.update(comfyui="slow", slow_seconds=100)
    params = {"image_url": inputs.url("portrait.jpg"), "audio_url": inputs.url("speech.mp3")}
    ctx = make_context("portrait", params, tmp_path, sim.node)
    thread, box = run_in_thread(lambda: task_for("portrait").run(ctx))
    wait_until(lambda: sim.state.events("comfyui", "prompt"), timeout=10)
    ctx.cancel.cancel("job was marked cancelled while running", "client")
    thread.join(15)
    assert isinstance(box.get("error"), TaskCancelled)
    assert ctx.extras["node_busy_for"] == float("inf")
    assert not sim.state.events("comfyui", "interrupted")
    wait_until(lambda: sim.state.events("comfyui", "interrupted"), timeout=15)  # at the step's end


def test_max_time_interrupts_comfyui(sim: SimNode, inputs: SampleServer, tmp_path: Path) -> None:
    sim.state.faults.update(comfyui="slow", slow_seconds=30)
    params = {"image_url": inputs.url("portrait.jpg"), "audio_url": inputs.url("speech.mp3")}
    ctx = make_context("portrait", params, tmp_path, sim.node, max_time=3)
    outcome = supervise(task_for("portrait"), ctx)
    assert outcome.error == "Job exceeded max_time of 3 seconds"
    wait_until(lambda: sim.state.events("comfyui", "interrupted"), timeout=5)
    [interrupt] = sim.state.events("comfyui", "interrupt")
    assert interrupt["prompt_id"] == interrupt["running"]


def test_comfyui_not_ready(sim: SimNode, inputs: SampleServer, tmp_path: Path) -> None:
    sim.state.faults["comfyui"] = "down"
    params = {"image_url": inputs.url("portrait.jpg"), "audio_url": inputs.url("speech.mp3")}
    with pytest.raises(TaskError, match=r"^ComfyUI at http://127\.0\.0\.1:\d+/comfyui was not ready within "
                                        r"0\.3 s \(last answer: HTTP 503\)$"):
        task_for("portrait", COMFYUI_READY_TIMEOUT=0.3).run(make_context("portrait", params, tmp_path, sim.node))


@pytest.mark.parametrize("field, path, reason", [
    ("image_url", "/html", "the server sent text/html, not an image"),
    ("image_url", "/files/speech.wav", None),
    ("audio_url", "/status/404", "HTTP 404 Not Found"),
])
def test_bad_inputs_fail_before_anything_reaches_the_node(sim: SimNode, inputs: SampleServer, tmp_path: Path,
                                                          field: str, path: str, reason: str | None) -> None:
    params = {"image_url": inputs.url("portrait.jpg"), "audio_url": inputs.url("speech.mp3"),
              field: inputs.base + path}
    with pytest.raises(TaskError) as info:
        task_for("portrait").run(make_context("portrait", params, tmp_path, sim.node))
    url = inputs.base + path
    if reason is None:
        assert str(info.value) == f"image_url {url} is not an image Pillow can read"
    else:
        assert str(info.value) == f"Could not download {field} {url}: {reason}"
    assert sim.state.events("comfyui") == []


def test_private_urls_are_refused_outside_local_mode(sim: SimNode, inputs: SampleServer, tmp_path: Path) -> None:
    params = {"image_url": inputs.url("portrait.jpg"), "audio_url": inputs.url("speech.mp3")}
    with pytest.raises(TaskError, match=r"^Could not download image_url .*: its host does not resolve to a public "
                                        r"address \(refused outside local mode\)$"):
        task_for("portrait", ALLOW_PRIVATE_URLS=False).run(make_context("portrait", params, tmp_path, sim.node))


# -- the simulator's graph validation, through the worker's client ---------------------

@pytest.mark.parametrize("break_graph, message", [
    (lambda g: g["7"].update(class_type="SONICSamplerXL"),
     "ComfyUI rejected the workflow: Cannot execute because node SONICSamplerXL does not exist."),
    (lambda g: g["6"]["inputs"].update(audio=["99", 0]),
     "ComfyUI rejected the workflow: Prompt outputs failed validation; node 6 (SONIC_PreData): "
     "Linked node does not exist: audio: node 99"),
    (lambda g: g["6"]["inputs"].update(image=["3", 0]),
     "ComfyUI rejected the workflow: Prompt outputs failed validation; node 6 (SONIC_PreData): "
     "Return type mismatch between linked nodes: image, received_type(AUDIO) mismatch input_type(IMAGE)"),
    (lambda g: g["1"]["inputs"].update(image="never-uploaded.jpg"),
     "ComfyUI rejected the workflow: Prompt outputs failed validation; node 1 (LoadImage): "
     "Custom validation failed for node: image - Invalid image file: never-uploaded.jpg"),
    (lambda g: g["7"]["inputs"].pop("seed"),
     "ComfyUI rejected the workflow: Prompt outputs failed validation; node 7 (SONICSampler): "
     "Required input is missing: seed"),
    (lambda g: g.pop("8"), "ComfyUI rejected the workflow: Prompt has no outputs"),
])
def test_simulated_comfyui_validates_graphs(sim: SimNode, inputs: SampleServer, break_graph, message: str) -> None:
    comfy = ComfyUI(sim.node.comfyui_url, sim.node.headers, 10, get_logger("test"))
    image = comfy.upload(inputs.root / "portrait.jpg", "v.jpg")
    audio = comfy.upload(inputs.root / "speech.mp3", "v.mp3")
    graph = sonic_workflow(image, audio, 640, 480, 5, 1, "validate")
    break_graph(graph)
    with pytest.raises(TaskError) as info:
        comfy.queue(graph, uuid.uuid4().hex)
    assert str(info.value) == message
    # And the intact graph is accepted and runs.
    good = sonic_workflow(image, audio, 640, 480, 5, 1, "validate")
    outputs = comfy.wait(comfy.queue(good, uuid.uuid4().hex), CancelToken(), 0.05)
    assert outputs["8"]["gifs"][0]["filename"].endswith(".mp4")
