"""The `c3-render` command line against the stand-in API: outputs, --json, exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from c3render import Job
from c3render.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, JobPanel, app
from tests.support.fake_render_api import KEY, api_fixture  # noqa: F401  (the `api` fixture)


@pytest.fixture
def run(api):
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, list(args), env={"C3_RENDER_URL": api.url, "C3_RENDER_API_KEY": KEY})

    return invoke


def test_csm_wait_writes_the_file(api, run, tmp_path: Path):
    out = tmp_path / "hi.mp3"
    res = run("csm", "--text", "Hi", "--voice", "conversational_a", "--wait", "-o", str(out))
    assert res.exit_code == EXIT_OK, res.output
    assert out.read_bytes() == api.file_bytes
    assert res.stdout.strip() == str(out)
    [post] = api.requests_to("POST", "/csm")
    assert post.body == {"text": "Hi", "voice": "conversational_a"} and post.headers["x-c3-render-key"] == KEY


def test_submit_without_wait_prints_the_id(api, run):
    res = run("whisper", "--audio-url", "http://x/a.wav", "--model", "tiny", "--webhook-event", "start",
              "--webhook-event", "completed", "--max-time", "300")
    assert res.exit_code == EXIT_OK, res.output
    assert res.stdout.strip() in api.jobs
    assert api.requests_to("POST", "/whisper")[0].body == {
        "audio_url": "http://x/a.wav", "model": "tiny", "max_time": 300,
        "webhook_events_filter": ["start", "completed"]}


def test_json_output_of_a_waited_text_job(api, run):
    res = run("analyze", "--image-url", "http://x/p.jpg", "--wait", "--json")
    assert res.exit_code == EXIT_OK, res.output
    doc = json.loads(res.stdout)
    assert doc["status"] == "success" and doc["type"] == "analyze" and doc["result"] == {"text": f"text of {doc['id']}"}


def test_a_failed_job_exits_1(api, run):
    api.plan = [(0.2, {"status": "running"}), (0.5, {"status": "failed", "error": "image_url: HTTP 404 from http://x"})]
    res = run("portrait", "--image-url", "http://x/p.jpg", "--audio-url", "http://x/a.wav", "--wait")
    assert res.exit_code == EXIT_FAILED
    assert "failed: image_url: HTTP 404" in res.stderr and res.stdout == ""
    res = run("analyze", "--image-url", "http://x/p.jpg", "--wait", "--json")
    assert res.exit_code == EXIT_FAILED and json.loads(res.stdout)["error"].startswith("image_url")


def test_a_rule_the_server_enforces_is_a_usage_error_naming_the_field(run):
    res = run("csm", "--text", "a", "--monologue", "b")
    assert res.exit_code == EXIT_USAGE
    assert "text: provide exactly one of 'text' or 'monologue'" in res.stderr
    res = run("jobs", "--limit", "500", "--json")
    assert res.exit_code == EXIT_USAGE
    assert json.loads(res.stdout)["details"] == [{"field": "limit", "message": "must be 1-100"}]


def test_missing_option_is_a_usage_error(run):
    res = run("whisper")
    assert res.exit_code == EXIT_USAGE and "--audio-url" in res.stderr


def test_api_errors_exit_1(api, run):
    res = run("status", "00000000-0000-0000-0000-000000000000")
    assert res.exit_code == EXIT_FAILED and "HTTP 404" in res.stderr
    res = run("--api-key", "wrong", "jobs")
    assert res.exit_code == EXIT_FAILED and "HTTP 401" in res.stderr


def test_status_jobs_cancel_retry_result(api, run, tmp_path: Path):
    running = api.add_job(plan=[(0, {"status": "running", "phase": "render"})])
    done = api.add_job("whisper")
    assert json.loads(run("status", running.id, "--json").stdout)["phase"] == "render"
    assert "render" in run("status", running.id).stdout

    listed = json.loads(run("jobs", "--type", "whisper", "--json").stdout)
    assert [j["id"] for j in listed["jobs"]] == [done.id] and listed["next_cursor"] is None
    table = run("jobs", "--limit", "1")
    assert done.id in table.stdout and running.id not in table.stdout and "--cursor 1" in table.stderr
    assert [j["id"] for j in json.loads(run("jobs", "--limit", "1", "--all", "--json").stdout)["jobs"]] == [
        done.id, running.id]

    res = run("cancel", running.id, "--error", "changed my mind")
    assert res.exit_code == EXIT_OK and "cancelled" in res.stderr
    assert run("cancel", running.id).exit_code == EXIT_FAILED  # 409: already final

    retried = run("retry", running.id, "--json")
    assert retried.exit_code == EXIT_OK and json.loads(retried.stdout)["retry_of"] == running.id

    assert run("result", done.id).stdout.strip() == f"text of {done.id}"
    res = run("result", running.id, "--json")
    assert res.exit_code == EXIT_FAILED and json.loads(res.stdout)["status"] == "cancelled"
    out = tmp_path / "t.txt"
    assert run("result", done.id, "-o", str(out)).exit_code == EXIT_OK and out.read_text() == f"text of {done.id}"


def test_health(api, run):
    res = run("health", "--json")
    assert res.exit_code == EXIT_OK and json.loads(res.stdout)["workers"] == {"alive": 1}
    api.script("GET", "/health", (200, {"status": "degraded", "queue": {"depth": 9}}))
    res = run("health")
    assert res.exit_code == EXIT_FAILED and re.search(r"^Queue\s+depth\s+9\s*$", res.stdout, re.M), res.stdout


def test_health_is_a_table_with_a_line_per_figure_and_per_gpu(api, run):
    api.script("GET", "/health", (200, {
        "status": "ok", "queue": {"messages": 2, "oldest_queued_seconds": 12.5},
        "jobs": {"queued": 2, "running": 1},
        "workers": {"alive": 1, "list": [{"id": "w-1", "job": "j-9", "last_beat_seconds": 3.5}]},
        "gpus": {"instances": 1, "by_state": {"running": 1},
                 "fleet": [{"slot": "a1", "state": "running", "busy": True, "billed_seconds": 90}]}}))
    lines = [line.rstrip() for line in run("health").stdout.splitlines()]
    assert re.fullmatch(r"status\s+ok", lines[0])
    assert any(re.fullmatch(r"Queue\s+messages\s+2", line) for line in lines)
    assert any(re.fullmatch(r"\s+oldest queued\s+12.5 s", line) for line in lines)
    assert any(re.fullmatch(r"GPU instances\s+instances\s+1", line) for line in lines)
    assert any(re.fullmatch(r"\s+by state\s+running 1", line) for line in lines)
    assert any(re.fullmatch(r"\s+slot a1\s+running, busy, billed 90 s", line) for line in lines)
    assert any(re.fullmatch(r"\s+w-1\s+j-9, beat 3.5 s ago", line) for line in lines)
    assert "{" not in "\n".join(lines)


def test_url_key_and_json_work_before_or_after_the_command(api, run):
    done = api.add_job("whisper")
    env = {"C3_RENDER_URL": "http://127.0.0.1:9", "C3_RENDER_API_KEY": "wrong"}  # both overridden below
    runner = CliRunner()
    for args in (["--url", api.url, "--api-key", KEY, "--json", "status", done.id],
                 ["status", done.id, "--url", api.url, "--api-key", KEY, "--json"],
                 [f"--url={api.url}", "status", "--json", done.id, f"--api-key={KEY}"]):
        res = runner.invoke(app, args, env=env)
        assert res.exit_code == EXIT_OK, (args, res.output)
        assert json.loads(res.stdout)["id"] == done.id


def test_a_connection_error_names_the_url_and_how_to_set_it():
    runner = CliRunner()
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens
    res = runner.invoke(app, ["jobs"], env={"C3_RENDER_URL": dead, "C3_RENDER_API_KEY": KEY})
    assert res.exit_code == EXIT_FAILED
    assert f"could not reach the c3-render API at {dead}" in res.stderr
    assert "C3_RENDER_URL" in res.stderr and "--url" in res.stderr and "Traceback" not in res.output
    res = runner.invoke(app, ["jobs", "--json"], env={"C3_RENDER_URL": dead})
    assert res.exit_code == EXIT_FAILED and "C3_RENDER_URL" in json.loads(res.stdout)["hint"]


def test_a_401_names_the_key_variable_and_flag(api, run):
    res = run("--api-key", "wrong", "jobs")
    assert res.exit_code == EXIT_FAILED and "HTTP 401" in res.stderr
    assert "C3_RENDER_API_KEY" in res.stderr and "--api-key" in res.stderr and "refused" in res.stderr
    res = CliRunner().invoke(app, ["jobs"], env={"C3_RENDER_URL": api.url, "C3_RENDER_API_KEY": ""})
    assert res.exit_code == EXIT_FAILED and "no key was given: set C3_RENDER_API_KEY or pass --api-key" in res.stderr


LONG_ERROR = "image_url: HTTP 404 from http://127.0.0.1:8002/missing.jpg (the file is not there) " + "x" * 40


def test_jobs_error_column_in_a_pipe_is_whole(api, run):
    failed = api.add_job("analyze", plan=[(0, {"status": "failed", "error": LONG_ERROR})])
    out = run("jobs").stdout  # CliRunner's stdout is not a terminal: a pipe
    [line] = [line for line in out.splitlines() if line.startswith(failed.id)]
    assert line.endswith(LONG_ERROR) and "failed" in line
    assert out.splitlines()[0].split() == ["id", "type", "status", "created", "error"]


def test_jobs_error_is_readable_on_an_80_column_terminal(api, monkeypatch):
    from c3render import cli

    failed = api.add_job("analyze", plan=[(0, {"status": "failed", "error": LONG_ERROR})])
    api.add_job("whisper")
    console = Console(record=True, width=80, force_terminal=True)
    monkeypatch.setattr(cli, "stdout", console)
    res = CliRunner().invoke(app, ["jobs"], env={"C3_RENDER_URL": api.url, "C3_RENDER_API_KEY": KEY})
    assert res.exit_code == EXIT_OK, res.output
    lines = console.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    at = next(n for n, line in enumerate(lines) if line.startswith(failed.id))
    assert lines[at + 1].startswith("    error: image_url: HTTP 404 from http://127.0.0.1:8002/missing.jpg")
    assert lines[at + 1].endswith("…")


def test_the_live_display_and_the_end_show_every_phase():
    job = Job.model_validate({"id": "j-2", "status": "success", "type": "csm",
                              "phases": {"queued": "2026-01-01T00:00:00Z", "downloading": "2026-01-01T00:00:00.5Z",
                                         "rendering": "2026-01-01T00:00:01Z", "uploading": "2026-01-01T00:00:03Z"},
                              "finished_at": "2026-01-01T00:00:03.25Z"})
    from c3render.cli import phase_trail

    assert phase_trail(job) == "queued 0.5s > downloading 0.5s > rendering 2.0s > uploading 0.2s"
    console = Console(record=True, width=200)
    console.print(JobPanel(job))
    assert "phases: queued 0.5s > downloading 0.5s > rendering 2.0s > uploading 0.2s" in console.export_text()


def test_ctrl_c_while_waiting_says_how_to_follow_the_job_again(api, run, monkeypatch):
    from c3render.client import Client

    job = api.add_job("csm", plan=[(60, {"status": "running"})])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Client, "wait", interrupted)
    res = run("status", job.id, "--wait")
    assert res.exit_code == 130
    assert f"stopped following job {job.id}" in res.stderr and f"c3-render status {job.id} --wait" in res.stderr
    assert res.exc_info is None or res.exc_info[0] is SystemExit


def test_the_live_display_shows_status_phase_queue_position_and_progress():
    job = Job.model_validate({"id": "j-1", "status": "queued", "type": "portrait", "queue_position": 3,
                              "queue_position_approximate": True})
    panel = JobPanel(job)
    console = Console(record=True, width=120)
    console.print(panel)
    first = console.export_text()
    assert "portrait j-1" in first and "queued" in first and "queue position 3 (approx.)" in first
    panel.update(Job.model_validate({"id": "j-1", "status": "running", "type": "portrait", "phase": "render",
                                     "progress": 0.42, "attempts": 2}))
    console.print(panel)
    second = console.export_text()
    assert "running" in second and "phase: render" in second and "42%" in second and "attempt 2" in second
    assert "queue position" not in second
