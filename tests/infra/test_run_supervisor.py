"""`make run`'s supervisor: a worker that exits is restarted (and says so), any other
child exiting ends the wait, and stop_all stops everything. Real child processes."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

import pytest

from infra.local.run import Supervisor
from tests.support.harness import wait_until

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]


def test_a_worker_is_restarted_and_any_other_exit_ends_the_wait(tmp_path: Path) -> None:
    lines: list[str] = []
    sup = Supervisor(log_dir=tmp_path, report=lines.append, first_delay=0)
    try:
        first = sup.spawn("worker-2", SLEEPER, {}, restart=True)
        api = sup.spawn("api", SLEEPER, {})
        ended: list[str] = []
        waiter = threading.Thread(target=lambda: ended.append(sup.wait_any(interval=0.02)), daemon=True)
        waiter.start()
        log = tmp_path / "worker-2.log"
        wait_until(lambda: log.exists() and log.read_text().count("up") == 1)

        os.kill(first.pid, signal.SIGKILL)
        restarted = wait_until(lambda: sup.child("worker-2").proc.pid != first.pid and sup.child("worker-2").proc)
        assert lines == ["worker-2 exited (code -9); restarting"]
        assert restarted.poll() is None and ended == []
        wait_until(lambda: log.read_text().count("up") == 2)  # one log for both runs

        api.kill()
        waiter.join(timeout=10)
        assert ended == ["api"]
        assert restarted.poll() is None  # the wait ended; stopping is stop_all's job
    finally:
        sup.stop_all()
    assert all(child.proc.poll() is not None for child in sup.children)
    assert "stopping worker-2" in lines


def test_a_worker_that_keeps_dying_is_restarted_with_a_growing_delay(tmp_path: Path) -> None:
    now = [0.0]
    lines: list[str] = []
    sup = Supervisor(log_dir=tmp_path, report=lines.append, first_delay=1, clock=lambda: now[0])
    crash = [sys.executable, "-c", "raise SystemExit(3)"]
    try:
        sup.spawn("worker-1", crash, {}, restart=True)
        child = sup.child("worker-1")
        for expected in (1, 2, 4):
            wait_until(lambda: child.proc.poll() is not None)
            before = child.proc
            sup._restart(child)
            assert lines[-1] == f"worker-1 exited (code 3); restarting in {expected} s"
            now[0] += expected - 0.1
            sup._restart(child)
            assert child.proc is before  # not yet
            now[0] += 0.1
            sup._restart(child)
            assert child.proc is not before
    finally:
        sup.stop_all()


def test_api_edge_chooses_the_templates_web_acl_or_none(tmp_path: Path, monkeypatch) -> None:
    from infra.local import run
    from infra.local.processes import StartFailed

    monkeypatch.setattr(run, "RUN_DIR", tmp_path)
    monkeypatch.delenv("API_EDGE", raising=False)
    assert run.edge_acl_file() is None
    monkeypatch.setenv("API_EDGE", "on")
    path = run.edge_acl_file()
    assert path is not None and path.parent == tmp_path
    acl = json.loads(path.read_text())
    assert [r["Name"] for r in acl["Rules"]] == ["per-address", "per-key-header", "per-key-bearer",
                                                 "per-address-without-key"]
    monkeypatch.setenv("API_EDGE", "yes")
    with pytest.raises(StartFailed, match="API_EDGE='yes': must be on or off"):
        run.edge_acl_file()
