"""Metrics in CloudWatch's embedded metric format (chalicelib/platform/metrics.py).

The integration test reads the EMF lines from the output of real processes (the API
server, a worker, a second worker that takes over, the local Lambda poller) and checks
names, values and dimensions for a success, a failure, a takeover, a cancel, a webhook
give-up and a bad input. The GPU meter is checked against the registry on moto."""

from __future__ import annotations

import io
import os
import signal
import sys
import threading

import pytest
import requests

from chalicelib.context import Context
from chalicelib.fleet.meter import meter_pass, meter_stopped
from chalicelib.fleet.registry import RUNNING
from chalicelib.jobs.models import KNOWN_FIELDS, JobStatus, JobType
from chalicelib.jobs.record import Job
from chalicelib.platform.metrics import CATALOG, Metrics, phase_durations
from chalicelib.platform.settings import Settings
from tests.support import emf, procs
from tests.support.harness import service, start_worker_process, submit, task_events, wait_until
from tests.support.receiver import Receiver


def capture() -> tuple[Metrics, io.StringIO]:
    out = io.StringIO()
    return Metrics(namespace="C3Render", stream=out), out


def points(out: io.StringIO) -> list[emf.Point]:
    return emf.parse(out.getvalue().splitlines())


def finished_job(**over) -> Job:
    base = dict(id="j1", type=JobType.CSM, params={}, status=JobStatus.SUCCESS, owner="k", created_at=100.0,
                complete_by=1000.0, max_time=60, expires_at=0, attempts=2, started_at=130.0,
                first_started_at=110.0, finished_at=160.0,
                phases={"downloading": 130.0, "rendering": 135.0, "uploading": 155.0})
    return Job(**{**base, **over})


# -- the lines themselves ----------------------------------------------------------------
def test_every_line_is_emf_with_the_catalog_units_and_dimension_sets():
    metrics, out = capture()
    job = finished_job()
    metrics.job_submitted(job)
    metrics.job_claimed(finished_job(attempts=1, started_at=112.5), takeover=False)
    metrics.job_claimed(job, takeover=True)
    metrics.job_finished(job)
    metrics.webhook("gave_up", "j1", "completed")
    metrics.gpu_launch(True)
    metrics.gpu_launch(False)
    metrics.gpu_billed(60, 20)
    metrics.fleet_closed("media:fast", 60, 20)
    metrics.job_billed("media:fast", 40, "j1")
    metrics.bad_input(["params.voice_url"], "http", KNOWN_FIELDS)
    metrics.heartbeat("w1")
    seen = points(out)
    assert {p.name for p in seen} == set(CATALOG)
    for point in seen:
        unit, dims = CATALOG[point.name]
        assert point.namespace == "C3Render"
        assert point.unit == unit.value
        assert [list(d) for d in point.dimension_sets] == dims, point.name
        for dim_set in point.dimension_sets:
            for key in dim_set:
                assert point.get(key), f"{point.name} names dimension {key} without a value"
        assert "service" not in point.fields  # no per-process dimension: alarms sum across processes


def test_a_finished_job_reports_outcome_run_time_attempts_and_each_phase():
    metrics, out = capture()
    metrics.job_finished(finished_job())
    seen = points(out)
    (done,) = emf.named(seen, "JobsFinished")
    assert (done.value, done.get("outcome"), done.get("type"), done.get("job_id")) == (1, "success", "csm", "j1")
    assert emf.named(seen, "RunTime")[0].value == 50.0  # first start (110) -> finish (160)
    assert emf.named(seen, "Attempts")[0].value == 2
    assert {(p.get("phase"), p.value) for p in emf.named(seen, "PhaseTime")} == {
        ("downloading", 5.0), ("rendering", 20.0), ("uploading", 5.0)}


def test_a_job_cancelled_before_it_ran_counts_as_finished_only():
    metrics, out = capture()
    metrics.job_finished(finished_job(status=JobStatus.CANCELLED, attempts=0, first_started_at=None, phases=None))
    assert [p.name for p in points(out)] == ["JobsFinished"]


def test_queue_wait_is_counted_on_the_first_claim_only():
    metrics, out = capture()
    metrics.job_claimed(finished_job(attempts=1, started_at=112.5), takeover=False)
    metrics.job_claimed(finished_job(attempts=2, started_at=150.0), takeover=False)
    assert [(p.name, p.value) for p in points(out)] == [("QueueWait", 12.5)]


def test_bad_input_fields_outside_the_known_set_count_as_other():
    metrics, out = capture()
    metrics.bad_input(["params.text", "made_up_key", "x-anything", "Idempotency-Key"], "http", KNOWN_FIELDS)
    assert sorted(p.get("field") for p in points(out)) == ["Idempotency-Key", "other", "text"]


def test_metrics_can_be_switched_off():
    out = io.StringIO()
    Metrics(stream=out, enabled=False).heartbeat("w")
    assert out.getvalue() == ""


def test_lines_from_many_threads_never_interleave():
    metrics, out = capture()
    threads = [threading.Thread(target=lambda: [metrics.heartbeat("w") for _ in range(200)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(points(out)) == 800 == len(out.getvalue().splitlines())


def test_phase_durations_follow_the_order_phases_were_entered():
    assert phase_durations({"b": 5.0, "a": 1.0}, 9.0) == [("a", 4.0), ("b", 4.0)]
    assert phase_durations({}, 9.0) == []


# -- counted once, on the durable path ------------------------------------------------------
@pytest.mark.integration
def test_a_final_job_is_counted_once_and_a_job_not_final_never(ctx):
    metrics, out = capture()
    ctx.store.metrics = metrics
    job_id = submit(ctx, "csm", {"text": "x"})
    assert not ctx.store.count_finished(job_id)  # queued: nothing to count yet
    ctx.store.transition(job_id, JobStatus.CANCELLED)
    assert [ctx.store.count_finished(job_id) for _ in range(3)] == [True, False, False]
    assert not ctx.store.count_finished("00000000-0000-0000-0000-000000000000")  # no record made
    assert ctx.store.get("00000000-0000-0000-0000-000000000000") is None
    assert [(p.get("job_id"), p.get("outcome")) for p in emf.named(points(out), "JobsFinished")] == [
        (job_id, "cancelled")]


@pytest.mark.integration
def test_a_job_removed_with_its_data_is_counted_before_its_record_goes(ctx):
    metrics, out = capture()
    ctx.store.metrics = metrics
    job_id = submit(ctx, "csm", {"text": "x"})
    service(ctx).update(job_id, "anonymous", {"status": "cancelled", "remove_data": True})
    assert ctx.store.get(job_id) is None
    assert [p.get("job_id") for p in emf.named(points(out), "JobsFinished")] == [job_id]


# -- GPU spend from the registry (moto over HTTP) ------------------------------------------
@pytest.mark.integration
def test_billed_seconds_are_counted_once_across_passes_and_the_stop(settings):
    now = [1000.0]
    ctx = Context(settings, clock=lambda: now[0])
    registry = ctx.registry
    intent = registry.create_intent("w1", expires=99999, workload_type="media:fast", slot=0)
    record = registry.update(intent, state=RUNNING, workload="wl-1", node="n1", launched_at=1000.0,
                             last_used=1000.0, busy=True, heartbeat=1000.0, metered_at=1000.0)
    metrics, out = capture()
    now[0] = 1060.0
    assert meter_pass(registry, [record], now[0], metrics) == 60.0
    # A second reaper with the same stale copy of the record counts nothing.
    assert meter_pass(registry, [record], now[0], metrics) == 0.0
    # The owner's own writes (version-checked) are untouched by metering.
    record = registry.update(record, busy=False, last_used=1070.0)
    now[0] = 1100.0
    assert meter_pass(registry, [registry.get(record.id)], now[0], metrics) == 40.0
    # The stop counts the rest, from the record as deleted (metered_at 1100, not the copy's).
    now[0] = 1130.0
    meter_stopped(registry.delete(record), now[0], metrics)
    billed = [p.value for p in emf.named(points(out), "GpuBilledSeconds")]
    idle = [p.value for p in emf.named(points(out), "GpuIdleSeconds")]
    assert billed == [60.0, 40.0, 30.0] and sum(billed) == 130.0  # launch (1000) -> stop (1130)
    assert idle == [30.0, 30.0]  # idle from its last job's end (1070) on


# -- the real processes ----------------------------------------------------------------------
@pytest.fixture
def ops(stack_env, tmp_path):
    """The API, the Lambda poller (webhooks, reconciler) and worker processes, each with its
    own output file; webhooks give up after 2 attempts."""
    env = {**stack_env, "FAKE_TASK_LOG": str(tmp_path / "tasks.log"), "OUTPUT_DIR": str(tmp_path / "out"),
           "LEASE_SECONDS": "3", "WEBHOOK_ATTEMPTS": "2", "WEBHOOK_INTERVAL": "1", "WEBHOOK_TIMEOUT": "2",
           "LAMBDA_POLL_WAIT_SECONDS": "1", "LOCAL_SCHEDULE_INTERVAL": "1", "OUTBOX_GRACE": "2"}
    started: list = []
    port = procs.free_port()
    started.append(procs.start_api(port, env, tmp_path / "api.log"))
    started.append(procs.start([sys.executable, "-m", "infra.local.lambda_poller"], env=env,
                               log_path=tmp_path / "handlers.log"))
    up = Receiver().start()
    down = Receiver(status=503).start()
    yield {"env": env, "api": f"http://127.0.0.1:{port}", "dir": tmp_path, "procs": started, "up": up, "down": down}
    for proc in started:
        procs.stop(proc)
    up.stop()
    down.stop()


def post(api: str, path: str, body: dict) -> requests.Response:
    return requests.post(f"{api}{path}", json=body, timeout=10)


@pytest.mark.integration
def test_processes_emit_metrics_for_success_failure_takeover_cancel_give_up_and_bad_input(ops):
    api, tmp, env = ops["api"], ops["dir"], ops["env"]
    ctx = Context(Settings(**env))
    first = start_worker_process(env, tmp / "worker1.log")
    ops["procs"].append(first)

    ok = post(api, "/csm", {"text": "hello", "notify_url": ops["up"].url}).json()["id"]
    failed = post(api, "/csm", {"text": "fail:the voice sample is silent", "notify_url": ops["down"].url}).json()["id"]
    bad = post(api, "/csm", {"text": "hi", "temperature": 7, "made_up": 1})
    assert bad.status_code == 422
    wait_until(lambda: ctx.store.get(ok).webhook == "delivered" and ctx.store.get(failed).webhook == "failed", 60)

    # A takeover: the first worker is killed mid-job; a second one claims it once the lease lapses.
    slow = post(api, "/csm", {"text": "sleep:120"}).json()["id"]
    wait_until(lambda: any(e == "start" for _, e in task_events(tmp / "tasks.log", slow)), 30)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    second = start_worker_process(env, tmp / "worker2.log")
    ops["procs"].append(second)
    wait_until(lambda: emf.named(emf.read(tmp / "worker2.log"), "Takeovers", job_id=slow), 60)
    assert post(api, f"/job/{slow}", {"status": "cancelled"}).status_code == 200

    logs = (tmp / "handlers.log", tmp / "worker1.log", tmp / "worker2.log")
    wait_until(lambda: emf.named(emf.read(*logs), "JobsFinished", job_id=slow), 30)
    api_points = emf.read(tmp / "api.log")
    workers = emf.read(tmp / "worker1.log", tmp / "worker2.log")
    handlers = emf.read(tmp / "handlers.log")
    # The notify delivery runs in the deliveries handler, or first straight from the worker that
    # wrote the final state (its direct delivery, the same handler code): either counts the job.
    deliveries = handlers + workers

    # Submitted: three jobs of type csm, counted by the API that created them.
    assert sorted(p.get("job_id") for p in emf.named(api_points, "JobsSubmitted", type="csm")) == sorted(
        [ok, failed, slow])
    # Bad input: one point per field named, the made-up key as "other".
    assert sorted(p.get("field") for p in emf.named(api_points, "BadInputRejections")) == ["other", "temperature"]
    # Success and failure, counted once each on the durable path every final job takes: its
    # notify delivery (the handler's code, wherever it ran), not the final write itself.
    (done,) = emf.named(deliveries, "JobsFinished", job_id=ok)
    (lost,) = emf.named(deliveries, "JobsFinished", job_id=failed)
    assert (done.get("outcome"), done.get("type"), lost.get("outcome")) == ("success", "csm", "failed")
    assert [p.value for p in emf.named(deliveries, "Attempts", job_id=ok)] == [1]
    assert emf.named(deliveries, "RunTime", job_id=ok)[0].value >= 0
    assert {p.get("phase") for p in emf.named(deliveries, "PhaseTime", job_id=ok)} >= {"downloading"}
    assert {p.get("job_id") for p in emf.named(workers, "QueueWait")} == {ok, failed, slow}
    # The takeover: counted by the worker that took over, at attempt 2; the API's cancel too.
    assert [p.get("attempt") for p in emf.named(workers, "Takeovers")] == [2]
    (cancelled,) = emf.named(deliveries, "JobsFinished", job_id=slow)
    assert (cancelled.get("outcome"), cancelled.get("type")) == ("cancelled", "csm")
    # Webhooks: delivered for the success; refused then given up for the failure.
    assert [p.get("outcome") for p in emf.named(deliveries, "WebhookDeliveries", job_id=ok)] == ["delivered"]
    assert sorted(p.get("outcome") for p in emf.named(deliveries, "WebhookDeliveries", job_id=failed)) == [
        "gave_up", "refused"]  # from two processes' logs: the set of outcomes, not their order
    # Heartbeats from both workers.
    assert {p.get("worker") for p in emf.named(workers, "WorkerHeartbeats")} and len(
        emf.named(emf.read(tmp / "worker2.log"), "WorkerHeartbeats")) >= 1
    # Every final state was counted exactly once across all processes.
    everywhere = api_points + workers + handlers
    assert sorted(p.get("job_id") for p in emf.named(everywhere, "JobsFinished")) == sorted([ok, failed, slow])
