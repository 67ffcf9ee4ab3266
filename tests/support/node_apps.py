"""The simulated node apps served for task tests, and TaskContext helpers.

One uvicorn server per test process (FastAPI + ``mount_all``, on 127.0.0.1 and a free
port) is started on first use; each test gets it with fresh ``requests`` and ``faults``.
``SimNodeState`` stands in for the simulator's NodeState (same fields)."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import uvicorn
from fastapi import FastAPI

from chalicelib.jobs.models import JobStatus, JobType, parse_job_request
from chalicelib.jobs.record import Job
from chalicelib.platform.logs import get_logger
from infra.local.simulator.apps import mount_all
from worker_runtime.cancel import CancelToken
from worker_runtime.node import Node, NodeUrls
from worker_runtime.tasks.base import TaskContext

from .procs import free_port

API_KEY = "sim-node-key"


@dataclass
class SimNodeState:
    name: str
    workload: str = "w-sim"
    api_key: str = API_KEY
    faults: dict[str, Any] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def events(self, app: str, event: str | None = None) -> list[dict[str, Any]]:
        return [r for r in list(self.requests) if r["app"] == app and (event is None or r["event"] == event)]


@dataclass
class SimNode:
    state: SimNodeState
    node: Node
    workdir: Path

    @property
    def base(self) -> str:
        return self.node.base_url


_lock = threading.Lock()
_shared: SimNode | None = None


def shared_node(tmp_root: Path) -> SimNode:
    """Start the served apps once per test process; later calls return the same node."""
    global _shared
    with _lock:
        if _shared is None:
            port = free_port()
            state = SimNodeState(name=f"127.0.0.1:{port}")
            app = FastAPI()
            workdir = mount_all(app, state, tmp_root / "sim-node")
            server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                   lifespan="on"))
            threading.Thread(target=server.run, daemon=True, name="sim-node").start()
            deadline = time.time() + 30
            while not server.started:
                if time.time() > deadline:
                    raise RuntimeError("simulated node server did not start")
                time.sleep(0.02)
            urls = NodeUrls(node="http://{node}", comfyui="http://{node}/comfyui", ollama="http://{node}/ollama")
            _shared = SimNode(state, Node(workload=state.workload, name=state.name, api_key=API_KEY, urls=urls),
                              workdir)
        _shared.state.faults.clear()
        _shared.state.requests.clear()
        return _shared


def make_context(job_type: str, params: dict[str, Any], output_dir: Path, node: Node | None,
                 max_time: int = 600) -> TaskContext:
    """A TaskContext for a job that was never stored: enough to drive a task directly."""
    now = time.time()
    job_id = str(uuid.uuid4())
    job = Job(id=job_id, type=JobType(job_type), params=params, status=JobStatus.RUNNING, owner="test",
              created_at=now, complete_by=now + 3600, max_time=max_time, expires_at=int(now) + 86400)
    output_dir.mkdir(parents=True, exist_ok=True)
    return TaskContext(job=job, request=parse_job_request(JobType(job_type), params), output_dir=output_dir,
                       cancel=CancelToken(), log=get_logger("c3.test.task", job_id=job_id), node=node)


class NoLease:
    """The supervisor's lease for a job that lives in no store: renewing always works."""

    def renew(self) -> None:
        pass


def run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


_samples: Any = None


def shared_samples(tmp_root: Path) -> Any:
    """Sample inputs, made and served once per test process."""
    global _samples
    from . import samples

    with _lock:
        if _samples is None:
            files = samples.make_samples(tmp_root / "samples")
            _samples = (samples.serve(tmp_root / "samples"), files)
        return _samples


@pytest.fixture
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimNode:
    """The served node apps, with no faults and an empty request record."""
    return shared_node(tmp_path_factory.getbasetemp())


@pytest.fixture
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The sample server (``.url(name)``, ``.base``); its files are in ``.root``."""
    return shared_samples(tmp_path_factory.getbasetemp())[0]


def fast_settings(**overrides: Any) -> Any:
    from worker_runtime.tasks.settings import TaskSettings

    values = {"ALLOW_PRIVATE_URLS": True, "GRADIO_POLL_INTERVAL": 0.05, "COMFYUI_POLL_INTERVAL": 0.05,
              "COMFYUI_READY_TIMEOUT": 5, "NODE_REQUEST_TIMEOUT": 10, "DOWNLOAD_TIMEOUT": 10}
    values.update(overrides)
    return TaskSettings(**values)


def task_for(job_type: str, **overrides: Any) -> Any:
    """The production task for ``job_type`` with fast test settings."""
    from worker_runtime.tasks import default_tasks

    return default_tasks(task_settings=fast_settings(**overrides))[JobType(job_type)]


def supervise(task: Any, ctx: TaskContext) -> Any:
    """Run ``task`` under the worker's Supervisor (max_time = ctx.job.max_time seconds)."""
    from worker_runtime.supervisor import Supervisor

    supervisor = Supervisor(heartbeat_interval=0.2, max_render_time=1800)
    return supervisor.run(task, ctx, NoLease(), threading.Event(), 1.0, ctx.log)
