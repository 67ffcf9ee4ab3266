"""The `c3-render` command as a user gets it: `pip install ./client` into a fresh virtualenv,
then the installed binary against the whole local system (API, worker, handlers, simulator)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from c3render import Client, JobStatus, JobType
from tests.support import samples
from tests.support.harness import wait_until
from tests.support.procs import ROOT
from tests.system.test_e2e import system  # noqa: F401  (the same whole-system fixture, one per module)

# Not in the LocalStack profile: the CLI exercises the API, which test_e2e already covers there.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def cli_venv(tmp_path_factory) -> Path:
    """A virtualenv with only the client installed, from a copy of client/ (so the build
    leaves nothing in the working tree)."""
    work = tmp_path_factory.mktemp("client-venv")
    source = shutil.copytree(ROOT / "client", work / "client",
                             ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True, timeout=120)
    python = work / "venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
                   check=True, timeout=600, cwd=work)
    return work / "venv"


def cli_env(system) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "C3_RENDER_API_KEY")}
    return {**env, "C3_RENDER_URL": system["api"], "COLUMNS": "200"}


def run(cli_venv: Path, system, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(cli_venv / "bin" / "c3-render"), *args], env=cli_env(system), cwd=system["work"],
                          capture_output=True, text=True, timeout=timeout)


def test_the_installed_client_imports_no_server_code(cli_venv, tmp_path):
    probe = ("import sys, c3render, c3render.cli, c3render.webhooks; print(c3render.__file__); "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'chalicelib', 'worker_runtime', 'infra'}))")
    out = subprocess.run([str(cli_venv / "bin" / "python"), "-c", probe], cwd=tmp_path, capture_output=True,
                         text=True, check=True, env={"PATH": os.environ["PATH"]}).stdout.splitlines()
    assert out[0].startswith(str(cli_venv)) and out[1] == "[]"


def test_all_four_job_types_with_wait_and_output(cli_venv, system, tmp_path: Path):
    url = system["inputs"].url
    commands = {
        "speech.mp3": ["csm", "--monologue", "Hello from the command line.", "--monologue", "A second sentence.",
                       "--voice", "conversational_a", "--temperature", "0.7"],
        "transcript.txt": ["whisper", "--audio-url", url("speech.wav"), "--model", "large-v3"],
        "portrait.mp4": ["portrait", "--image-url", url("portrait.jpg"), "--audio-url", url("speech.wav")],
        "analysis.txt": ["analyze", "--image-url", url("portrait.jpg")],
    }
    binary = str(cli_venv / "bin" / "c3-render")
    procs = {name: subprocess.Popen([binary, *args, "--wait", "-o", str(tmp_path / name)], env=cli_env(system),
                                    cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, args in commands.items()}
    outcomes = {name: (*p.communicate(timeout=240), p.returncode) for name, p in procs.items()}
    assert {name: code for name, (_, _, code) in outcomes.items()} == dict.fromkeys(commands, 0), outcomes
    printed = {name: out.strip() for name, (out, _, _) in outcomes.items()}
    assert printed == {name: str(tmp_path / name) for name in commands}

    assert samples.duration_of(tmp_path / "speech.mp3") > 1.0
    facts = samples.video_facts(tmp_path / "portrait.mp4")
    assert facts["frames"] > 0 and facts["width"] > 0 and facts["audio_seconds"] > 1.0
    assert (tmp_path / "transcript.txt").read_text().strip()
    analysis = (tmp_path / "analysis.txt").read_text()
    assert "640" in analysis and "800" in analysis


def test_a_failing_job_exits_1_naming_the_url(cli_venv, system):
    bad = system["inputs"].base + "/status/404"
    res = run(cli_venv, system, "analyze", "--image-url", bad, "--wait")
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "failed" in res.stderr and "image_url" in res.stderr and "404" in res.stderr and res.stdout == ""
    res = run(cli_venv, system, "analyze", "--image-url", "not a url", "--json")
    assert res.returncode == 2
    assert json.loads(res.stdout)["details"][0]["field"] == "image_url"


def test_jobs_status_result_and_health(cli_venv, system):
    res = run(cli_venv, system, "analyze", "--image-url", system["inputs"].url("portrait.jpg"))
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip()
    final = json.loads(run(cli_venv, system, "status", job_id, "--wait", "--json").stdout)
    assert final["id"] == job_id and final["status"] == "success"
    listed = json.loads(run(cli_venv, system, "jobs", "--type", "analyze", "--json", "--limit", "100").stdout)
    assert job_id in [j["id"] for j in listed["jobs"]]
    assert {j["type"] for j in listed["jobs"]} == {"analyze"}
    assert job_id in run(cli_venv, system, "jobs").stdout
    assert "640" in run(cli_venv, system, "result", job_id).stdout
    health = run(cli_venv, system, "health", "--json")
    assert health.returncode == 0 and json.loads(health.stdout)["status"] == "ok"


@pytest.fixture
def slow_csm(system):
    """``slow_csm(True)``: CSM renders on the simulated nodes take a minute (unless cancelled);
    ``slow_csm(False)``, and the end of the test, make them fast again."""
    sim = system["sim"]

    def switch(slow: bool) -> None:
        sim.set_faults(node={"csm": "slow", "slow_seconds": 60} if slow else {})  # nodes launched from now on
        for instance in sim.ledger()["instances"]:
            sim.node_action(instance["workload"], faults={"csm": "slow" if slow else None, "slow_seconds": 60})

    yield switch
    switch(False)


def test_cancel_a_running_job_then_retry_it(cli_venv, system, slow_csm, tmp_path: Path):
    slow_csm(True)
    res = run(cli_venv, system, "csm", "--text", "This one takes its time.")
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip()
    wait_until(lambda: json.loads(run(cli_venv, system, "status", job_id, "--json").stdout)["status"] == "running",
               timeout=120, interval=0.5)
    res = run(cli_venv, system, "cancel", job_id, "--error", "changed my mind")
    assert res.returncode == 0 and "cancelled" in res.stderr, res.stderr
    view = json.loads(run(cli_venv, system, "status", job_id, "--json").stdout)
    assert view["status"] == "cancelled" and view["error"] == "changed my mind"
    assert run(cli_venv, system, "cancel", job_id).returncode == 1  # already final: 409

    slow_csm(False)
    res = run(cli_venv, system, "retry", job_id, "--wait", "--json", "-o", str(tmp_path / "again.mp3"))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["retry_of"] == job_id and doc["status"] == "success" and doc["id"] != job_id
    assert doc["output"] == str(tmp_path / "again.mp3") and samples.duration_of(tmp_path / "again.mp3") > 0.5


def test_the_sdk_long_polls_the_real_server(system):
    pauses: list[float] = []
    with Client(system["api"], sleep=pauses.append) as client:
        done = client.analyze(image_url=system["inputs"].url("portrait.jpg"), wait=25)
        assert done.status is JobStatus.SUCCESS and done.type is JobType.ANALYZE  # the full view, once final
        job = client.csm(text="Waiting for this one.")
        assert client.wait(job.id, timeout=120, long_poll=1).status is JobStatus.SUCCESS
    assert pauses == []  # every answer was held by the server (Preference-Applied), no client-side polling


def test_webhook_events_filter_reaches_the_server(cli_venv, system):
    receiver = system["receiver"]
    res = run(cli_venv, system, "analyze", "--image-url", system["inputs"].url("portrait.jpg"), "--notify-url",
              receiver.url, "--webhook-event", "start", "--webhook-event", "completed", "--wait", "--json")
    if res.returncode == 2 and "webhook_events_filter" in res.stdout:  # the probe: the live server's answer
        pytest.skip("this server does not accept webhook_events_filter yet (it is being built on main)")
    assert res.returncode == 0, (res.stdout, res.stderr)
    job_id = json.loads(res.stdout)["id"]
    hooks = wait_until(lambda: (found := receiver.for_job(job_id)) and len(found) >= 2 and found, timeout=30)
    statuses = [hook.json()["status"] for hook in hooks]
    assert "success" in statuses and any(status != "success" for status in statuses), statuses  # start + completed


# ---- the first hour: the README's steps and the CLI's messages, with the installed binary --------

def readme_block(start: str, end: str) -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index(start):text.index(end)]


def test_the_readme_cancel_and_retry_steps_work_as_written(cli_venv, system):
    """The walkthrough's lines run by bash as they are printed, with this stack's ports."""
    sim, inputs = system["sim"], system["inputs"]
    script = (readme_block("# cancel && retry: a job that is still running", "# end of cancel && retry")
              .replace("http://127.0.0.1:8700", sim.url)
              .replace("http://127.0.0.1:8002/portrait.jpg", inputs.url("portrait.jpg")))
    assert "8002" not in script and "8700" not in script
    try:
        res = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                             timeout=240, cwd=system["work"],
                             env={**cli_env(system), "PATH": f"{cli_venv / 'bin'}:{os.environ['PATH']}"})
    finally:
        requests_post(f"{sim.url}/admin/nodes", {"faults": {}})
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert "marked as cancelled" in res.stderr and "phases: queued" in res.stderr, res.stderr
    [new_id] = re.findall(r"^job (\S+) success$", res.stderr, re.M)
    retried = json.loads(run(cli_venv, system, "status", new_id, "--json").stdout)
    assert retried["status"] == "success" and retried["retry_of"]
    first = json.loads(run(cli_venv, system, "status", retried["retry_of"], "--json").stdout)
    assert first["status"] == "cancelled"


def requests_post(url: str, body: dict) -> None:
    import requests

    requests.post(url, json=body, timeout=10).raise_for_status()


def test_ctrl_c_during_wait_says_how_to_follow_and_the_api_logs_no_traceback(cli_venv, system):
    import signal

    sim = system["sim"]
    requests_post(f"{sim.url}/admin/nodes", {"faults": {"ollama": "slow", "slow_seconds": 60}})
    try:
        proc = subprocess.Popen([str(cli_venv / "bin" / "c3-render"), "analyze", "--image-url",
                                 system["inputs"].url("portrait.jpg"), "--wait"], env=cli_env(system),
                                cwd=system["work"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Interrupt once the job runs (the display is then holding a long poll).
        job = wait_until(lambda: next((j for j in Client(system["api"]).jobs(limit=5).jobs
                                       if j.type is JobType.ANALYZE and j.status is JobStatus.RUNNING), None),
                         timeout=120, interval=0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        requests_post(f"{sim.url}/admin/nodes", {"faults": {}})
    assert proc.returncode == 130, (out, err)
    assert f"stopped following job {job.id}" in err and f"c3-render status {job.id} --wait" in err
    assert "Traceback" not in err and out == ""
    Client(system["api"]).cancel(job.id)
    assert "Traceback" not in (system["work"] / "api.log").read_text()


def test_cli_messages_and_options_with_the_installed_binary(cli_venv, system):
    res = run(cli_venv, system, "analyze", "--image-url", system["inputs"].url("portrait.jpg"), "--wait", "--json")
    job_id = json.loads(res.stdout)["id"]
    # --url and --json after the command, --json before it.
    env = {**cli_env(system), "C3_RENDER_URL": "http://127.0.0.1:9"}
    binary = str(cli_venv / "bin" / "c3-render")
    for args in (["status", job_id, "--url", system["api"], "--json"], ["--json", "--url", system["api"], "status", job_id]):
        res = subprocess.run([binary, *args], env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and json.loads(res.stdout)["id"] == job_id, (args, res.stderr)
    # Nothing at that URL: the URL, the variable and the flag are named.
    res = subprocess.run([binary, "jobs"], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "could not reach the c3-render API at http://127.0.0.1:9" in res.stderr
    assert "C3_RENDER_URL" in res.stderr and "--url" in res.stderr and "ConnectError" not in res.stderr.split(":")[0]
    # health: a table; jobs in a pipe: one line per job, errors whole.
    health = run(cli_venv, system, "health").stdout.splitlines()
    assert health[0].split() == ["status", "ok"] and any(line.split()[:2] == ["Workers", "alive"] for line in health)
    bad = system["inputs"].base + "/status/404"
    failed = json.loads(run(cli_venv, system, "analyze", "--image-url", bad, "--wait", "--json").stdout)
    lines = run(cli_venv, system, "jobs", "--status", "failed").stdout.splitlines()
    [line] = [line for line in lines if line.startswith(failed["id"])]
    assert line.endswith(failed["error"])
