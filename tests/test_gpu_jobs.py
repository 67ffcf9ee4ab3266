"""What a job costs in GPUs: bad inputs cost none, only faults of the node stop an
instance, node faults read clearly. The production tasks run in the worker loop against
the simulated Comput3; the simulator's ledger (launches, stops) is the evidence."""

from __future__ import annotations

import time

import pytest

from chalicelib.context import Context
from chalicelib.logs import get_logger
from chalicelib.models import JobStatus
from chalicelib.settings import Settings
from tests.support.fake_gpu_tasks import GPU_FAST
from tests.support.harness import FAST, ThreadWorker, service, submit, task_events, wait_until
from tests.support.node_apps import inputs  # noqa: F401 - fixture
from tests.support.samples import SampleServer
from worker_runtime.cancel import CancelToken
from worker_runtime.gpu import GpuSettings, build_gpu_manager

pytestmark = pytest.mark.integration

REAL_TASKS = "worker_runtime.tasks:default_tasks"


@pytest.fixture
def genv(stack_env, c3_sim, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TASK_LOG", str(tmp_path / "tasks.log"))
    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "true")  # the sample server is on 127.0.0.1
    monkeypatch.setenv("DOWNLOAD_TIMEOUT", "10")
    return {**stack_env, **GPU_FAST, **c3_sim.worker_env(), "OUTPUT_DIR": str(tmp_path / "out")}


def gpu_worker(env, **overrides):
    full = {**FAST, **env, **overrides}
    worker_id = f"w-{time.monotonic_ns()}"
    gpu = build_gpu_manager(Context(Settings(**full)), worker_id, GpuSettings(**full))
    return ThreadWorker(env, gpu=gpu, WORKER_ID=worker_id, **overrides)


def final(ctx, job_id, timeout=30.0):
    return wait_until(lambda: (j := ctx.store.get(job_id)) and j.status.is_terminal and j, timeout)


def events(tmp_path, job_id) -> list[str]:
    return [e for _, e in task_events(tmp_path / "tasks.log", job_id)]


def warm_up(tw) -> None:
    """Leave an idle instance with the worker's manager, as a finished job would."""
    gpu = tw.worker.gpu
    gpu.acquire("warm-up", CancelToken(), get_logger("test"))
    gpu.release("warm-up", None)


def bad_jobs(inputs: SampleServer) -> list[tuple[str, dict, str]]:
    """(type, params, the start of the job's error) for each kind of bad input."""
    good_audio, good_image = inputs.url("speech.wav"), inputs.url("portrait.jpg")
    missing, html = inputs.base + "/status/404", inputs.base + "/html"
    return [
        ("whisper", {"audio_url": missing}, f"Could not download audio_url {missing}: HTTP 404"),
        ("whisper", {"audio_url": html}, f"Could not download audio_url {html}: the server sent text/html"),
        ("whisper", {"audio_url": inputs.url("broken.mp3")}, f"audio_url {inputs.url('broken.mp3')} is not a readable"),
        ("csm", {"text": "Hello there.", "voice": "clone", "reference_audio_url": missing, "reference_text": "Hi"},
         f"Could not download reference_audio_url {missing}: HTTP 404"),
        ("portrait", {"image_url": inputs.url("speech.wav"), "audio_url": good_audio},
         f"image_url {inputs.url('speech.wav')} is not an image Pillow can read"),
        ("portrait", {"image_url": good_image, "audio_url": inputs.url("portrait.jpg")},
         f"audio_url {inputs.url('portrait.jpg')} has no audio track"),
        ("analyze", {"image_url": inputs.url("bomb.png")}, f"image_url {inputs.url('bomb.png')} was refused"),
        ("analyze", {"image_url": html}, f"Could not download image_url {html}: the server sent text/html"),
    ]


def run_all_failing(tw, jobs) -> None:
    for job_type, params, error in jobs:
        job = final(tw.ctx, submit(tw.ctx, job_type, params))
        assert job.status is JobStatus.FAILED, (job_type, params)
        assert job.error.startswith(error), job.error


def test_bad_inputs_cost_no_launch_and_keep_a_warm_instance(genv, c3_sim, inputs):
    with gpu_worker(genv, WORKER_TASKS=REAL_TASKS) as tw:
        jobs = bad_jobs(inputs)
        run_all_failing(tw, jobs)
        assert (c3_sim.ledger()["launch_requests"], c3_sim.ledger()["launches"]) == (0, 0)

        warm_up(tw)
        assert (c3_sim.ledger()["launches"], c3_sim.ledger()["running"]) == (1, 1)
        run_all_failing(tw, jobs)
        ledger = c3_sim.ledger()
        assert (ledger["launches"], ledger["stops"], ledger["running"]) == (1, 0, 1)


def test_only_a_fault_of_the_node_stops_its_instance(genv, c3_sim):
    with gpu_worker(genv) as tw:
        kept = final(tw.ctx, submit(tw.ctx, "csm", {"text": "fail:the task gave up on its input"}))
        assert kept.error == "the task gave up on its input"
        again = final(tw.ctx, submit(tw.ctx, "csm", {"text": "quick"}))
        assert again.status is JobStatus.SUCCESS
        ledger = c3_sim.ledger()
        assert (ledger["launches"], ledger["stops"], ledger["running"]) == (1, 0, 1)

        faulted = final(tw.ctx, submit(tw.ctx, "csm", {"text": "nodefail:CUDA error: device lost"}))
        assert faulted.error == "CUDA error: device lost; the instance was stopped"
        ledger = wait_until(lambda: (l := c3_sim.ledger())["stops"] == 1 and l, 10)
        assert (ledger["launches"], ledger["running"]) == (1, 0)


def test_client_cancel_keeps_the_instance(genv, c3_sim, tmp_path):
    with gpu_worker(genv) as tw:
        job_id = submit(tw.ctx, "csm", {"text": "sleep:30"})
        wait_until(lambda: "start" in events(tmp_path, job_id))
        service(tw.ctx).update(job_id, "anonymous", {"status": "cancelled"})
        wait_until(lambda: "cancelled" in events(tmp_path, job_id))
        after = final(tw.ctx, submit(tw.ctx, "csm", {"text": "quick"}))
        assert after.status is JobStatus.SUCCESS
        ledger = c3_sim.ledger()
        assert (ledger["launches"], ledger["stops"], ledger["running"]) == (1, 0, 1)


# -- a node that dies mid-call -----------------------------------------------------------

@pytest.fixture
def sim_with_apps(log_dir, request):
    """A simulated Comput3 whose nodes serve the real node apps (CSM, Whisper, ComfyUI, Ollama)."""
    from infra.local.simulator import SimulatorProcess

    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in request.node.name)
    sim = SimulatorProcess.start(log_path=log_dir / f"c3sim-{name}.log")
    yield sim
    sim.stop()


DYING_CALLS = {
    # params, the slowed app, the request it got when the node dies, the interrupted call
    "csm": ({"text": "Hello there."}, "csm", "request", "the CSM call"),
    "whisper": ({"audio_url": "speech.wav"}, "whisper", "request", "the Whisper call"),
    "portrait": ({"image_url": "portrait.jpg", "audio_url": "speech.wav"}, "comfyui", "prompt",
                 "the ComfyUI call GET /history/"),
    "analyze": ({"image_url": "portrait.jpg"}, "ollama", None, "the Ollama generate call"),
}


@pytest.mark.parametrize("job_type", list(DYING_CALLS))
def test_node_dying_mid_call_stops_the_instance_with_a_clear_error(stack_env, sim_with_apps, tmp_path, inputs,
                                                                   monkeypatch, job_type):
    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "true")
    params, app, event, during = DYING_CALLS[job_type]
    params = {k: inputs.url(v) if k.endswith("_url") else v for k, v in params.items()}
    sim = sim_with_apps
    sim.set_faults(node={app: "slow", "slow_seconds": 60})
    # The monitor checks rarely here: the interrupted call itself must report the death.
    env = {**stack_env, **GPU_FAST, **sim.worker_env(), "OUTPUT_DIR": str(tmp_path / "out"),
           "WORKER_TASKS": REAL_TASKS, "GPU_HEALTH_INTERVAL": "600", "GRADIO_POLL_INTERVAL": "0.1",
           "COMFYUI_POLL_INTERVAL": "0.1"}
    monkeypatch.setenv("GRADIO_POLL_INTERVAL", "0.1")
    monkeypatch.setenv("COMFYUI_POLL_INTERVAL", "0.1")
    with gpu_worker(env) as tw:
        job_id = submit(tw.ctx, job_type, {**params, "max_time": 120})
        ledger = wait_until(lambda: (l := sim.ledger())["launches"] == 1 and l, 30)
        workload, node = ledger["instances"][0]["workload"], ledger["instances"][0]["node"]
        wait_until(lambda: any(r.get("app") == app and event in (None, r.get("event"))
                               for r in sim.node(workload)["requests"]), 60)
        sim.node_action(workload, die=True)
        job = final(tw.ctx, job_id, 60)
        assert job.status is JobStatus.FAILED
        assert job.error.startswith(f"GPU node {node} stopped answering during {during}"), job.error
        assert job.error.endswith("; the instance was stopped"), job.error
        entry = wait_until(lambda: (e := sim.ledger()["instances"][0])["ended_by"] and e, 10)
        assert entry["ended_by"] == "stop"
