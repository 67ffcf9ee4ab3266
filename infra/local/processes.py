"""Start, wait for and stop the local system's processes (used by `make run` and tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import requests

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class StartFailed(RuntimeError):
    """A server did not come up: its process exited, or it never answered."""


class StartTimeout(StartFailed, TimeoutError):
    pass


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until ``url`` answers at all (any status)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StartFailed(f"process for {url} exited with code {proc.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.05)
    raise StartTimeout(f"{url} did not answer within {timeout}s")


def start(args: list[str], env: dict[str, str] | None = None, log_path: Path | None = None,
          cwd: Path = ROOT, stdout: IO[bytes] | None = None, clean: bool = False) -> subprocess.Popen:
    """Start a process in its own session, output appended to ``log_path``; with ``clean``,
    its environment is ``env`` alone (not this process's plus ``env``)."""
    out = stdout or (open(log_path, "ab") if log_path else subprocess.DEVNULL)
    return subprocess.Popen(args, env=dict(env or {}) if clean else {**os.environ, **(env or {})}, cwd=cwd, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_moto(port: int, log_path: Path | None = None, iam: bool = False) -> subprocess.Popen:
    proc = start([sys.executable, "-m", "infra.local.moto_server", "-H", "127.0.0.1", "-p", str(port),
                  *(["--iam"] if iam else [])], log_path=log_path)
    wait_http(f"http://127.0.0.1:{port}/moto-api/", proc=proc)
    return proc


def start_api(port: int, env: dict[str, str], log_path: Path | None = None,
              edge_acl: Path | None = None) -> subprocess.Popen:
    """Serve app.py with Chalice's local server (stage dev) on 127.0.0.1; with ``edge_acl``
    (app.yaml's web ACL, resolved, as JSON) behind its WAF rate rules (infra/local/edge.py)."""
    edge = ["--edge-acl", str(edge_acl)] if edge_acl is not None else []
    proc = start([sys.executable, "-m", "infra.local.api_server", "--host", "127.0.0.1", "--port", str(port),
                  "--stage", "dev", *edge], env=env, log_path=log_path)
    wait_http(f"http://127.0.0.1:{port}/", timeout=60, proc=proc)
    return proc
