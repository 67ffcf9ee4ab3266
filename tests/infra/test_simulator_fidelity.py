"""The simulated node accepts and refuses what a real one does, over HTTP against the
simulator process: ComfyUI's /prompt validation and error shape, its core output nodes,
undeclared inputs, and node apps that stay intact when nodes are launched together."""

from __future__ import annotations

import base64
import io
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from gradio_client import Client, handle_file
from PIL import Image

from infra.local.simulator import SimulatorProcess
from tests.support import samples
from tests.support.harness import wait_until
from worker_runtime.tasks.sonic_workflow import sonic_workflow


class ComfyNode:
    """One launched node's ComfyUI, as a client reaches it."""

    def __init__(self, sim: SimulatorProcess, node: str):
        self.base = f"http://{node}/comfyui"
        self.session = requests.Session()
        self.session.headers["X-C3-API-KEY"] = sim.api_key

    def upload(self, path: Path) -> str:
        with open(path, "rb") as fh:
            resp = self.session.post(f"{self.base}/upload/image", files={"image": (path.name, fh)},
                                     data={"overwrite": "true"}, timeout=10)
        resp.raise_for_status()
        return resp.json()["name"]

    def submit(self, graph: dict[str, Any]) -> requests.Response:
        return self.session.post(f"{self.base}/prompt", json={"prompt": graph, "client_id": uuid.uuid4().hex},
                                 timeout=10)

    def finished(self, prompt_id: str, timeout: float = 60) -> dict[str, Any]:
        def entry() -> dict[str, Any] | None:
            body = self.session.get(f"{self.base}/history/{prompt_id}", timeout=10).json()
            return body.get(prompt_id)

        found = wait_until(entry, timeout, interval=0.1)
        assert found["status"]["status_str"] == "success", found["status"]
        return found

    def view(self, item: dict[str, Any]) -> bytes:
        resp = self.session.get(f"{self.base}/view", params=item, timeout=10)
        assert resp.status_code == 200, (item, resp.status_code)
        return resp.content


def launch(sim: SimulatorProcess) -> dict[str, Any]:
    resp = requests.post(f"{sim.url}/api/v0/launch", json={"type": "media:fast", "expires": int(time.time()) + 900},
                         headers={"X-C3-API-KEY": sim.api_key}, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fidelity-media")
    return {"image": samples.jpeg(folder / "face.jpg", (640, 480)),
            "audio": samples.audio_file(folder / "voice.wav", 1.2)}


def session_answers(session: requests.Session, url: str) -> bool:
    """The booting node answers (a request it drops or holds past the timeout is a no, not an error)."""
    try:
        return session.get(url, timeout=5).ok
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def comfy(log_dir: Path, media: dict[str, Path]) -> Iterator[tuple[ComfyNode, str, str]]:
    """One node of a simulator with its apps, and the names of the uploaded image and audio."""
    sim = SimulatorProcess.start(log_path=log_dir / "c3sim-fidelity.log")
    try:
        node = ComfyNode(sim, launch(sim)["node"])
        wait_until(lambda: session_answers(node.session, f"{node.base}/system_stats"), 60)
        yield node, node.upload(media["image"]), node.upload(media["audio"])
    finally:
        sim.stop()


def sonic(image: str, audio: str) -> dict[str, Any]:
    return sonic_workflow(image, audio, 640, 480, 4, 7, f"fidelity/{uuid.uuid4().hex[:8]}")


# -- accepted and executed --------------------------------------------------------------

def test_core_output_nodes_run_and_list_their_files(comfy: tuple[ComfyNode, str, str]) -> None:
    node, image, audio = comfy
    graph = sonic(image, audio)
    graph["20"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
    graph["21"] = {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "fidelity/still"}}
    graph["22"] = {"class_type": "PreviewAudio", "inputs": {"audio": ["3", 0]}}
    resp = node.submit(graph)
    assert resp.status_code == 200, resp.text
    assert resp.json()["node_errors"] == {}
    entry = node.finished(resp.json()["prompt_id"])

    outputs = entry["outputs"]
    assert sorted(outputs) == ["20", "21", "22", "8"]
    [preview] = outputs["20"]["images"]
    assert preview["type"] == "temp" and preview["filename"].startswith("ComfyUI_temp_")
    assert Image.open(io.BytesIO(node.view(preview))).size == (640, 480)
    [saved] = outputs["21"]["images"]
    assert (saved["type"], saved["subfolder"]) == ("output", "fidelity")
    assert saved["filename"].startswith("still_") and saved["filename"].endswith("_.png")
    [sound] = outputs["22"]["audio"]
    assert sound["type"] == "temp" and node.view(sound)[:4] == b"fLaC"
    [video] = outputs["8"]["gifs"]
    assert node.view(video)[4:8] == b"ftyp"
    assert sorted(entry["prompt"][4]) == ["20", "21", "22", "8"]  # the outputs it executed


def test_preview_of_sonic_frames_lists_one_png_per_frame(comfy: tuple[ComfyNode, str, str]) -> None:
    node, image, audio = comfy
    graph = sonic(image, audio)
    del graph["8"]
    graph["30"] = {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}}
    resp = node.submit(graph)
    assert resp.status_code == 200, resp.text
    frames = node.finished(resp.json()["prompt_id"])["outputs"]["30"]["images"]
    assert len(frames) == 29  # 1.2 s of audio at 24 fps, rounded up
    assert len({f["filename"] for f in frames}) == 29
    assert Image.open(io.BytesIO(node.view(frames[-1]))).size == (768, 576)  # SONIC's min_resolution


def test_inputs_the_web_ui_adds_are_ignored(comfy: tuple[ComfyNode, str, str]) -> None:
    node, image, audio = comfy
    graph = sonic(image, audio)
    graph["1"]["inputs"]["upload"] = "image"
    graph["3"]["inputs"]["audioUI"] = ""
    graph["7"]["inputs"]["seed"] = "7"  # ComfyUI converts widget values: "7" is a fine INT
    graph["23"] = {"class_type": "SaveAudio", "inputs": {"audio": ["3", 0], "filename_prefix": "audio/ComfyUI",
                                                       "audioUI": ""}}
    resp = node.submit(graph)
    assert resp.status_code == 200, resp.text
    outputs = node.finished(resp.json()["prompt_id"])["outputs"]
    [flac] = outputs["23"]["audio"]
    assert (flac["type"], flac["subfolder"]) == ("output", "audio") and flac["filename"].endswith("_.flac")
    assert node.view(flac)[:4] == b"fLaC"
    assert outputs["8"]["gifs"][0]["filename"].endswith(".mp4")


def test_a_failing_output_is_dropped_and_the_others_run(comfy: tuple[ComfyNode, str, str]) -> None:
    node, image, audio = comfy
    graph = sonic(image, audio)
    graph["40"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}}
    resp = node.submit(graph)
    assert resp.status_code == 200, resp.text
    [error] = resp.json()["node_errors"]["40"]["errors"]
    assert error["type"] == "return_type_mismatch"
    assert resp.json()["node_errors"]["40"]["dependent_outputs"] == ["40"]
    assert sorted(node.finished(resp.json()["prompt_id"])["outputs"]) == ["8"]


# -- refused, in ComfyUI's shape ---------------------------------------------------------

def test_unknown_node_type_is_refused_naming_the_node(comfy: tuple[ComfyNode, str, str]) -> None:
    node, image, audio = comfy
    graph = sonic(image, audio)
    graph["9"] = {"class_type": "FaceRestoreXL", "inputs": {"image": ["2", 0]}}
    resp = node.submit(graph)
    assert resp.status_code == 400
    assert resp.json() == {"error": {"type": "invalid_prompt",
                                     "message": "Cannot execute because node FaceRestoreXL does not exist.",
                                     "details": "Node ID '#9'", "extra_info": {}},
                           "node_errors": {}}


def test_ui_only_note_is_refused_as_comfyui_does(comfy: tuple[ComfyNode, str, str]) -> None:
    """The web UI never sends Note nodes (they are virtual); ComfyUI's /prompt refuses one."""
    node, image, audio = comfy
    graph = sonic(image, audio)
    graph["50"] = {"class_type": "Note", "inputs": {"text": "render at 24 fps"}}
    resp = node.submit(graph)
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "Cannot execute because node Note does not exist."
    assert resp.json()["error"]["details"] == "Node ID '#50'"


def test_missing_required_input_is_refused_with_node_errors(comfy: tuple[ComfyNode, str, str]) -> None:
    node, image, audio = comfy
    graph = sonic(image, audio)
    del graph["7"]["inputs"]["seed"]
    resp = node.submit(graph)
    assert resp.status_code == 400
    body = resp.json()
    assert body["error"] == {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                             "details": "", "extra_info": {}}
    assert body["node_errors"] == {"7": {
        "errors": [{"type": "required_input_missing", "message": "Required input is missing", "details": "seed",
                    "extra_info": {"input_name": "seed"}}],
        "dependent_outputs": ["8"], "class_type": "SONICSampler"}}


def test_prompt_without_output_nodes_is_refused(comfy: tuple[ComfyNode, str, str]) -> None:
    node, image, audio = comfy
    resp = node.submit({"1": {"class_type": "LoadImage", "inputs": {"image": image}}})
    assert resp.status_code == 400
    assert resp.json() == {"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "",
                                     "extra_info": {}}, "node_errors": {}}


def test_bad_widget_value_and_missing_file(comfy: tuple[ComfyNode, str, str]) -> None:
    node, image, audio = comfy
    graph = sonic(image, "never-uploaded.wav")
    graph["7"]["inputs"]["inference_steps"] = "many"
    body = node.submit(graph).json()
    assert body["node_errors"]["3"]["errors"][0]["details"] == "audio - Invalid audio file: never-uploaded.wav"
    [steps] = body["node_errors"]["7"]["errors"]
    assert steps["message"] == "Failed to convert an input value to a INT value"
    assert steps["details"].startswith("inference_steps, many, invalid literal for int()")
    assert body["node_errors"]["3"]["dependent_outputs"] == ["8"]


# -- parallel launches ------------------------------------------------------------------

def answers(url: str, headers: dict[str, str]) -> bool:
    """The node answered (six nodes booting at once on two cores may take a while)."""
    try:
        return requests.get(url, headers=headers, timeout=10).ok
    except requests.RequestException:
        return False


def exercise_node(sim: SimulatorProcess, node: str, media: dict[str, Path], scratch: Path) -> dict[str, Any]:
    """Call every app of one node as a worker would; returns what each answered."""
    headers = {"X-C3-API-KEY": sim.api_key}
    wait_until(lambda: answers(f"http://{node}/", headers), 90, interval=0.2)
    clients = {app: Client(f"http://{node}/{app}/", headers=headers, verbose=False, analytics_enabled=False,
                           download_files=str(scratch)) for app in ("csm", "whisper")}
    speech = clients["csm"].predict(monologue_json='["Hello there.", "Bye."]', speaker_voice="conversational_a",
                                    speaker_text="", speaker_audio=None, temperature=0.9, topk=50,
                                    max_audio_length=10000, pause_duration=150, api_name="/generate_monologue_audio")
    transcript, _ = clients["whisper"].predict(
        audio_file=handle_file(str(media["audio"])), model="tiny", task="transcribe", language="", device="cuda",
        compute_type="float16", batch_size=16, vad_method="pyannote", word_timestamps=True,
        segment_resolution="sentence", api_name="/transcribe_audio")
    for client in clients.values():
        client.close()
    comfy = ComfyNode(sim, node)
    image = comfy.upload(media["image"])
    resp = comfy.submit({"1": {"class_type": "LoadImage", "inputs": {"image": image}},
                         "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}})
    assert resp.status_code == 200, resp.text
    preview = comfy.finished(resp.json()["prompt_id"])["outputs"]["2"]["images"]
    ollama = requests.post(f"http://{node}/ollama/api/generate", headers=headers, timeout=30, json={
        "model": "llama3.2-vision:11b", "prompt": "Describe", "stream": False,
        "images": [base64.b64encode(media["image"].read_bytes()).decode()]})
    return {"speech": samples.duration_of(Path(speech)), "transcript": transcript, "preview": len(preview),
            "ollama": ollama.json()["response"]}


def test_nodes_launched_together_all_serve_every_app(log_dir: Path, media: dict[str, Path], tmp_path: Path) -> None:
    sim = SimulatorProcess.start(log_path=log_dir / "c3sim-parallel.log")
    try:
        with ThreadPoolExecutor(6) as pool:
            launched = list(pool.map(lambda _: launch(sim), range(6)))
            nodes = [w["node"] for w in launched]
            assert len(set(nodes)) == 6
            answers = list(pool.map(lambda i: exercise_node(sim, nodes[i], media, tmp_path / str(i)), range(6)))
        for w, answer in zip(launched, answers):
            assert answer["speech"] > 0.5
            assert answer["transcript"] == ("[simulated whisper tiny] transcribe of 1.20 seconds of audio "
                                            "(language: detected: en).")
            assert answer["preview"] == 1
            assert answer["ollama"].startswith("[simulated llama3.2-vision:11b] A landscape image of 640x480")
            # each node's apps recorded the calls on that node, none on another
            seen = [(r["app"], r["event"]) for r in sim.node(w["workload"])["requests"]]
            assert {("csm", "request"), ("whisper", "request"), ("comfyui", "prompt"), ("ollama", "request")} \
                <= set(seen)
            assert seen.count(("csm", "request")) == 1 and seen.count(("whisper", "request")) == 1
    finally:
        sim.stop()
