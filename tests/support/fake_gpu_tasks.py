"""A GPU task for the GPU tests, and the short GPU timings they run with.

The csm task first checks the rented node through its Node handle (GET {node}/ with the
key, as the real tasks reach the node's apps), records which workload it ran on, then
runs the same tiny script as tests.support.fake_tasks (``sleep:S``, ``fail:msg``, ...);
``nodeget:/path`` GETs that path of the node and lets requests' HTTPError (naming the URL) out."""

from __future__ import annotations

import os

import requests

from worker_runtime.tasks.base import TaskContext, TaskError, TaskResult

from .fake_tasks import ScriptTask, TextTask, record

# Seconds instead of the spec's minutes; each test overrides what it exercises.
GPU_FAST = {
    "WORKER_TASKS": "tests.support.fake_gpu_tasks:fake_gpu_tasks",
    "GPU_BOOT_POLL": "0.05",
    "GPU_CAPACITY_POLL": "0.2",
    "GPU_HEALTH_INTERVAL": "0.5",
    "GPU_HEALTH_ATTEMPTS": "3",
    "GPU_HEALTH_RETRY_DELAY": "0.1",
    "GPU_HEALTH_TIMEOUT": "2",
    "C3_LAUNCH_RETRY_DELAYS": "0.05,0.1,0.2",
    "C3_STOP_RETRY_DELAYS": "0.1",
    "C3_REQUEST_TIMEOUT": "5",
    "C3_LAUNCH_TIMEOUT": "5",
    "GPU_HEARTBEAT_INTERVAL": "0.5",
    "GPU_OWNER_GRACE": "3",
}


class NodeScriptTask(ScriptTask):
    needs_gpu = True

    def run(self, ctx: TaskContext) -> TaskResult:
        node = ctx.node
        if node is None:
            raise TaskError("no GPU node was handed to a needs_gpu task")
        resp = requests.get(f"{node.base_url}/", headers=node.headers, timeout=5)
        if resp.status_code != 200:
            raise TaskError(f"node {node.name} answered HTTP {resp.status_code}")
        record(ctx.job.id, f"node={node.workload}")
        record(ctx.job.id, f"pid={os.getpid()}")  # the process the step runs in
        command, _, path = (getattr(ctx.request, "text", None) or "").partition(":")
        if command == "nodeget":  # a library error naming the node's URL, let through (a task's bug)
            requests.get(f"{node.base_url}{path}", headers=node.headers, timeout=5).raise_for_status()
        return super().run(ctx)


def fake_gpu_tasks(**_: object) -> dict[str, object]:
    return {"csm": NodeScriptTask(), "whisper": TextTask()}
