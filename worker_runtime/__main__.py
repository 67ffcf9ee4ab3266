"""``python -m worker_runtime``: build the worker from the environment and run it."""

from __future__ import annotations

import signal
import sys
from typing import Any

from chalicelib.context import Context
from chalicelib.platform.logs import configure, get_logger

from .direct_delivery import build_direct_delivery
from .settings import get_worker_settings
from .tasks import load_tasks
from .worker import Shutdown, Worker


def build_worker() -> Worker:
    settings = get_worker_settings()
    configure(settings.log_level)
    ctx = Context(settings)
    tasks = load_tasks(settings.tasks, settings=settings)
    gpu = None
    if any(getattr(task, "needs_gpu", False) for task in tasks.values()):
        from .gpu import build_gpu_manager
        from .isolation import warm_up
        gpu = build_gpu_manager(ctx, settings.worker_id)
        warm_up(sorted({type(task).__module__ for task in tasks.values()}))  # GPU tasks' steps run in children
    delivery = build_direct_delivery(ctx) if settings.webhook_direct else None
    return Worker(ctx, settings, tasks, gpu=gpu, delivery=delivery)


def install_signal_handlers(worker: Worker) -> None:
    log = get_logger("c3.worker")

    def handle(signum: int, _frame: Any) -> None:
        log.info("worker.signal", signal=signal.Signals(signum).name,
                 reason="stop receiving; the running job gets the shutdown grace")
        worker.request_stop()
        if worker.idle.is_set():
            raise Shutdown()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def main() -> int:
    worker = build_worker()
    install_signal_handlers(worker)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
