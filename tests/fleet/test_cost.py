"""What each job cost: the cost receipt of a cold and a warm job on the simulated Comput3, the
fleet's books against the simulator's ledger (sum of the jobs' billed GPU seconds + idle =
billed, within 1 %), a stop's refund, and GET /usage per key."""

from __future__ import annotations

import json
import time

import pytest
from chalice.test import Client

from chalicelib.api.routes import create_app
from chalicelib.context import Context
from chalicelib.fleet.books import FleetBooks, refund_of, rental_billed
from chalicelib.fleet.registry import RUNNING, GpuRecord
from chalicelib.jobs.models import JobStatus
from chalicelib.platform.settings import Settings
from tests.support.fake_gpu_tasks import GPU_FAST
from tests.support.harness import FAST, ThreadWorker, service, submit, wait_until
from worker_runtime.gpu import GpuSettings, build_gpu_manager

pytestmark = pytest.mark.integration

K1 = {"X-C3-RENDER-KEY": "key-one", "Content-Type": "application/json"}
K2 = {"X-C3-RENDER-KEY": "key-two", "Content-Type": "application/json"}


@pytest.fixture
def genv(stack_env, c3_sim, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TASK_LOG", str(tmp_path / "tasks.log"))
    return {**stack_env, **GPU_FAST, **c3_sim.worker_env(), "OUTPUT_DIR": str(tmp_path / "out"),
            "GPU_PRICE_PER_HOUR": "3.6", "C3_RENDER_API_KEY": "key-one,key-two"}


def gpu_worker(env):
    full = {**FAST, **env}
    worker_id = f"w-{time.monotonic_ns()}"
    gpu = build_gpu_manager(Context(Settings(**full)), worker_id, GpuSettings(**full))
    return ThreadWorker(env, gpu=gpu, WORKER_ID=worker_id)


def settled(ctx, job_id):
    return wait_until(lambda: (j := ctx.store.get(job_id)).status.is_terminal and j.outbox is None and j, 60)


def test_cold_and_warm_receipts_and_the_books_match_the_simulators_ledger(genv, c3_sim):
    c3_sim.set_faults(node_init_seconds=1.0)  # a boot the cold job waits for
    with gpu_worker(genv) as tw:
        ctx = tw.ctx
        cold = settled(ctx, submit(ctx, "csm", {"text": "sleep:3"}, owner="o1"))
        warm = settled(ctx, submit(ctx, "csm", {"text": "sleep:2"}, owner="o1"))
        # A job its client cancels mid-run pays for the GPU seconds it used.
        cancelled = submit(ctx, "csm", {"text": "sleep:30"}, owner="o1")
        wait_until(lambda: ctx.store.get(cancelled).phase == "rendering", 30)
        service(ctx).update(cancelled, "o1", {"status": "cancelled"})
        cancelled = wait_until(lambda: (j := ctx.store.get(cancelled)).cost_gpu_seconds and j.outbox is None and j, 60)
    # The worker stopped its instance on the way out: every rental is closed.
    ledger = wait_until(lambda: (led := c3_sim.ledger())["running"] == 0 and led, 30)
    assert (cold.status, warm.status, ledger["launches"]) == (JobStatus.SUCCESS, JobStatus.SUCCESS, 1)

    c, w = cold.cost_view(), warm.cost_view()
    assert c["cold_start"] and c["cold_start_seconds"] >= 1.0 and c["instance_type"] == "media:fast"
    assert c["billed_gpu_seconds"] - c["gpu_seconds"] >= 0.9  # the boot it caused, billed to it
    assert c["gpu_seconds"] >= 0.5 and c["usd"] == pytest.approx(c["billed_gpu_seconds"] * 0.001, abs=1e-5)
    assert not w["cold_start"] and w["cold_start_seconds"] == 0
    assert w["billed_gpu_seconds"] == w["gpu_seconds"] >= 0.3
    assert c["queued_seconds"] >= 0 and w["queued_seconds"] >= 0

    with Client(create_app(Context(Settings(**genv)))) as client:
        health = json.loads(client.http.get("/health", headers={"X-C3-RENDER-KEY": "key-one"}).body)
        fleet = health["gpus"]["fleets"]["media:fast"]
    x = cancelled.cost_view()
    assert cancelled.status is JobStatus.CANCELLED and x["gpu_seconds"] > 0 and not x["cold_start"]
    jobs = c["billed_gpu_seconds"] + w["billed_gpu_seconds"] + x["billed_gpu_seconds"]
    assert fleet["running"] == 0 and fleet["stopped"] == 1
    assert fleet["idle_seconds"] > 0 and fleet["idle_usd"] == pytest.approx(fleet["idle_seconds"] * 0.001, abs=1e-5)
    billed = ledger["billed_seconds"]
    assert abs(jobs + fleet["idle_seconds"] - billed) <= 0.01 * billed, (jobs, fleet, ledger)
    assert abs(fleet["billed_seconds"] - billed) <= 0.01 * billed
    # The key's usage holds all three, the cancelled job's seconds too (added after its cancel).
    usage = Context(Settings(**genv)).usage
    total = wait_until(lambda: (t := usage.report("o1", {})["total"])["billed_gpu_seconds"] >= round(jobs, 3) - 0.01
                       and t, 10)
    assert total["jobs"] == 3 and total["usd"] == pytest.approx(jobs * 0.001, abs=1e-4)


def test_the_final_webhook_and_status_carry_the_receipt(genv, c3_sim, receiver, private_urls):
    private_urls(True)
    env = {**genv, "ALLOW_PRIVATE_URLS": "true"}
    with gpu_worker(env) as tw, Client(create_app(Context(Settings(**env)))) as client:
        resp = client.http.post("/csm", headers=K1, body=json.dumps({"text": "sleep:0.2", "notify_url": receiver.url}))
        job_id = json.loads(resp.body)["id"]
        job = settled(tw.ctx, job_id)
        status = json.loads(client.http.get(f"/status/{job_id}", headers=K1).body)
        listed = json.loads(client.http.get("/jobs", headers=K1).body)["jobs"]
    [hook] = receiver.for_job(job_id)
    assert hook.json()["cost"] == status["cost"] == listed[0]["cost"] == job.cost_view()
    assert status["cost"]["gpu_seconds"] >= 0.2 and status["cost"]["usd"] > 0


def test_usage_sums_a_keys_jobs_by_day_and_type_and_no_other_keys(stack_env):
    now = time.time()  # one instant for every write and the read: a run across midnight (UTC) is still one day
    ctx = Context(Settings(**stack_env, C3_RENDER_API_KEY="key-one,key-two"), clock=lambda: now)
    app = create_app(ctx)
    with Client(app) as client:
        ids = {}
        for name, headers, text in (("a", K1, "one"), ("b", K1, "two"), ("c", K2, "three")):
            ids[name] = json.loads(client.http.post("/csm", headers=headers, body=json.dumps({"text": text})).body)["id"]
        for name, seconds in (("a", 36.0), ("b", 10.0), ("c", 100.0)):
            ctx.store.claim(ids[name], "w1", 60)
            ctx.store.add_gpu_use(ids[name], {"instance_type": "media:fast", "gpu_seconds": seconds,
                                              "launch_seconds": 2.0, "cold_start": True, "cold_start_seconds": 3.0,
                                              "usd": round((seconds + 2) * 0.001, 6)})
            job = ctx.store.transition(ids[name], JobStatus.SUCCESS, worker="w1", fields={"result_text": "x"})
            assert app.delivery.handle(json.dumps({"id": job.id})) == "settled"
            app.delivery.handle(json.dumps({"id": job.id}))  # a copy: counted once
        one = json.loads(client.http.get("/usage", headers=K1).body)
        two = json.loads(client.http.get("/usage", headers=K2).body)
        day = one["to"]
        assert one["usage"] == [{"day": day, "type": "csm", "jobs": 2, "gpu_seconds": 46.0,
                                 "billed_gpu_seconds": 50.0, "usd": 0.05}]
        assert one["total"] == {"jobs": 2, "gpu_seconds": 46.0, "billed_gpu_seconds": 50.0, "usd": 0.05}
        assert two["total"]["jobs"] == 1 and two["usage"][0]["billed_gpu_seconds"] == 102.0
        empty = json.loads(client.http.get("/usage?from=2020-01-01&to=2020-01-31", headers=K1).body)
        assert empty["usage"] == [] and empty["total"]["jobs"] == 0
        for query, field in (("from=2020-13-01", "from"), ("to=yesterday", "to"), ("from=2020-1-01", "from"),
                             ("day=2020-01-01", "day")):
            resp = client.http.get(f"/usage?{query}", headers=K1)
            assert resp.status_code == 400 and json.loads(resp.body)["details"][0]["field"] == field, query
        backwards = json.loads(client.http.get("/usage?from=2021-01-02&to=2021-01-01", headers=K1).body)
        assert backwards["usage"] == [] and "next_from" not in backwards
        long = json.loads(client.http.get(f"/usage?from=2000-01-01&to={day}", headers=K1).body)
        assert long["usage"] == [] and long["next_from"] == "2001-01-01"  # 366 days an answer (2000 is a leap year)
        edge = client.http.get("/usage?from=9999-12-01&to=9999-12-31", headers=K1)
        assert edge.status_code == 200 and json.loads(edge.body)["usage"] == []
        assert client.http.get("/usage").status_code == 401


def test_a_stops_refund_sets_the_billed_seconds():
    record = GpuRecord(id="gpu-slot-0", state=RUNNING, owner="w", heartbeat=0, version=1, expires=1000,
                       type="media:fast", created_at=90, workload="wl", node="n", launched_at=100.0)
    assert rental_billed(record, now=400.0) == 300.0
    assert rental_billed(record, now=400.0, refund=650.0) == 250.0  # the provider's own count wins
    assert rental_billed(record, now=5000.0) == 900.0  # never past the rental's end
    assert refund_of({"refund_seconds": 12.5}) == 12.5 and refund_of({"refund": "n/a"}) is None
    assert refund_of([]) is None and refund_of({"refund_seconds": True}) is None


def test_books_add_up_per_fleet(ctx):
    books = FleetBooks(ctx.dynamodb, ctx.settings.gpu_table, ctx.clock)
    books.close("media:fast", 100.0, 40.0)
    books.close("media:fast", 50.0, 60.0)  # idle never exceeds billed
    books.close("media:slow", 10.0, 0.0)
    assert books.closed() == {"media:fast": {"billed_seconds": 150.0, "idle_seconds": 90.0, "instances": 2},
                              "media:slow": {"billed_seconds": 10.0, "idle_seconds": 0.0, "instances": 1}}
