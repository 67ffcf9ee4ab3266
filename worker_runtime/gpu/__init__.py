"""Comput3 GPU instances for the worker: settings, registry, manager."""

from __future__ import annotations

from chalicelib.context import Context
from chalicelib.fleet.pool import read_demand
from chalicelib.fleet.registry import GpuRegistry

from .manager import GpuError, GpuManager
from .settings import GpuSettings
from .task import GpuTask

__all__ = ["GpuError", "GpuManager", "GpuSettings", "GpuTask", "build_gpu_manager"]


def build_gpu_manager(ctx: Context, worker_id: str, settings: GpuSettings | None = None) -> GpuManager:
    s = settings or GpuSettings()
    client = s.client()
    registry = GpuRegistry(ctx.dynamodb, ctx.settings.gpu_table, ctx.clock)
    return GpuManager(s, client, registry, worker_id, clock=ctx.clock,
                      demand=lambda: read_demand(ctx.lanes, ctx.beacons, ctx.queries),  # every lane
                      traffic=ctx.traffic)
