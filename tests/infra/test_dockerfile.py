"""worker_runtime/Dockerfile, checked without a Docker engine: what it copies exists and
passes the build-context filter, what it installs is pinned and covers every module the
worker imports, it runs as non-root with a health check the worker really feeds."""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata as md
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.aws.template import APP_TEMPLATE, load_template
from tests.support.harness import start_worker_process, wait_until

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "worker_runtime" / "Dockerfile"
IGNORE = ROOT / "worker_runtime" / "Dockerfile.dockerignore"
LOCAL_PACKAGES = {"chalicelib", "worker_runtime"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def of(keyword: str) -> list[str]:
    return [args for k, args in instructions() if k == keyword]


def requirement_lines(path: Path) -> list[str]:
    """Requirement specifiers of ``path``, following ``-r`` includes."""
    out = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r"):
            out += requirement_lines(path.parent / line[2:].strip())
        else:
            out.append(line)
    return out


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_base_image_is_slim_and_pinned():
    [base] = of("FROM")
    args = dict(a.split("=", 1) for a in of("ARG") if "=" in a)
    image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    name, _, tag = image.partition(":")
    assert name == "python" and re.fullmatch(r"3\.\d+-slim-[a-z]+", tag), image
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in tag  # the version the suite runs on


def test_copied_files_exist_and_pass_the_build_context_filter():
    patterns = [p.strip() for p in IGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]

    def sent(path: str) -> bool:
        included = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            pat = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
                included = negate
        return included

    copies = of("COPY")
    assert copies
    for args in copies:
        *sources, _dest = args.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert sent(source.rstrip("/")), f"COPY {source}: excluded by {IGNORE.name}"
    assert not sent(".venv") and not sent("tests/api/test_api.py")  # the filter does filter


def test_installed_requirements_are_pinned_and_cover_the_workers_imports():
    copied = {s for args in of("COPY") for s in args.split()[:-1]}
    installs = [a for a in of("RUN") if "pip install" in a]
    [install] = installs
    files = re.findall(r"-r\s+(\S+)", install)
    assert files == ["requirements-worker.txt"] and set(files) <= copied
    requirements = requirement_lines(ROOT / files[0])
    assert "requirements.txt" in copied  # reached through -r
    unpinned = [r for r in requirements if not re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+==[\w.]+", r)]
    assert unpinned == []
    pinned = {normalize(re.split(r"[\[=]", r)[0]) for r in requirements}
    provided = dependency_closure(pinned)
    missing = {}
    for module in third_party_imports():
        dists = {normalize(d) for d in md.packages_distributions().get(module, [])}
        if not dists & provided:
            missing[module] = sorted(dists) or ["(not installed here either)"]
    assert missing == {}, f"imported by the worker but not installed by {files[0]}: {missing}"


def dependency_closure(names: set[str]) -> set[str]:
    """The pinned distributions plus everything they depend on (as installed here)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for req in requires:
            if "extra ==" in req:
                continue
            todo.append(normalize(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0]))
    return seen


def third_party_imports() -> set[str]:
    """Top-level non-stdlib modules imported by the code the worker runs: all of
    worker_runtime, and the chalicelib modules it reaches."""
    found: set[str] = set()
    todo = [p for p in (ROOT / "worker_runtime").rglob("*.py")]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen or "__pycache__" in path.parts:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            elif isinstance(node, ast.ImportFrom) and node.level > 0 and path.parent.name == "chalicelib":
                modules = [f"chalicelib.{node.module}"] if node.module else []
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in LOCAL_PACKAGES:
                    target = ROOT / Path(*module.split("."))
                    todo += [p for p in (target.with_suffix(".py"), target / "__init__.py") if p.exists()]
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.add(top)
    return found


def test_runs_as_non_root_with_sigterm_and_the_health_check():
    users = of("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    order = [k for k, _ in instructions()]
    assert order.index("USER") > max(i for i, k in enumerate(order) if k == "RUN")
    assert of("STOPSIGNAL") == ["SIGTERM"]
    [health] = of("HEALTHCHECK")
    assert health.endswith('CMD ["python", "-m", "worker_runtime.health"]')
    assert of("CMD") == ['["python", "-m", "worker_runtime"]']
    assert (ROOT / "worker_runtime" / "health.py").exists() and (ROOT / "worker_runtime" / "__main__.py").exists()
    # The ECS task definition checks the same file the image points the worker at.
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(of("ENV"))))
    container = load_template(APP_TEMPLATE)["Resources"]["WorkerTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    ecs_env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert ecs_env["WORKER_HEALTH_FILE"] == env["WORKER_HEALTH_FILE"]
    assert env["OUTPUT_DIR"] in [m["ContainerPath"] for m in container["MountPoints"]]


def health(path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker_runtime.health"], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "WORKER_HEALTH_FILE": str(path), **env})


def test_health_check_reports_fresh_stale_and_missing(tmp_path):
    signal_file = tmp_path / "health"
    assert health(signal_file).returncode == 1  # not written yet
    signal_file.write_text("x")
    assert health(signal_file).returncode == 0
    old = time.time() - 120
    os.utime(signal_file, (old, old))
    stale = health(signal_file, WORKER_HEALTH_MAX_AGE="60")
    assert stale.returncode == 1 and "limit is 60 s" in stale.stdout
    # Default limit: a long poll + 3 heartbeat intervals (15 s) + the upload margin.
    assert health(signal_file, RECEIVE_WAIT_SECONDS="1", WORKER_HEALTH_SETUP_MARGIN="110").returncode == 0
    assert health(signal_file, RECEIVE_WAIT_SECONDS="1", WORKER_HEALTH_SETUP_MARGIN="90").returncode == 1


@pytest.mark.integration
def test_a_running_worker_feeds_the_health_check_and_stops_on_sigterm(stack_env, tmp_path):
    signal_file = tmp_path / "health"
    proc = start_worker_process(stack_env, tmp_path / "worker.log", WORKER_HEALTH_FILE=str(signal_file),
                                OUTPUT_DIR=str(tmp_path / "out"))
    try:
        wait_until(signal_file.exists, timeout=30)
        first = signal_file.stat().st_mtime
        assert health(signal_file, WORKER_HEALTH_MAX_AGE="5").returncode == 0
        # Touched on every loop (each empty long poll is RECEIVE_WAIT_SECONDS=1 here).
        wait_until(lambda: signal_file.stat().st_mtime > first, timeout=15)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
