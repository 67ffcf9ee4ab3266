"""The production-shaped profile (infra/local/prod_profile.py): every function of the app
stack and the worker task, each with exactly its template's environment and its own role's
credentials, on a moto server with IAM access control on and every call checked against
the role's policy. One stack for the module; each test ends with no call denied."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from infra.local import processes
from infra.local.prod_profile import (CREDENTIALS, LAMBDA_RUNTIME, LOCAL_OVERRIDES, PROCESS_BASE,
                                      ProdProfile)
from infra.local.samples import write_samples
from infra.local.simulator import SimulatorProcess
from tests.support import samples
from tests.support.harness import send_from, wait_until
from tests.support.receiver import Receiver

KEY = {"X-C3-RENDER-KEY": "prod-key-a"}
# The module's stack starts in the first test; the pool test waits out GPU_SURPLUS_IDLE (30 s).
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("prod")
    sim = SimulatorProcess.start(log_path=work / "simulator.log")
    inputs = samples.serve(write_samples(work / "samples"))
    receiver = Receiver().start()
    profile = ProdProfile(work, sim.worker_env())
    try:
        profile.deploy()
        profile.start(schedule_every=2.0)
        yield {"profile": profile, "api": profile.api_url, "sim": sim, "inputs": inputs,
               "receiver": receiver, "work": work}
    finally:
        profile.stop()
        inputs.stop()
        receiver.stop()
        sim.stop()


@pytest.fixture(autouse=True)
def no_denials(prod: dict[str, Any]) -> Iterator[None]:
    yield
    denied = prod["profile"].denials()
    assert not denied, "calls the roles do not allow:\n" + "\n".join(
        f"  {d['role']}: {d['action']} on {d['resource']}" for d in denied)


def submit(prod: dict[str, Any], path: str, body: dict[str, Any]) -> str:
    resp = requests.post(f"{prod['api']}{path}", json={**body, "notify_url": prod["receiver"].url},
                         headers=KEY, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()["id"]


def final(prod: dict[str, Any], job_id: str, timeout: float = 150) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status = requests.get(f"{prod['api']}/status/{job_id}", headers=KEY, timeout=10).json()
        return status if status["status"] not in ("queued", "running") else None

    return wait_until(done, timeout, interval=0.3)


def test_each_process_gets_exactly_its_template_environment(prod: dict[str, Any]) -> None:
    profile: ProdProfile = prod["profile"]
    templates = profile.templates
    allowed_extra = {*LAMBDA_RUNTIME, *CREDENTIALS, *LOCAL_OVERRIDES, *PROCESS_BASE,
                     "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"}
    assert set(templates.functions) == {"APIHandler", "DeadLetters", "Webhooks", "Intake", "Reconcile", "GpuReaper"}
    for function in templates.functions.values():
        env = profile.function_env(function)
        assert set(env) - allowed_extra == set(function.env), function.logical_id
        assert env["AWS_SESSION_TOKEN"] and env["AWS_ACCESS_KEY_ID"].startswith("ASIA")
        if function.queue or function.every:  # never starved by the API's concurrency
            assert function.reserved_concurrency, function.logical_id
    # Every function's process runs (its Handler resolves on app.py) and the worker too.
    for name, proc in profile.procs.items():
        assert proc.poll() is None, f"{name} exited: see {prod['work'] / (name + '.log')}"
    worker = profile.worker_env()
    assert set(worker) - allowed_extra - set(templates.task.secrets) == set(templates.task.env) - allowed_extra


def test_four_job_types_end_to_end_with_result_links(prod: dict[str, Any], tmp_path: Path) -> None:
    url = prod["inputs"].url
    jobs = {
        "csm": submit(prod, "/csm", {"monologue": ["Hello from production."], "voice": "conversational_a"}),
        "whisper": submit(prod, "/whisper", {"audio_url": url("speech.wav")}),
        "portrait": submit(prod, "/portrait", {"image_url": url("portrait.jpg"), "audio_url": url("speech.wav")}),
        "analyze": submit(prod, "/analyze", {"image_url": url("portrait.jpg")}),
    }
    statuses = {kind: final(prod, job_id) for kind, job_id in jobs.items()}
    assert {k: s["status"] for k, s in statuses.items()} == dict.fromkeys(jobs, "success"), statuses
    hooks = {h.json()["id"]: h.json() for h in prod["receiver"].wait_for(4, timeout=60)}
    assert set(hooks) >= set(jobs.values())
    assert hooks[jobs["whisper"]]["text"] and hooks[jobs["analyze"]]["text"]
    for kind in ("csm", "portrait"):  # the jobs with a result file
        job_id = jobs[kind]
        result = requests.get(f"{prod['api']}/result/{job_id}", headers=KEY, timeout=10).json()
        # The webhook's durable link (PUBLIC_API_URL from the stage URL) opens the result, no key.
        link = hooks[job_id].get("result_link")
        assert link and link.startswith(prod["api"] + "/results/"), (kind, hooks[job_id])
        assert result["result_link"].startswith(prod["api"] + "/results/")
        opened = requests.get(link, allow_redirects=False, timeout=10)
        assert opened.status_code == 302, opened.text
        assert requests.get(opened.headers["Location"], timeout=10).status_code == 200


def test_health_with_a_key_reads_the_queues_and_fleet_under_the_api_role(prod: dict[str, Any]) -> None:
    anonymous = requests.get(f"{prod['api']}/health", timeout=10)
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ok", "service": "c3-render"}
    resp = requests.get(f"{prod['api']}/health", headers=KEY, timeout=10)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["queue"]["dead_letters"] == 0 and "fleet" in body["gpus"]


def test_the_api_answers_behind_the_templates_edge_rules(prod: dict[str, Any]) -> None:
    """The web ACL the template associates with the stage, at its default limits: one address
    without a key is refused past ApiAnonymousRateLimit a window, and a key from it is not."""
    acl = prod["profile"].templates.web_acl()
    limit = next(int(r["Statement"]["RateBasedStatement"]["Limit"]) for r in acl["Rules"]
                 if r["Name"] == "per-address-without-key")
    port = int(prod["api"].rsplit(":", 1)[1])
    statuses = [send_from("127.0.0.9", port, "/health")[0] for _ in range(limit + 1)]
    assert statuses == [200] * limit + [429]
    assert send_from("127.0.0.9", port, "/health", KEY)[0] == 200


def test_a_removed_permission_is_caught_naming_role_action_and_resource(prod: dict[str, Any]) -> None:
    """The API's role without sqs:GetQueueUrl on the DLQ: /health fails, and the denial names
    the role, the action and the queue."""
    profile: ProdProfile = prod["profile"]
    policies = profile.templates.policies("ApiHandlerRole")
    for policy in policies:
        for statement in policy["Statement"]:
            if "sqs:GetQueueUrl" in statement.get("Action", []):
                statement["Resource"] = [r for r in statement["Resource"] if not r.endswith("-jobs-dlq")]
    reduced, record = prod["work"] / "api-reduced.json", prod["work"] / "api-reduced-calls.jsonl"
    reduced.write_text(json.dumps(policies))
    port = processes.free_port()
    proc = profile.start_api(port, reduced, record, log_name="api-reduced")
    try:
        processes.wait_http(f"http://127.0.0.1:{port}/", timeout=60, proc=proc)
        resp = requests.get(f"http://127.0.0.1:{port}/health", headers=KEY, timeout=10)
        assert resp.status_code == 503, resp.text
        denied = [json.loads(line) for line in record.read_text().splitlines() if '"allowed": false' in line]
        assert [(d["role"], d["action"], d["resource"]) for d in denied] == [
            ("c3-render-prod-ApiHandlerRole", "sqs:GetQueueUrl",
             "arn:aws:sqs:us-east-1:123456789012:c3-render-prod-jobs-dlq")]
        log = (prod["work"] / "api-reduced.log").read_text()
        assert ("role c3-render-prod-ApiHandlerRole is not allowed to perform sqs:GetQueueUrl on resource "
                "arn:aws:sqs:us-east-1:123456789012:c3-render-prod-jobs-dlq") in log
    finally:
        processes.stop(proc)


def logged(prod: dict[str, Any], name: str, event: str) -> bool:
    path = prod["work"] / f"{name}.log"
    return path.exists() and f'"event": "{event}"' in path.read_text()


def test_pool_stops_the_surplus_with_the_template_roles(prod: dict[str, Any]) -> None:
    """Two workers (WorkerMaxCount) rent two instances (MAX_GPUS 2); once idle, one is
    stopped as surplus (GPU_WARM_SPARES 1, GPU_SURPLUS_IDLE 30): the pool reads the queue's
    depth and the outbox index under the worker's and the reaper's roles (without them it
    has no demand figure and keeps both until the idle timeout)."""
    profile: ProdProfile = prod["profile"]
    profile.start_worker(2)  # WorkerMaxCount: the service scales out to two tasks
    try:
        wait_until(lambda: (prod["work"] / "worker-2.health").exists(), 60)
        jobs = [submit(prod, "/portrait", {"image_url": prod["inputs"].url("portrait.jpg"),
                                           "audio_url": prod["inputs"].url("speech.wav")}) for _ in range(4)]
        assert all(final(prod, j)["status"] == "success" for j in jobs)
        assert prod["sim"].ledger()["launches"] >= 2
        wait_until(lambda: prod["sim"].ledger()["running"] == 1, 120, interval=1)  # the spare stays
    finally:
        processes.stop(profile.procs.pop("worker-2"), timeout=30)
    for name in ("worker-1", "worker-2", "GpuReaper"):
        assert not logged(prod, name, "gpu.demand_unavailable"), name


def read_events(sqs: Any, url: str, want: int, timeout: float = 90) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def more() -> bool:
        for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
            seen.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return len(seen) >= want

    wait_until(more, timeout, interval=0)
    return seen


def test_intake_job_and_its_events_reach_the_reply_queue(prod: dict[str, Any]) -> None:
    profile: ProdProfile = prod["profile"]
    sqs = profile.client("sqs")  # the integration, with its own (administrator) credentials
    reply = sqs.create_queue(QueueName="c3-render-prod-reply-test")["QueueUrl"]
    intake = sqs.get_queue_url(QueueName="c3-render-prod-intake")["QueueUrl"]
    sqs.send_message(QueueUrl=intake, MessageBody=json.dumps({
        "type": "analyze", "params": {"image_url": prod["inputs"].url("portrait.jpg")},
        "reply_to": "c3-render-prod-reply-test"}))
    events = read_events(sqs, reply, 2)
    assert [e["type"] for e in events] == ["job.submitted", "job.success"], events
    assert events[0]["id"] == events[1]["id"]


def test_dead_lettered_job_fails_with_its_webhook(prod: dict[str, Any]) -> None:
    """The DeadLetters function fails a job whose message was dead-lettered, and its webhook
    goes out through the Webhooks function. (The worker is stopped meanwhile.)"""
    profile: ProdProfile = prod["profile"]
    processes.stop(profile.procs.pop("worker-1"), timeout=30)
    try:
        job_id = submit(prod, "/analyze", {"image_url": prod["inputs"].url("portrait.jpg")})
        sqs = profile.client("sqs")
        dlq = sqs.get_queue_url(QueueName="c3-render-prod-jobs-dlq")["QueueUrl"]
        # What SQS moves to the DLQ after MaxReceiveCount: the job's message (its copy in the
        # jobs queue waits for no worker; the restarted one drops it for a finished job).
        sqs.send_message(QueueUrl=dlq, MessageBody=json.dumps({"id": job_id}))
        status = final(prod, job_id, timeout=60)
        assert status["status"] == "failed", status
        hook = wait_until(lambda: [h.json() for h in prod["receiver"].for_job(job_id)], 60)
        assert hook[0]["status"] == "failed"
    finally:
        profile.start_worker(1)
