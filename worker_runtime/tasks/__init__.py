"""Task registry: one implementation per job type."""

from __future__ import annotations

import importlib
from typing import Any

from chalicelib.models import JobType

from .base import Task


def load_tasks(spec: str, **deps: Any) -> dict[JobType, Task]:
    """Resolve ``module:attribute``; a callable attribute is called with ``deps``."""
    module_name, _, attr = spec.partition(":")
    target = getattr(importlib.import_module(module_name), attr)
    tasks = target(**deps) if callable(target) else target
    return {JobType(k): v for k, v in tasks.items()}


def default_tasks(**deps: Any) -> dict[JobType, Task]:
    raise NotImplementedError("the GPU task modules are added with the render-task issue")
