"""The whole system for the four job types: submit over HTTP -> worker process -> simulated
Comput3 node (real Gradio, ComfyUI REST, Ollama apps) -> S3 -> /result and webhook."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
import requests

from chalicelib.platform.settings import Settings
from infra.local.samples import write_samples
from infra.local.simulator import SimulatorProcess
from infra.local.stack import create_stack
from tests.conftest import resource_env
from tests.support import procs, samples
from tests.support.harness import FAST, start_worker_process, wait_until
from tests.support.receiver import Receiver

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def system(aws_endpoints, tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    env = {**resource_env(f"e{uuid.uuid4().hex[:12]}"), "LOG_LEVEL": "INFO"}
    create_stack(Settings(**env))
    sim = SimulatorProcess.start(log_path=work / "simulator.log")
    inputs = samples.serve(write_samples(work / "samples"))
    receiver = Receiver().start()
    api_port = procs.free_port()
    api = procs.start_api(api_port, env, work / "api.log")
    worker_env = {
        **FAST, **env, **sim.worker_env(),
        "WORKER_TASKS": "worker_runtime.tasks:default_tasks",
        "OUTPUT_DIR": str(work / "out"), "ALLOW_PRIVATE_URLS": "true",
        "RENDER_POLLING_INTERVAL": "0.5", "LEASE_SECONDS": "20",
        "GPU_BOOT_POLL": "0.2",
        "GPU_HEALTH_INTERVAL": "2", "GRADIO_POLL_INTERVAL": "0.2", "COMFYUI_POLL_INTERVAL": "0.2",
        "GPU_PRICE_PER_HOUR": "2.5",  # the cost receipts' USD
    }
    worker = start_worker_process(worker_env, work / "worker.log")
    # The app's SQS handlers (webhook deliveries, DLQ) and the reconciler, as `make run` runs them.
    handlers = procs.start([sys.executable, "-m", "infra.local.lambda_poller"],
                           env={**env, "LAMBDA_POLL_WAIT_SECONDS": "1"}, log_path=work / "handlers.log")
    yield {"api": f"http://127.0.0.1:{api_port}", "sim": sim, "inputs": inputs, "receiver": receiver,
           "work": work, "worker": worker}
    procs.stop(handlers)
    procs.stop(worker, timeout=30)
    procs.stop(api)
    inputs.stop()
    receiver.stop()
    sim.stop()


def submit(system, path: str, body: dict) -> str:
    resp = requests.post(f"{system['api']}{path}", json={**body, "notify_url": system["receiver"].url}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()["id"]


def finished(system, job_id: str, timeout: float = 120) -> dict:
    def done():
        status = requests.get(f"{system['api']}/status/{job_id}", timeout=10).json()
        return status if status["status"] not in ("queued", "running") else None

    return wait_until(done, timeout, interval=0.2)


def test_all_four_job_types_complete_with_real_media(system, tmp_path: Path):
    url = system["inputs"].url
    jobs = {
        "csm": submit(system, "/csm", {"monologue": ["Hello from the test.", "A second sentence."],
                                         "voice": "conversational_a", "temperature": 0.7, "topk": 40}),
        "whisper": submit(system, "/whisper", {"audio_url": url("speech.wav"), "model": "large-v3",
                                               "task": "translate", "language": "en"}),
        "portrait": submit(system, "/portrait", {"image_url": url("portrait.jpg"), "audio_url": url("speech.wav")}),
        "analyze": submit(system, "/analyze", {"image_url": url("portrait.jpg")}),
    }
    statuses = {kind: finished(system, job_id) for kind, job_id in jobs.items()}
    assert {k: s["status"] for k, s in statuses.items()} == dict.fromkeys(jobs, "success"), statuses

    results = {k: requests.get(f"{system['api']}/result/{j}", timeout=10).json() for k, j in jobs.items()}
    mp3 = tmp_path / "speech.mp3"
    mp3.write_bytes(requests.get(results["csm"]["result_url"], timeout=10).content)
    assert samples.duration_of(mp3) > 1.0
    mp4 = tmp_path / "portrait.mp4"
    mp4.write_bytes(requests.get(results["portrait"]["result_url"], timeout=10).content)
    facts = samples.video_facts(mp4)
    assert facts["frames"] > 0 and facts["audio_seconds"] == pytest.approx(3.0, abs=0.3)
    assert facts["width"] > 0 and facts["height"] > 0
    assert results["whisper"]["text"].strip()
    assert "640" in results["analyze"]["text"] and "800" in results["analyze"]["text"]

    hooks = {r.json()["id"]: r.json() for r in system["receiver"].wait_for(4, timeout=30)}
    assert set(hooks) == set(jobs.values())
    assert hooks[jobs["whisper"]]["text"] == results["whisper"]["text"]
    assert "result_url" in hooks[jobs["portrait"]]

    # One rented instance served all four jobs, and the parameters reached the node as sent.
    ledger = system["sim"].ledger()
    assert ledger["launches"] == 1 and ledger["running"] == 1, ledger
    node = system["sim"].node(ledger["instances"][0]["workload"])
    csm_calls = [r for r in node["requests"] if r.get("app") == "csm" and r.get("event") == "request"]
    assert csm_calls, node["requests"]
    assert csm_calls[-1]["temperature"] == 0.7 and csm_calls[-1]["topk"] == 40
    assert csm_calls[-1]["speaker_voice"] == "conversational_a"


def test_bad_download_fails_the_job_naming_the_url(system):
    job_id = submit(system, "/analyze", {"image_url": system["inputs"].base + "/status/404"})
    status = finished(system, job_id)
    assert status["status"] == "failed"
    assert "image_url" in status["error"] and "404" in status["error"]
