"""The image-analysis task against the simulated node's Ollama generate API."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import requests

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
from worker_runtime.tasks.settings import DEFAULT_ANALYZE_PROMPT


def test_describes_the_upright_image(sim: SimNode, inputs: SampleServer, tmp_path: Path) -> None:
    ctx = make_context("analyze", {"image_url": inputs.url("rotated.jpg")}, tmp_path, sim.node)
    result = task_for("analyze").run(ctx)
    assert result.text is not None
    assert result.text.startswith("[simulated llama3.2-vision:11b] A portrait image of 240x320 pixels. "
                                  "Dominant colours: steel blue")
    [call] = sim.state.events("ollama", "request")
    assert (call["model"], call["prompt"], call["stream"]) == ("llama3.2-vision:11b", DEFAULT_ANALYZE_PROMPT, True)
    assert call["images"] == [{"size": [240, 320], "format": "JPEG"}]
    assert (tmp_path / f"{ctx.job.id}_input.jpg").is_file()


def test_model_prompt_and_size_are_configurable(sim: SimNode, inputs: SampleServer, tmp_path: Path) -> None:
    task = task_for("analyze", ANALYZE_MODEL="llava:13b", ANALYZE_PROMPT="What is this?", ANALYZE_MAX_SIDE=600)
    result = task.run(make_context("analyze", {"image_url": inputs.url("large.jpg")}, tmp_path, sim.node))
    [call] = sim.state.events("ollama", "request")
    assert (call["model"], call["prompt"]) == ("llava:13b", "What is this?")
    assert call["images"] == [{"size": [600, 400], "format": "JPEG"}]
    assert "A landscape image of 600x400 pixels" in (result.text or "")


def test_png_with_alpha_is_sent_as_jpeg(sim: SimNode, inputs: SampleServer, tmp_path: Path) -> None:
    result = task_for("analyze").run(make_context("analyze", {"image_url": inputs.url("picture.png")}, tmp_path,
                                                  sim.node))
    [call] = sim.state.events("ollama", "request")
    assert call["images"] == [{"size": [200, 100], "format": "JPEG"}]
    assert "Dominant colours: green (100%)" in (result.text or "")


def test_unknown_model_is_a_readable_error(sim: SimNode, inputs: SampleServer, tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"^Ollama at http://127\.0\.0\.1:\d+/ollama/api/generate answered "
                                        r"HTTP 404: model 'nope:1b' not found, try pulling it first$"):
        task_for("analyze", ANALYZE_MODEL="nope:1b").run(
            make_context("analyze", {"image_url": inputs.url("portrait.jpg")}, tmp_path, sim.node))


def test_node_failure_is_the_job_error(sim: SimNode, inputs: SampleServer, tmp_path: Path) -> None:
    sim.state.faults["ollama"] = "error"
    with pytest.raises(TaskError, match=r"answered HTTP 500: simulated: llama runner process has terminated"):
        task_for("analyze").run(make_context("analyze", {"image_url": inputs.url("portrait.jpg")}, tmp_path,
                                             sim.node))


def test_cancel_closes_the_stream_and_stops_generation(sim: SimNode, inputs: SampleServer, tmp_path: Path) -> None:
    sim.state.faults.update(ollama="slow", slow_seconds=30)
    ctx = make_context("analyze", {"image_url": inputs.url("portrait.jpg")}, tmp_path, sim.node)
    thread, box = run_in_thread(lambda: task_for("analyze").run(ctx))
    wait_until(lambda: sim.state.events("ollama", "request"), timeout=10)
    ctx.cancel.cancel("job was marked cancelled while running", "client")
    thread.join(10)
    assert isinstance(box.get("error"), TaskCancelled)
    wait_until(lambda: sim.state.events("ollama", "cancelled"), timeout=5)


def test_max_time_stops_generation(sim: SimNode, inputs: SampleServer, tmp_path: Path) -> None:
    sim.state.faults.update(ollama="slow", slow_seconds=30)
    ctx = make_context("analyze", {"image_url": inputs.url("portrait.jpg")}, tmp_path, sim.node, max_time=1)
    outcome = supervise(task_for("analyze"), ctx)
    assert outcome.error == "Job exceeded max_time of 1 seconds"
    wait_until(lambda: sim.state.events("ollama", "cancelled"), timeout=5)


@pytest.mark.parametrize("path, reason", [
    ("/files/notes.txt", "Could not download image_url {url}: the server sent text/plain, not an image"),
    ("/disguised", "Could not download image_url {url}: the server sent a web page, not an image"),
    ("/files/bomb.png", "image_url {url} was refused: Image size (1600000000 pixels) exceeds limit of "
                        "178956970 pixels, could be decompression bomb DOS attack."),
])
def test_bad_images_fail_readably(sim: SimNode, inputs: SampleServer, tmp_path: Path, path: str, reason: str) -> None:
    url = inputs.base + path
    with pytest.raises(TaskError) as info:
        task_for("analyze").run(make_context("analyze", {"image_url": url}, tmp_path, sim.node))
    assert str(info.value) == reason.format(url=url)
    assert sim.state.events("ollama") == []


def test_private_url_refused_outside_local_mode(sim: SimNode, inputs: SampleServer, tmp_path: Path) -> None:
    url = inputs.url("portrait.jpg")
    with pytest.raises(TaskError) as info:
        task_for("analyze", ALLOW_PRIVATE_URLS=False).run(make_context("analyze", {"image_url": url}, tmp_path,
                                                                       sim.node))
    assert str(info.value) == (f"Could not download image_url {url}: its host does not resolve to a public "
                               "address (refused outside local mode)")


def test_simulated_ollama_also_answers_unstreamed(sim: SimNode, inputs: SampleServer) -> None:
    image = base64.b64encode((inputs.root / "portrait.jpg").read_bytes()).decode()
    body = {"model": "llama3.2-vision:11b", "prompt": "hi", "stream": False, "images": [image]}
    answer = requests.post(sim.node.ollama_url + "/api/generate", json=body, headers=sim.node.headers, timeout=10)
    assert answer.status_code == 200
    data = answer.json()
    assert data["done"] is True and "A landscape image of 640x480 pixels" in data["response"]
    refused = requests.post(sim.node.ollama_url + "/api/generate", data=json.dumps(body), timeout=10)
    assert refused.status_code == 401
