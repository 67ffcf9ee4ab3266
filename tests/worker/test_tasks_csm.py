"""The CSM task against the simulated node's real Gradio app."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest

from infra.local.simulator.apps import synth
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
from worker_runtime.cancel import TaskCancelled
from worker_runtime.node import Node
from worker_runtime.tasks.base import TaskError


def test_text_to_mp3_with_every_parameter_passed_through(sim: SimNode, tmp_path: Path) -> None:
    params = {"monologue": ["Hello there.", "This is the second sentence, a bit longer."],
              "voice": "conversational_b", "temperature": 0.7, "topk": 40, "max_audio_length": 8000,
              "pause_duration": 200}
    ctx = make_context("csm", params, tmp_path, sim.node)
    result = task_for("csm").run(ctx)

    assert (result.path, result.ext) == (tmp_path / f"{ctx.job.id}.mp3", "mp3")
    [call] = sim.state.events("csm", "request")
    assert {k: call[k] for k in params if k not in ("monologue", "voice")} == \
        {"temperature": 0.7, "topk": 40, "max_audio_length": 8000, "pause_duration": 200}
    assert json.loads(call["monologue_json"]) == params["monologue"]
    assert (call["speaker_voice"], call["speaker_text"], call["speaker_audio"]) == ("conversational_b", "", None)
    # A real MP3 as long as the simulated speech: 2 + 8 words, one 0.2 s pause.
    with av.open(str(result.path)) as container:
        assert container.format.name == "mp3"
    per_word = synth.WORD_SECONDS + synth.GAP_SECONDS
    assert samples.duration_of(result.path) == pytest.approx(10 * per_word + 0.2, abs=0.15)


def test_text_becomes_a_one_sentence_monologue_with_the_random_voice(sim: SimNode, tmp_path: Path) -> None:
    ctx = make_context("csm", {"text": "Just one line."}, tmp_path, sim.node)
    task_for("csm").run(ctx)
    [call] = sim.state.events("csm", "request")
    assert json.loads(call["monologue_json"]) == ["Just one line."]
    assert (call["speaker_voice"], call["temperature"], call["topk"]) == ("random_voice", 0.9, 50)
    assert (call["max_audio_length"], call["pause_duration"]) == (10000, 150)


def test_voice_clone_sends_a_mono_reference_and_its_text(sim: SimNode, inputs: SampleServer,
                                                         tmp_path: Path) -> None:
    params = {"text": "Clone me.", "voice": "clone", "reference_audio_url": inputs.url("speech.mp3"),
              "reference_text": "This is how I sound."}
    result = task_for("csm").run(make_context("csm", params, tmp_path, sim.node))
    [call] = sim.state.events("csm", "request")
    assert call["speaker_voice"] == "upload_voice"
    assert call["speaker_text"] == "This is how I sound."
    # The sample is stereo MP3; the app received it mono, same length.
    assert call["speaker_audio"]["channels"] == 1
    assert call["speaker_audio"]["seconds"] == pytest.approx(1.6, abs=0.1)
    assert samples.duration_of(result.path) > 0.3


def test_clone_reference_that_cannot_be_downloaded_fails_readably(sim: SimNode, inputs: SampleServer,
                                                                  tmp_path: Path) -> None:
    url = inputs.base + "/status/404"
    params = {"text": "x", "voice": "clone", "reference_audio_url": url, "reference_text": "y"}
    with pytest.raises(TaskError) as info:
        task_for("csm").run(make_context("csm", params, tmp_path, sim.node))
    assert str(info.value) == f"Could not download reference_audio_url {url}: HTTP 404 Not Found"
    assert sim.state.events("csm") == []


def test_app_error_is_the_job_error(sim: SimNode, tmp_path: Path) -> None:
    sim.state.faults["csm"] = "error"
    with pytest.raises(TaskError) as info:
        task_for("csm").run(make_context("csm", {"text": "x"}, tmp_path, sim.node))
    assert str(info.value) == "CSM app failed: simulated csm failure: CUDA error: out of memory (fault switch)"


def test_a_cancel_ends_the_task_but_not_the_running_gradio_call(sim: SimNode, tmp_path: Path) -> None:
    """Gradio cannot stop a running non-generator call: the task ends at once and says how
    long the node stays busy with it; the node goes on to the call's end."""
    sim.state.faults.update(csm="slow", slow_seconds=3)
    ctx = make_context("csm", {"text": "a long one"}, tmp_path, sim.node)
    progress: list = []
    ctx.report = lambda phase=None, progress_=None, **kw: progress.append(kw.get("progress", progress_))
    thread, box = run_in_thread(lambda: task_for("csm").run(ctx))
    wait_until(lambda: any(progress), timeout=10)  # the worker saw the call run
    ctx.cancel.cancel("job was marked cancelled while running", "client")
    thread.join(10)
    assert isinstance(box.get("error"), TaskCancelled)
    assert not sim.state.events("csm", "finished")  # the task did not wait for the node
    assert ctx.extras["node_busy_for"] > 0
    wait_until(lambda: sim.state.events("csm", "finished"), timeout=10)


def test_max_time_ends_the_task_and_the_node_finishes_the_call(sim: SimNode, tmp_path: Path) -> None:
    sim.state.faults.update(csm="slow", slow_seconds=3)
    ctx = make_context("csm", {"text": "too slow"}, tmp_path, sim.node, max_time=1)
    outcome = supervise(task_for("csm"), ctx)
    assert outcome.error == "Job exceeded max_time of 1 seconds"
    wait_until(lambda: sim.state.events("csm", "finished"), timeout=10)


def test_wrong_node_key_is_refused(sim: SimNode, tmp_path: Path) -> None:
    bad = Node(workload="w", name=sim.node.name, api_key="wrong", urls=sim.node.urls)
    with pytest.raises(TaskError, match=r"^CSM app at http://127\.0\.0\.1:\d+/csm/ refused the node's API key$"):
        task_for("csm").run(make_context("csm", {"text": "x"}, tmp_path, bad))


def test_no_node_is_a_readable_error(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="CSM needs a GPU node"):
        task_for("csm").run(make_context("csm", {"text": "x"}, tmp_path, None))
