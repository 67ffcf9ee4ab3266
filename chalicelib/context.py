"""Builds the shared objects (clients, store, queue, results) once per process."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

from chalicelib.fleet.beacons import WorkerBeacons
from chalicelib.fleet.idle import TrafficLog
from chalicelib.fleet.registry import GpuRegistry
from chalicelib.jobs.lanes import NORMAL, LaneQueues
from chalicelib.jobs.links import ResultLinks
from chalicelib.jobs.outbox import Outbox
from chalicelib.jobs.queries import JobQueries
from chalicelib.jobs.results import ResultStore
from chalicelib.jobs.stats import Stats
from chalicelib.jobs.store import JobStore
from chalicelib.jobs.usage import UsageBook
from chalicelib.platform import aws
from chalicelib.platform.logs import get_logger
from chalicelib.platform.queue import JobQueue, Queue
from chalicelib.platform.settings import Settings, get_settings

log = get_logger("c3.context")


@dataclass
class Context:
    settings: Settings
    clock: Callable[[], float] = time.time

    @cached_property
    def dynamodb(self):
        return aws.client("dynamodb", self.settings.aws_region)

    @cached_property
    def sqs(self):
        return aws.client("sqs", self.settings.aws_region)

    @cached_property
    def s3(self):
        return aws.client("s3", self.settings.aws_region)

    @cached_property
    def store(self) -> JobStore:
        return JobStore(self.dynamodb, self.settings.jobs_table, self.clock, self.settings.outbox_grace,
                        queued_resend=self.settings.outbox_queued_resend, stats=self.stats)

    @cached_property
    def stats(self) -> Stats:
        return Stats(self.dynamodb, self.settings.stats_table, self.clock)

    @cached_property
    def usage(self) -> UsageBook:
        return UsageBook(self.dynamodb, self.settings.jobs_table, self.clock)

    @cached_property
    def jobs_queue(self) -> JobQueue:
        return JobQueue(self.sqs, self.settings.jobs_queue)

    @cached_property
    def lanes(self) -> LaneQueues:
        """The job queues, one per priority lane (JOBS_QUEUE is the normal lane)."""
        return LaneQueues({lane: self.jobs_queue if lane == NORMAL else JobQueue(self.sqs, name)
                           for lane, name in self.settings.lane_queues.items()})

    @cached_property
    def webhooks_queue(self) -> JobQueue:
        return JobQueue(self.sqs, self.settings.webhooks_queue)

    @cached_property
    def queries(self) -> JobQueries:
        return JobQueries(self.dynamodb, self.settings.jobs_table, self.clock,
                          low_max_wait=self.settings.low_priority_max_wait)

    @cached_property
    def registry(self) -> GpuRegistry:
        return GpuRegistry(self.dynamodb, self.settings.gpu_table, self.clock)

    @cached_property
    def beacons(self) -> WorkerBeacons:
        return WorkerBeacons(self.dynamodb, self.settings.gpu_table, self.clock)

    @cached_property
    def traffic(self) -> TrafficLog:
        """The GPU arrivals and launch times the adaptive idle policy learns from."""
        return TrafficLog(self.dynamodb, self.settings.gpu_table)

    @cached_property
    def links(self) -> ResultLinks | None:
        """Result links, when RESULT_LINK_SECRET signs them (never the webhook secret)."""
        secret = self.settings.link_secret
        if not secret:
            log.warning("result_links.disabled", reason="RESULT_LINK_SECRET is not set: webhooks and "
                        "GET /result carry no result_link, GET /results/{id} answers 404")
            return None
        return ResultLinks(secret, self.settings.public_api_url, self.settings.presign_expires, self.clock)

    @cached_property
    def outbox(self) -> Outbox:
        return Outbox(self.jobs_queue, self.webhooks_queue, self.lanes, self.clock,
                      self.settings.low_priority_max_wait)

    @cached_property
    def dlq(self) -> Queue:
        return Queue(self.sqs, self.settings.jobs_dlq)

    @cached_property
    def results(self) -> ResultStore:
        s = self.settings
        signer = aws.client("s3", s.aws_region, s.s3_public_endpoint) if s.s3_public_endpoint else None
        return ResultStore(self.s3, s.results_bucket, s.presign_expires, signer)


def default_context() -> Context:
    return Context(get_settings())
