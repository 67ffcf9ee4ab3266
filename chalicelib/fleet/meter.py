"""GPU spend as metrics: billed and idle seconds, counted from the registry, each second once.

A record's ``metered_at`` says up to when its rental is counted. A reap pass (the
scheduled ``gpu_reaper``, every minute) moves it forward for every rented instance with a
conditional write, and only the pass whose write lands emits the seconds in between; the
stop that deletes a record emits what is left (from the deleted item itself, so a pass
that metered meanwhile is never counted twice). So an instance that nobody stops still
shows in GpuBilledSeconds within a minute or two, which is what the spend alarm needs.

Idle seconds are the part of an interval the instance spent running with no job on it,
counted from its last job's end (``last_used``) when it is idle at metering time.
"""

from __future__ import annotations

from chalicelib.fleet.registry import LAUNCHING, GpuRecord, GpuRegistry
from chalicelib.platform.metrics import METRICS, Metrics

MIN_INTERVAL = 1.0  # seconds; shorter intervals wait for the next pass


def counted_from(record: GpuRecord) -> float:
    return record.metered_at or record.launched_at or record.created_at


def idle_seconds(record: GpuRecord, start: float, end: float) -> float:
    if record.busy or record.workload is None:
        return 0.0
    return max(0.0, end - max(start, record.last_used or start))


def meter_pass(registry: GpuRegistry, records: list[GpuRecord], now: float, metrics: Metrics = METRICS) -> float:
    """Count every rented instance's seconds up to ``now``; returns the billed seconds emitted."""
    total = 0.0
    for record in records:
        if record.state == LAUNCHING or record.workload is None:
            continue  # no rental known yet: counted from launched_at once recorded
        start = counted_from(record)
        if now - start < MIN_INTERVAL or not registry.meter(record, now):
            continue
        metrics.gpu_billed(now - start, idle_seconds(record, start, now), workload=record.workload)
        total += now - start
    return total


def meter_stopped(deleted: GpuRecord, now: float, metrics: Metrics = METRICS) -> None:
    """The rest of a stopped instance's rental (``deleted``: the item as it was deleted)."""
    if deleted.workload is None:
        return
    start = counted_from(deleted)
    metrics.gpu_billed(max(0.0, now - start), idle_seconds(deleted, start, now), workload=deleted.workload,
                       stopped=True)


def meter_unrecorded(workload: str, since: float, now: float, metrics: Metrics = METRICS) -> None:
    """An instance no record knew (its launcher died before recording it), stopped by a
    sweep: billed from its launch's intent to now, all of it idle."""
    billed = max(0.0, now - since)
    metrics.gpu_billed(billed, billed, workload=workload, stopped=True, unrecorded=True)
