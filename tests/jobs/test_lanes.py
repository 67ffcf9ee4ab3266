"""Priority lanes over the real queues (a moto server over HTTP): the take order, the
promotion of an old low job, queue positions in take order, the receiver's parallel long
polls, intake's priority and /health's depth per lane."""

from __future__ import annotations

import json
import threading

import pytest
from chalice.test import Client

from chalicelib.api.routes import create_app
from chalicelib.context import Context
from chalicelib.jobs.lanes import LANES
from chalicelib.jobs.models import JobStatus, JobType
from chalicelib.platform.settings import Settings
from tests.support.harness import ThreadWorker, service, wait_until
from tests.support.sqs_events import depth
from worker_runtime.receiver import LaneReceiver

pytestmark = pytest.mark.integration


def submit(ctx: Context, text: str, priority: str = "normal") -> str:
    job, _ = service(ctx).submit(JobType.CSM, {"text": text, "priority": priority}, "anonymous")
    return job.id


def started(ctx: Context, job_id: str) -> float:
    job = wait_until(lambda: (j := ctx.store.get(job_id)).status is JobStatus.SUCCESS and j, 30)
    return job.first_started_at


def test_with_the_worker_busy_a_high_job_starts_before_five_earlier_normal_ones(stack_env):
    with ThreadWorker(stack_env, handlers=False) as tw:
        busy = submit(tw.ctx, "sleep:1.5")
        wait_until(lambda: tw.ctx.store.get(busy).status is JobStatus.RUNNING)
        normal = [submit(tw.ctx, f"n{i}") for i in range(5)]
        high = submit(tw.ctx, "h", "high")
        assert tw.ctx.store.get(high).priority == "high"
        high_at = started(tw.ctx, high)
        assert all(high_at < started(tw.ctx, n) for n in normal)
        assert started(tw.ctx, busy) < high_at


def test_a_low_job_past_its_bound_is_served_as_normal_while_normal_work_waits(stack_env):
    with ThreadWorker(stack_env, handlers=False, LOW_PRIORITY_MAX_WAIT="2") as tw:
        busy = submit(tw.ctx, "sleep:4")
        wait_until(lambda: tw.ctx.store.get(busy).status is JobStatus.RUNNING)
        low = submit(tw.ctx, "l", "low")
        normal = [submit(tw.ctx, "sleep:0.3") for _ in range(4)]
        # The promotion: a copy of the low job's message becomes visible in the normal lane.
        normal_lane = tw.ctx.lanes["normal"].url
        wait_until(lambda: depth(tw.ctx.sqs, normal_lane) >= 5, 10)
        assert tw.ctx.store.get(busy).status is JobStatus.RUNNING  # still busy: nothing was taken yet
        low_at = started(tw.ctx, low)
        # Served while normal jobs still waited: without the promotion it would come last.
        assert low_at < max(started(tw.ctx, n) for n in normal)


def test_queue_position_counts_in_take_order_and_follows_a_promotion(stack_env):
    now = [1_000_000.0]
    ctx = Context(Settings(**stack_env, LOW_PRIORITY_MAX_WAIT="100"), clock=lambda: now[0])
    svc = service(ctx)
    svc.queries = ctx.queries

    def at(t: float, text: str, priority: str) -> str:
        now[0] = t
        return submit(ctx, text, priority)

    def positions(*ids: str) -> list[int]:
        return [svc.view(ctx.store.get(i))["queue_position"] for i in ids]

    n1 = at(1_000_000, "n1", "normal")
    low = at(1_000_001, "l", "low")
    n2 = at(1_000_002, "n2", "normal")
    high = at(1_000_003, "h", "high")
    assert positions(high, n1, n2, low) == [0, 1, 2, 3]
    assert [m.job_id() for m in ctx.lanes["low"].receive(wait_seconds=0, visibility=0)] == [low]
    n3 = at(1_000_200, "n3", "normal")  # the low job is past its bound: it is in the normal lane
    assert positions(high, n1, n2, low, n3) == [0, 1, 2, 3, 4]
    now[0] = 1_000_050  # before its bound it waits behind every normal job
    assert positions(low) == [4]


def test_the_receiver_takes_the_highest_lane_and_hands_back_what_else_arrived(ctx):
    from chalicelib.platform.logs import get_logger
    log = get_logger("test.receiver")
    receiver = LaneReceiver(ctx.lanes, wait_seconds=2, visibility=30, log=log)
    assert receiver.receive() == []  # idle: every lane long-polled, nothing came
    got: list = []
    thread = threading.Thread(target=lambda: got.extend(receiver.receive()))
    thread.start()
    ctx.lanes["low"].send("low-job")
    ctx.lanes["high"].send("high-job")
    thread.join(10)
    [taken] = got
    other = {"low-job": "high", "high-job": "low"}[taken.job_id()]
    # Whatever was not taken is visible again at once, as a fresh message (receive count 1).
    back = wait_until(lambda: ctx.lanes[other].receive(wait_seconds=1, visibility=30), 10)
    assert [m.job_id() for m in back] == [f"{other}-job"] and back[0].receive_count == 1
    # With messages in every lane the sweep takes the highest first, then the next.
    for lane in reversed(LANES):
        ctx.lanes[lane].send(f"{lane}-2")
    order = [receiver.receive()[0].job_id() for _ in LANES]
    assert order == ["high-2", "normal-2", "low-2"]


def test_health_shows_the_depth_of_each_lane_and_their_sum(ctx):
    for lane, count in (("high", 1), ("normal", 2), ("low", 3)):
        for _ in range(count):
            submit(ctx, "x", lane)
    with Client(create_app(ctx)) as client:
        queue = json.loads(client.http.get("/health").body)["queue"]
    # A low job also has its promotion copy, delayed, in the normal lane.
    assert {lane: queue["lanes"][lane]["messages"] for lane in LANES} == {"high": 1, "normal": 2, "low": 3}
    assert queue["lanes"]["normal"]["delayed"] == 3
    assert queue["messages"] == 6 and queue["delayed"] == 3


def test_priority_is_a_field_of_every_submit_and_is_checked(ctx):
    with Client(create_app(ctx)) as client:
        resp = client.http.post("/whisper", headers={"Content-Type": "application/json"},
                                body=json.dumps({"audio_url": "https://x.org/a.mp3", "priority": "urgent"}))
        assert resp.status_code == 422
        assert json.loads(resp.body)["details"][0]["field"] == "priority"
        resp = client.http.post("/analyze", headers={"Content-Type": "application/json"},
                                body=json.dumps({"image_url": "https://x.org/a.jpg", "priority": "high"}))
        job_id = json.loads(resp.body)["id"]
        status = json.loads(client.http.get(f"/status/{job_id}").body)
    assert status["priority"] == "high" and status["params"]["priority"] == "high"
    assert [m.job_id() for m in ctx.lanes["high"].receive(wait_seconds=0, visibility=30)] == [job_id]


def test_intake_takes_priority_in_the_params_like_the_routes(ctx):
    from chalicelib.delivery.events import EventPublisher
    from chalicelib.delivery.intake import IntakeHandler

    handler = IntakeHandler(service(ctx), EventPublisher(ctx.sqs, ctx.settings.events_queue, ctx.results,
                                                         ctx.clock), ctx.settings)
    body = json.dumps({"type": "csm", "params": {"text": "a", "priority": "low"}, "idempotency_key": "k1"})
    assert handler.handle(body, "m-1") == "created"
    [message] = ctx.lanes["low"].receive(wait_seconds=0, visibility=30)
    assert ctx.store.get(message.job_id()).priority == "low"
    bad = json.dumps({"type": "csm", "params": {"text": "a", "priority": 1}})
    assert handler.handle(bad, "m-2") == "rejected"
    # The lanes are the system's own work queues: no event is ever sent into one.
    for lane in LANES:
        assert handler.reply_to_problem(ctx.settings.lane_queues[lane]) == "must not be one of the system's own work queues"


def test_the_gpu_pools_demand_counts_every_lane(ctx):
    from chalicelib.fleet.pool import read_demand

    for lane in LANES:
        submit(ctx, "x", lane)
    # Three jobs queued, one per lane (the low job's promotion copy is delayed: not demand yet).
    assert read_demand(ctx.lanes, None, ctx.queries).queued == 3
    assert read_demand(ctx.jobs_queue, None, ctx.queries).queued == 1  # the normal lane alone undercounts


def test_a_lost_promotion_copy_is_sent_again_by_the_reconciler(stack_env):
    from botocore.exceptions import EndpointConnectionError

    now = [1_000_000.0]
    ctx = Context(Settings(**stack_env, LOW_PRIORITY_MAX_WAIT="300"), clock=lambda: now[0])
    normal_lane = ctx.lanes["normal"].url
    lost = [True]

    def down(params, **_):  # the normal lane refuses sends (over the wire), the low lane takes them
        if lost[0] and params.get("QueueUrl") == normal_lane:
            raise EndpointConnectionError(endpoint_url=normal_lane)

    ctx.sqs.meta.events.register("before-parameter-build.sqs.SendMessage", down)
    low = submit(ctx, "l", "low")
    lost[0] = False
    job = ctx.store.get(low)
    assert job.outbox_at == job.created_at + ctx.settings.outbox_grace  # still owed: not marked sent
    now[0] += ctx.settings.outbox_grace + 1
    create_app(ctx).reconciler.run_once()
    # Both again: the low lane's message and the promotion, delayed to the bound.
    assert visible(ctx, "low") == 2 and ctx.lanes["normal"].depth()["delayed"] == 1
    assert ctx.store.get(low).outbox_at > job.created_at + 3600  # marked sent: no more copies owed


def visible(ctx: Context, lane: str) -> int:
    return ctx.lanes[lane].depth()["messages"]
