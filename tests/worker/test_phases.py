"""Where is my job: phases and progress (written by the worker, never slowing or failing
it), and the start webhook (durable, once) with webhook_events_filter."""

from __future__ import annotations

import json
import os
import signal
from datetime import datetime

import pytest
from chalice.test import Client

from chalicelib.api.routes import create_app
from chalicelib.context import Context
from chalicelib.jobs.models import JobStatus
from chalicelib.platform.settings import Settings
from infra.local.fault_proxy import Rule
from tests.support.fake_gpu_tasks import GPU_FAST
from tests.support.harness import (Handlers, ThreadWorker, final, log_events, settled, start_worker_process, submit,
                                   wait_until)
from tests.support.node_apps import inputs  # noqa: F401 - fixture
from tests.system.test_durability import children, via, wenv  # noqa: F401 - fixtures
from tests.worker.test_gpu_jobs import REAL_TASKS, gpu_worker

GPU_ORDER = ["queued", "downloading", "launching_gpu", "rendering", "uploading"]


def entered(view: dict) -> list[str]:
    """The phases of a status view, in the order they were entered."""
    return [name for name, _ in sorted(view["phases"].items(), key=lambda kv: datetime.fromisoformat(kv[1]))]


# -- phases and progress on the simulated node -----------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("job_type, params, app", [
    ("portrait", {"image_url": "portrait.jpg", "audio_url": "speech.wav"}, "comfyui"),
    ("csm", {"text": "Hello there."}, "csm"),
])
def test_a_gpu_job_reports_its_phases_in_order_and_progress_mid_render(stack_env, sim_with_apps, tmp_path,
                                                                       inputs, monkeypatch, job_type, params,
                                                                       app):
    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "true")
    monkeypatch.setenv("GRADIO_POLL_INTERVAL", "0.2")
    monkeypatch.setenv("COMFYUI_POLL_INTERVAL", "0.2")
    sim = sim_with_apps
    sim.set_faults(node={app: "slow", "slow_seconds": 6})
    params = {k: inputs.url(v) if k.endswith("_url") else v for k, v in params.items()}
    env = {**stack_env, **GPU_FAST, **sim.worker_env(), "OUTPUT_DIR": str(tmp_path / "out"),
           "WORKER_TASKS": REAL_TASKS, "GPU_HEALTH_INTERVAL": "600"}
    seen: list[dict] = []
    with gpu_worker(env) as tw:
        job_id = submit(tw.ctx, job_type, {**params, "max_time": 120})

        def mid_render() -> bool:
            view = tw.ctx.store.get(job_id).status_view()
            seen.append(view)
            return view.get("progress") is not None and 0 < view["progress"] < 1

        wait_until(mid_render, 60, interval=0.2)
        job = final(tw.ctx, job_id, 60)
    assert job.status is JobStatus.SUCCESS, job.error
    view = job.status_view()
    assert entered(view) == GPU_ORDER, view["phases"]
    assert "phase" not in view and "progress" not in view  # final, nothing owed: no phase
    running = [v["phase"] for v in seen if v["status"] == "running"]
    assert "rendering" in running and all(v["phase"] == "rendering" for v in seen if "progress" in v)


# -- phase writes never hold up or fail a job --------------------------------------------------
def test_throttled_phase_writes_are_dropped_and_the_job_succeeds(wenv, fault_proxy, tmp_path,
                                                                 children):  # noqa: F811
    ctx = Context(Settings(**wenv))
    throttle = fault_proxy.add(Rule(service="dynamodb", operation="UpdateItem", action="throttle", times=None,
                                    contains=":entered"))
    worker = start_worker_process({**wenv, **via(fault_proxy)}, tmp_path / "w.log")
    children.append(worker)
    job_id = submit(ctx, "csm", {"text": "quick"})
    job = wait_until(lambda: (j := ctx.store.get(job_id)).status.is_terminal and j, 30)
    assert job.status is JobStatus.SUCCESS, job.error
    assert throttle.hits >= 1
    assert job.phases == {"downloading": job.phases["downloading"]}  # only the claim's, every other dropped
    assert wait_until(lambda: log_events(tmp_path / "w.log", "job.phase_write_failed"), 10)


# -- the start webhook ---------------------------------------------------------------------------
def test_start_only_sends_the_start_webhook_and_no_final_one(wenv, receiver):
    with ThreadWorker(wenv) as tw:
        job_id = submit(tw.ctx, "csm", {"text": "quick", "notify_url": receiver.url,
                                        "webhook_events_filter": ["start"]})
        job = settled(tw.ctx, job_id, 30)
    assert job.status is JobStatus.SUCCESS and job.webhook is None and job.event_sent_at
    assert job.status_view()["start_webhook"] == {"status": "delivered", "attempts": 1}
    [hook] = receiver.for_job(job_id)
    assert hook.json() == {"id": job_id, "status": "running"}
    assert hook.headers["webhook-id"] == f"msg_{job_id}_running"


def test_start_and_completed_arrive_in_order_once_each(wenv, receiver):
    with ThreadWorker(wenv) as tw:
        job_id = submit(tw.ctx, "csm", {"text": "quick", "notify_url": receiver.url,
                                        "webhook_events_filter": ["start", "completed"]})
        job = settled(tw.ctx, job_id, 30)
    assert job.start_webhook == "delivered" and job.webhook == "delivered"
    assert [r.json()["status"] for r in receiver.for_job(job_id)] == ["running", "success"]


def test_start_webhook_survives_a_worker_killed_right_after_the_claim(wenv, fault_proxy, tmp_path, children,
                                                                      receiver):  # noqa: F811
    ctx = Context(Settings(**wenv))
    hold = fault_proxy.add(Rule(service="sqs", operation="SendMessage", action="stall", times=None,
                                contains=wenv["WEBHOOKS_QUEUE"]))
    worker = start_worker_process({**wenv, **via(fault_proxy)}, tmp_path / "w.log")
    children.append(worker)
    job_id = submit(ctx, "csm", {"text": "sleep:1", "notify_url": receiver.url,
                                 "webhook_events_filter": ["start", "completed"]})
    assert hold.stalled.wait(30), "the worker never queued the start webhook"
    assert ctx.store.get(job_id).start_webhook == "pending"  # the claim recorded it
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    fault_proxy.clear()
    with Handlers(ctx.settings), ThreadWorker(wenv, handlers=False):
        job = settled(ctx, job_id, timeout=45)
    assert job.status is JobStatus.SUCCESS and job.attempts == 2
    hooks = receiver.for_job(job_id)
    assert [r.json()["status"] for r in hooks] == ["running", "success"]
    assert job.start_webhook == "delivered" and job.start_webhook_attempts == 1


# -- validation ------------------------------------------------------------------------------
@pytest.mark.parametrize("events", [[], ["started"], "start", ["start", 3]])
def test_bad_webhook_events_filter_is_422_naming_the_field(stack_env, events):
    with Client(create_app(Context(Settings(**stack_env)))) as client:
        resp = client.http.post("/csm", headers={"Content-Type": "application/json"},
                                body=json.dumps({"text": "a", "webhook_events_filter": events}))
    assert resp.status_code == 422
    fields = [d["field"] for d in json.loads(resp.body)["details"]]
    assert fields and all(f.startswith("webhook_events_filter") for f in fields), fields
