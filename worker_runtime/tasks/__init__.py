"""Task registry: one implementation per job type."""

from __future__ import annotations

import importlib
from typing import Any

from chalicelib.jobs.models import JobType

from .base import Task


def load_tasks(spec: str, **deps: Any) -> dict[JobType, Task]:
    """Resolve ``module:attribute``; a callable attribute is called with ``deps``."""
    module_name, _, attr = spec.partition(":")
    target = getattr(importlib.import_module(module_name), attr)
    tasks = target(**deps) if callable(target) else target
    return {JobType(k): v for k, v in tasks.items()}


def default_tasks(settings: Any = None, task_settings: Any = None, **_: Any) -> dict[JobType, Task]:
    """The four render tasks, sharing one downloader. ``settings`` (WorkerSettings) is
    accepted for symmetry with other task factories; the tasks read TaskSettings."""
    # Imported here so that loading another task set never imports gradio_client or av.
    from ..downloads import Downloader
    from .analyze import AnalyzeTask
    from .csm import CsmTask
    from .portrait import PortraitTask
    from .settings import TaskSettings
    from .whisper import WhisperTask

    ts = task_settings or TaskSettings()
    downloader = Downloader(ts.max_download_bytes, ts.download_timeout, ts.download_max_redirects,
                            allow_private=ts.allow_private_urls)
    return {
        JobType.CSM: CsmTask(ts, downloader),
        JobType.WHISPER: WhisperTask(ts, downloader),
        JobType.PORTRAIT: PortraitTask(ts, downloader),
        JobType.ANALYZE: AnalyzeTask(ts, downloader),
    }
