"""What a job costs in GPUs: bad inputs cost none, only faults of the node stop an
instance, node faults read clearly. The production tasks run in the worker loop against
the simulated Comput3; the simulator's ledger (launches, stops) is the evidence."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from chalicelib.context import Context
from chalicelib.jobs.models import JobStatus
from chalicelib.platform.logs import get_logger
from chalicelib.platform.settings import Settings
from tests.support import samples
from tests.support.fake_gpu_tasks import GPU_FAST
from tests.support.harness import (FAST, ThreadWorker, final, service, start_worker_process, submit, task_events,
                                   wait_until)
from tests.support.node_apps import inputs  # noqa: F401 - fixture
from tests.support.samples import SampleServer
from worker_runtime.cancel import CancelToken
from worker_runtime.gpu import GpuSettings, build_gpu_manager

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
         f"audio_url {inputs.url('portrait.jpg')} is not a readable audio or video file: not a format allowed (WAV, MP3, FLAC, Ogg, AAC, MP4/MOV, Matroska/WebM)"),
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
        # The node's answer is the operators' ("job.node_fault" in the log); the tenant reads the rule.
        assert faulted.error == "GPU node error during the job's work on the GPU node; the instance was stopped"
        ledger = wait_until(lambda: (l := c3_sim.ledger())["stops"] == 1 and l, 10)
        assert (ledger["launches"], ledger["running"]) == (1, 0)


def test_a_library_error_naming_the_node_reaches_the_tenant_without_it(genv, c3_sim, caplog):
    """A task that lets a library's exception out (requests' HTTPError names the node's URL):
    the job's error keeps the exception's sense, the node's address goes to the log only."""
    with gpu_worker(genv) as tw:
        job_id = submit(tw.ctx, "csm", {"text": "nodeget:/no-such-page"})
        job = final(tw.ctx, job_id)
        [instance] = c3_sim.ledger()["instances"]
        workload, node = instance["workload"], instance["node"]
        assert job.error == "Task failed: HTTPError: 404 Client Error: Not Found for url: <GPU node>"
        assert_names_no_node(job.error, workload, node)
        logged = node_fault_logged(caplog, job_id)
        assert logged["detail"].endswith(f"Not Found for url: http://{node}/no-such-page"), logged


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


def test_max_time_the_node_honoured_keeps_the_instance(genv, c3_sim, tmp_path):
    with gpu_worker(genv, MAX_RENDER_TIME="2") as tw:
        job_id = submit(tw.ctx, "csm", {"text": "sleep:30"})
        assert final(tw.ctx, job_id).error == "Job exceeded max_time of 2 seconds"
        assert "cancelled" in events(tmp_path, job_id)  # it stopped when asked: not killed
        assert final(tw.ctx, submit(tw.ctx, "csm", {"text": "quick"})).status is JobStatus.SUCCESS
        ledger = c3_sim.ledger()
        assert (ledger["launches"], ledger["stops"], ledger["running"]) == (1, 0, 1)


# -- a node that dies mid-call -----------------------------------------------------------

DYING_CALLS = {
    # params, the slowed app, the request it got when the node dies, the interrupted call
    "csm": ({"text": "Hello there."}, "csm", "request", "the CSM call"),
    "whisper": ({"audio_url": "speech.wav"}, "whisper", "request", "the Whisper call"),
    "portrait": ({"image_url": "portrait.jpg", "audio_url": "speech.wav"}, "comfyui", "prompt",
                 "the ComfyUI call GET /history/"),
    "analyze": ({"image_url": "portrait.jpg"}, "ollama", None, "the Ollama generate call"),
}


def node_fault_logged(caplog, job_id: str) -> dict:
    """The worker's "job.node_fault" line for the job: its fields."""
    lines = [r.fields for r in caplog.records
             if r.getMessage() == "job.node_fault" and getattr(r, "fields", {}).get("job_id") == job_id]
    assert len(lines) == 1, lines
    return lines[0]


def assert_names_no_node(text: str, workload: str, node: str) -> None:
    """Nothing in ``text`` (what a tenant reads) names the node: its host:port, URL, workload id."""
    assert workload not in text and node not in text and "127.0.0.1" not in text, text
    assert "http://" not in text and "host=" not in text, text


@pytest.mark.parametrize("job_type", list(DYING_CALLS))
def test_node_dying_mid_call_stops_the_instance_with_a_clear_error(stack_env, sim_with_apps, tmp_path, inputs,
                                                                   monkeypatch, caplog, job_type):
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
        # The tenant reads the step and the rule, never the node (issue 21) ...
        assert job.error.startswith(f"The GPU node stopped answering during {during}"), job.error
        assert job.error.endswith("; the instance was stopped"), job.error
        assert_names_no_node(job.error, workload, node)
        # ... the operators' log line for the job has the node and the full text.
        logged = node_fault_logged(caplog, job_id)
        assert logged["detail"].startswith(f"GPU node {node} stopped answering during {during}"), logged
        assert (logged["workload"], logged["node"], logged["error"]) == (workload, node, job.error)
        entry = wait_until(lambda: (e := sim.ledger()["instances"][0])["ended_by"] and e, 10)
        assert entry["ended_by"] == "stop"


def test_an_app_error_on_the_node_reads_without_its_url(stack_env, sim_with_apps, tmp_path, inputs, monkeypatch,
                                                        caplog):
    """Ollama answers HTTP 500: the worker's message names Ollama's URL on the node; the
    job's error names the step only, and the log keeps the URL and the answer."""
    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "true")
    sim = sim_with_apps
    sim.set_faults(node={"ollama": "error"})
    env = {**stack_env, **GPU_FAST, **sim.worker_env(), "OUTPUT_DIR": str(tmp_path / "out"),
           "WORKER_TASKS": REAL_TASKS}
    with gpu_worker(env) as tw:
        job_id = submit(tw.ctx, "analyze", {"image_url": inputs.url("portrait.jpg")})
        job = final(tw.ctx, job_id, 60)
        [instance] = sim.ledger()["instances"]
        workload, node = instance["workload"], instance["node"]
        assert job.status is JobStatus.FAILED
        assert job.error == "GPU node error during the Ollama generate call; the instance was stopped"
        assert_names_no_node(job.error, workload, node)
        logged = node_fault_logged(caplog, job_id)
        assert logged["detail"].startswith(f"Ollama at http://{node}/ollama/api/generate answered HTTP 500"), logged
        assert wait_until(lambda: sim.ledger()["instances"][0]["ended_by"], 10) == "stop"


# -- tasks that cannot be stopped, inputs that would not fit ------------------------------

def alive(pid: int) -> bool:
    """Running (a zombie left for a reaper that never comes counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_task_ignoring_its_cancel_is_killed_and_the_next_job_gets_a_watched_healthy_instance(genv, c3_sim,
                                                                                              tmp_path):
    with gpu_worker(genv, MAX_RENDER_TIME="4", TASK_WIND_DOWN="1") as tw:
        stuck = submit(tw.ctx, "csm", {"text": "hang:120"})
        [child] = wait_until(lambda: [int(e[4:]) for e in events(tmp_path, stuck) if e.startswith("pid=")])
        assert child != os.getpid() and alive(child)  # the step runs in its own process
        job = final(tw.ctx, stuck)
        assert job.error == ("Job exceeded max_time of 4 seconds; the task did not stop within 1 s and was "
                             "killed; the instance was stopped")
        wait_until(lambda: not alive(child), 10)  # killed, not abandoned
        # It might still be working on the node: that instance is stopped, not handed on.
        first = wait_until(lambda: (i := c3_sim.ledger()["instances"][0])["ended_by"] and i, 10)
        assert first["ended_by"] == "stop"

        # The next job gets a fresh, healthy instance, and its own monitor watches it.
        after = submit(tw.ctx, "csm", {"text": "sleep:30"})
        [workload] = wait_until(lambda: [e[5:] for e in events(tmp_path, after) if e.startswith("node=")], 20)
        assert workload != first["workload"]
        c3_sim.node_action(workload, die=True)
        job = final(tw.ctx, after)
        assert job.error == ("The GPU node failed its health check during the job (its health endpoint did not "
                             "answer 200 OK, 3 attempts); the instance was stopped"), job.error
        assert workload not in job.error
        ledger = wait_until(lambda: (l := c3_sim.ledger())["running"] == 0 and l, 10)
        assert (ledger["launches"], ledger["stops"]) == (2, 2)


def test_a_killed_worker_leaves_no_task_process_behind(stack_env, c3_sim, tmp_path, workers):
    env = {**stack_env, **GPU_FAST, **c3_sim.worker_env(), "OUTPUT_DIR": str(tmp_path / "out"),
           "FAKE_TASK_LOG": str(tmp_path / "tasks.log"), "TASK_WIND_DOWN": "1"}
    ctx = Context(Settings(**env))
    worker = start_worker_process(env, tmp_path / "worker.log")
    workers.append(worker)
    job_id = submit(ctx, "csm", {"text": "hang:120"})  # ignores its cancel, too
    [child] = wait_until(lambda: [int(e[4:]) for e in events(tmp_path, job_id) if e.startswith("pid=")], 30)
    worker.kill()
    worker.wait()
    # The child notices its worker is gone, cancels, and leaves after TASK_WIND_DOWN.
    wait_until(lambda: not alive(child), 10)


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of a process (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.fixture
def huge_png(tmp_path):
    """A PNG of 12000x12000 (144 Mpx) that is ~32 KB on the wire, served over HTTP."""
    from PIL import Image

    folder = tmp_path / "huge"
    folder.mkdir()
    Image.new("1", (12000, 12000), 1).save(folder / "huge.png", optimize=True)
    assert (folder / "huge.png").stat().st_size < 64 * 1024
    server = samples.serve(folder)
    yield server.url("huge.png")
    server.stop()


@pytest.mark.parametrize("limits, error", [
    ({}, "was refused: 12000x12000 is 144000000 pixels, over the limit of 40000000 pixels (MAX_IMAGE_PIXELS)"),
    # Past the header check (a pixel limit set too high), the child's memory cap stops the decode.
    ({"MAX_IMAGE_PIXELS": "500000000", "TASK_MEMORY_LIMIT_MB": "400"}, "needs more memory to "),
])
def test_huge_image_fails_naming_image_url_and_the_worker_stays_small(stack_env, c3_sim, tmp_path, inputs,
                                                                      huge_png, workers, limits, error):
    env = {**stack_env, **GPU_FAST, **c3_sim.worker_env(), "OUTPUT_DIR": str(tmp_path / "out"),
           "WORKER_TASKS": REAL_TASKS, "ALLOW_PRIVATE_URLS": "true", **limits}
    ctx = Context(Settings(**env))
    log = tmp_path / "worker.log"
    worker = start_worker_process(env, log)
    workers.append(worker)
    wait_until(lambda: log.exists() and "worker.started" in log.read_text(), 30)
    before = vm_hwm_kib(worker.pid)
    for job_type, params in (("analyze", {"image_url": huge_png}),
                             ("portrait", {"image_url": huge_png, "audio_url": inputs.url("speech.wav")})):
        job = final(ctx, submit(ctx, job_type, params), 60)
        assert job.status is JobStatus.FAILED
        assert job.error.startswith(f"image_url {huge_png} {error}"), job.error
    growth_mib = (vm_hwm_kib(worker.pid) - before) / 1024
    assert growth_mib < 100, f"the worker's peak RSS grew by {growth_mib:.0f} MiB"
    assert worker.poll() is None  # alive
    assert c3_sim.ledger()["launch_requests"] == 0
