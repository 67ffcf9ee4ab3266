"""The SDK's submit_batch()/wait_batch() and `c3-render batch FILE.jsonl --wait` against the
real API (chalice local on the moto server) with a worker and the deliveries handler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from c3render import Client
from c3render.cli import EXIT_OK, EXIT_USAGE, app
from tests.support import procs
from tests.support.harness import ThreadWorker

pytestmark = pytest.mark.integration


@pytest.fixture
def api(stack_env, tmp_path):
    port = procs.free_port()
    proc = procs.start_api(port, {**stack_env, "ALLOW_PRIVATE_URLS": "true"}, tmp_path / "api.log")
    yield f"http://127.0.0.1:{port}"
    procs.stop(proc)


def test_sdk_submits_a_batch_and_waits_for_it(stack_env, api, receiver):
    items = [{"type": "csm", "params": {"text": "a"}},
             {"type": "whisper", "params": {"audio_url": "notaurl"}},
             {"type": "csm", "params": {"text": "b"}, "idempotency_key": "sdk-b"}]
    with ThreadWorker(stack_env), Client(api) as c3:
        answer = c3.submit_batch(items, priority="high", notify_url=receiver.url)
        assert [a.accepted for a in answer.items] == [True, False, True]
        assert answer.items[1].details[0]["field"] == "items.1.params.audio_url"
        views = []
        done = c3.wait_batch(answer.id, timeout=60, on_update=views.append, poll_interval=0.2)
        assert done.completed and done.counts == {"success": 2} and done.total == 2
        assert views[-1] is done and c3.status(done.jobs[0]).priority == "high"


def test_cli_batch_file_with_wait_shows_progress_and_exits_by_outcome(stack_env, api, tmp_path: Path):
    lines = [json.dumps({"type": "csm", "params": {"text": f"line {n}"}}) for n in range(3)]
    good = tmp_path / "jobs.jsonl"
    good.write_text("\n".join(["# three jobs", *lines, ""]))
    runner = CliRunner()
    env = {"C3_RENDER_URL": api}
    with ThreadWorker(stack_env):
        res = runner.invoke(app, ["batch", str(good), "--wait", "--priority", "low"], env=env)
        assert res.exit_code == EXIT_OK, res.output
        # (The worker's threads log to the same stdout here: only the command's own lines count.)
        printed = [line.split("\t") for line in res.stdout.splitlines() if "\t" in line and line[0].isdigit()]
        assert [n for n, _ in printed] == ["2", "3", "4"] and len({i for _, i in printed}) == 3
        assert "jobs final" in res.stderr and "3/3" in res.stderr and "success=3" in res.stderr
        bad = tmp_path / "bad.jsonl"
        bad.write_text(lines[0] + "\n" + json.dumps({"type": "csm", "params": {"text": "x", "topk": 0}}) + "\n")
        res = runner.invoke(app, ["batch", str(bad), "--json"], env=env)
        assert res.exit_code == EXIT_USAGE
        # The in-process worker's metric lines share captured stdout: read the CLI's document only.
        doc, _ = json.JSONDecoder().raw_decode(res.stdout[res.stdout.index('{\n  "batches"'):])
        assert doc["batches"][0]["accepted"] == 1
        assert doc["batches"][0]["items"][1]["details"][0]["field"] == "items.1.params.topk"
        broken = tmp_path / "broken.jsonl"
        broken.write_text("{not json\n")
        res = runner.invoke(app, ["batch", str(broken)], env=env)
        assert res.exit_code == EXIT_USAGE and "line 1" in res.output


def test_every_submit_command_takes_priority(api):
    res = CliRunner().invoke(app, ["analyze", "--image-url", "https://x.org/a.jpg", "--priority", "high"],
                             env={"C3_RENDER_URL": api})
    assert res.exit_code == EXIT_OK, res.output
    with Client(api) as c3:
        assert c3.status(res.stdout.strip()).priority == "high"
    res = CliRunner().invoke(app, ["analyze", "--image-url", "https://x.org/a.jpg", "--priority", "urgent"],
                             env={"C3_RENDER_URL": api})
    assert res.exit_code == EXIT_USAGE and "priority" in res.stderr
