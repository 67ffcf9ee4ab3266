"""A backlog is not a stranded job: queued jobs whose message was sent wait in the queue
without copies, a job whose send was really lost still runs within OUTBOX_GRACE + one
reconcile interval, and queue_position follows submission order. Against the moto server
over HTTP, with an injected clock driving the reconciler through a simulated hour."""

from __future__ import annotations

import pytest
from botocore.exceptions import EndpointConnectionError

from chalicelib.context import Context
from chalicelib.jobs.service import JobService
from chalicelib.jobs.models import JobType
from chalicelib.jobs.outbox import Reconciler
from chalicelib.platform.settings import Settings

pytestmark = pytest.mark.integration

RECONCILE_EVERY = 60.0  # the schedule's Rate(1 minute)


class Clock:
    def __init__(self, start: float = 1_800_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def backlog(stack_env):
    clock = Clock()
    ctx = Context(Settings(**stack_env), clock=clock)
    service = JobService(ctx.store, ctx.outbox, ctx.results, clock, queries=ctx.queries)
    reconciler = Reconciler(ctx.store, ctx.outbox, clock, ctx.settings.outbox_grace,
                            ctx.settings.outbox_max_backoff)
    return ctx, clock, service, reconciler


def messages(ctx: Context) -> int:
    counts = ctx.jobs_queue.depth()
    return counts["messages"] + counts["in_flight"] + counts["delayed"]


def lose_sends(ctx: Context) -> list[bool]:
    """While the returned switch is [True], every send to the jobs queue fails (over the wire)."""
    switch = [False]
    url = ctx.jobs_queue.url

    def down(params, **_):
        if switch[0] and params.get("QueueUrl") == url:
            raise EndpointConnectionError(endpoint_url=url)

    ctx.sqs.meta.events.register("before-parameter-build.sqs.SendMessage", down)
    return switch


def submit(service: JobService, clock: Clock, n: int) -> str:
    clock.now += 1
    return service.submit(JobType.CSM, {"text": f"job {n}"}, "anonymous")[0].id


def test_an_hour_of_backlog_adds_no_copies_and_a_lost_send_still_runs_in_time(backlog):
    ctx, clock, service, reconciler = backlog
    lost = lose_sends(ctx)
    ids = [submit(service, clock, n) for n in range(19)]
    lost[0] = True
    stranded = submit(service, clock, 19)  # accepted, but its message never reached the queue
    lost[0] = False
    submitted_at = clock.now
    assert messages(ctx) == 19
    resent_at = None
    for _ in range(60):  # one simulated hour of reconcile passes, no worker anywhere
        clock.now += RECONCILE_EVERY
        report = reconciler.run_once()
        if report.resent["dispatch"] and resent_at is None:
            resent_at = clock.now
    # Only the lost message was sent again, within OUTBOX_GRACE + one reconcile interval.
    assert resent_at is not None
    assert resent_at - submitted_at <= ctx.settings.outbox_grace + RECONCILE_EVERY
    assert messages(ctx) == 20  # the target: at most 20 + 2
    bodies = []
    while got := ctx.jobs_queue.receive(wait_seconds=0, visibility=60, max_messages=10):
        bodies += [m.job_id() for m in got]
    assert sorted(bodies) == sorted([*ids, stranded])
    assert ctx.store.get(stranded).outbox_sends == 1
    assert {ctx.store.get(i).outbox_sends for i in ids} == {0}


def test_a_message_that_may_outlive_the_queue_is_sent_again(backlog):
    """A job queued past OUTBOX_QUEUED_RESEND (below the queue's 4-day retention) is
    owed a copy: its first message may be gone."""
    ctx, clock, service, reconciler = backlog
    job_id = submit(service, clock, 0)
    clock.now += ctx.settings.outbox_queued_resend - 120
    assert reconciler.run_once().resent["dispatch"] == 0
    clock.now += RECONCILE_EVERY * 3
    assert reconciler.run_once().resent["dispatch"] == 1
    assert reconciler.run_once().resent["dispatch"] == 0
    job = ctx.store.get(job_id)
    assert job.outbox_at == job.created_at + 2 * ctx.settings.outbox_queued_resend


def test_queue_position_follows_submission_order_after_a_resend(backlog):
    ctx, clock, service, reconciler = backlog
    lost = lose_sends(ctx)
    lost[0] = True
    first = submit(service, clock, 0)  # its send is lost: the reconciler sends it later
    lost[0] = False
    rest = [submit(service, clock, n) for n in range(1, 5)]
    clock.now += ctx.settings.outbox_grace + RECONCILE_EVERY
    assert reconciler.run_once().resent["dispatch"] == 1
    positions = [service.view(ctx.store.get(job_id))["queue_position"] for job_id in [first, *rest]]
    assert positions == [0, 1, 2, 3, 4]
