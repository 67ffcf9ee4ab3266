"""`make run`: the whole system on this machine.

AWS on a moto server (127.0.0.1:4566) unless AWS_ENDPOINT_URL points at an existing
emulator or LOCALSTACK=1 asks for LocalStack + DynamoDB Local; the API with
`chalice local` on 127.0.0.1:8000; WORKERS worker processes (1), each restarted when
it exits; the SQS-triggered handlers polled locally; and the Comput3 simulator when no
real C3_API_KEY is set. ALLOW_PRIVATE_URLS defaults to true here (local mode)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydantic import ValidationError

from chalicelib.platform.settings import EgressSettings, Settings
from infra.local import processes
from infra.local.processes import StartFailed
from infra.local.stack import create_stack

ROOT = processes.ROOT
RUN_DIR = Path(os.environ.get("RUN_DIR") or ROOT / ".run")  # logs, samples, health files (tests: their own)
API_PORT = int(os.environ.get("API_PORT", "8000"))
MOTO_PORT = int(os.environ.get("MOTO_PORT", "4566"))
SIM_PORT = int(os.environ.get("SIMULATOR_PORT", "8700"))
SAMPLES_PORT = int(os.environ.get("SAMPLES_PORT", "8002"))
QUICK_EXIT = 10.0  # a worker dying sooner than this after its start is restarted with a delay
MAX_BACKOFF = 30.0


def say(message: str) -> None:
    print(f"[make run] {message}", flush=True)


def banner(lines: list[str]) -> None:
    width = max(len(line) for line in lines) + 4
    print("\n" + "=" * width, flush=True)
    for line in lines:
        print(f"  {line}", flush=True)
    print("=" * width + "\n", flush=True)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    restart: bool = False  # started again when it exits (workers), instead of stopping all
    started: float = 0.0
    backoff: float = 0.0
    restart_at: float | None = None


class Supervisor:
    """Children with prefixed, logged output; stopping one way for all. A restartable
    child that exits is started again (after a growing delay when it keeps dying within
    QUICK_EXIT seconds); any other child exiting ends ``wait_any``."""

    def __init__(self, log_dir: Path = RUN_DIR / "logs", report: Callable[[str], None] = say,
                 first_delay: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.children: list[Child] = []
        self.cleanups: list[Callable[[], None]] = []
        self.log_dir = log_dir
        self.report = report
        self.first_delay = first_delay
        self.clock = clock

    def spawn(self, name: str, args: list[str], env: dict[str, str], restart: bool = False) -> subprocess.Popen:
        child = Child(name, self._start(name, args, env), args, env, restart, self.clock())
        self.children.append(child)
        return child.proc

    def adopt(self, name: str, proc: subprocess.Popen) -> None:
        self.children.append(Child(name, proc, started=self.clock()))

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        proc = subprocess.Popen(args, env={**os.environ, **env}, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=self._pump, args=(name, proc, self.log_dir / f"{name}.log"), daemon=True).start()
        return proc

    @staticmethod
    def _pump(name: str, proc: subprocess.Popen, log_path: Path) -> None:
        assert proc.stdout is not None
        with open(log_path, "ab") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if line.startswith(b'{"_aws"'):
                    continue  # an EMF metric line (chalicelib/platform/metrics.py): kept in the log, not on the console
                sys.stdout.write(f"[{name}] {line.decode(errors='replace')}")
                sys.stdout.flush()

    def wait_any(self, interval: float = 0.5) -> str:
        """Restart restartable children as they exit; return the name of the first
        other child that exits."""
        while True:
            for child in self.children:
                if child.proc.poll() is None:
                    continue
                if not child.restart:
                    return child.name
                self._restart(child)
            time.sleep(interval)

    def _restart(self, child: Child) -> None:
        now = self.clock()
        if child.restart_at is None:
            quick = now - child.started < QUICK_EXIT
            child.backoff = min(child.backoff * 2 or self.first_delay, MAX_BACKOFF) if quick else 0.0
            child.restart_at = now + child.backoff
            delay = f" in {child.backoff:g} s" if child.backoff else ""
            self.report(f"{child.name} exited (code {child.proc.returncode}); restarting{delay}")
        if now >= child.restart_at:
            child.proc = self._start(child.name, child.args, child.env)
            child.started, child.restart_at = now, None

    def stop_all(self) -> None:
        for child in reversed(self.children):
            if child.proc.poll() is None:
                self.report(f"stopping {child.name}")
                processes.stop(child.proc, timeout=30 if child.name.startswith("worker") else 10)
        for cleanup in reversed(self.cleanups):
            cleanup()


def aws_profile(sup: Supervisor) -> dict[str, str]:
    env = {k: os.environ.get(k, v) for k, v in
           {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}.items()}
    chosen = {k: v for k, v in os.environ.items() if k == "AWS_ENDPOINT_URL" or k.startswith("AWS_ENDPOINT_URL_")}
    if chosen:
        say("using the AWS endpoints you set: " + ", ".join(f"{k}={v}" for k, v in sorted(chosen.items())))
        return env
    if os.environ.get("LOCALSTACK", "") not in ("", "0"):
        from infra.local.emulators import start_localstack_profile

        say("starting LocalStack (SQS, S3) + DynamoDB Local (LOCALSTACK=1)")
        endpoints, stop = start_localstack_profile(RUN_DIR / "emulators")
        sup.cleanups.append(stop)
        return {**env, **endpoints}
    say(f"starting moto server on 127.0.0.1:{MOTO_PORT}")
    sup.adopt("moto", processes.start_moto(MOTO_PORT, RUN_DIR / "logs" / "moto.log"))
    return {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{MOTO_PORT}"}


def comput3_profile(sup: Supervisor) -> dict[str, str]:
    if os.environ.get("C3_API_KEY"):
        say("C3_API_KEY is set: jobs run on REAL Comput3 GPUs and cost money")
        return {}
    banner([
        "NO C3_API_KEY SET: using the LOCAL COMPUT3 SIMULATOR",
        f"simulated control plane on http://127.0.0.1:{SIM_PORT}/api/v0",
        "GPU nodes, CSM, Whisper, ComfyUI and the vision model are SIMULATED:",
        "results are real files, but synthetic (tones, still-image videos, canned text).",
        "Set C3_API_KEY=<your key> to use real Comput3 GPUs.",
    ])
    sim = sup.spawn("simulator", [sys.executable, "-m", "infra.local.simulator", "--port", str(SIM_PORT)], {})
    processes.wait_http(f"http://127.0.0.1:{SIM_PORT}/admin/ledger", timeout=60, proc=sim)
    return {
        "C3_API_KEY": "simulated-local-key",
        "C3_API_URL": f"http://127.0.0.1:{SIM_PORT}/api/v0",
        "C3_NODE_URL": "http://{node}",
        "C3_COMFYUI_URL": "http://{node}/comfyui",
        "C3_OLLAMA_URL": "http://{node}/ollama",
    }


def ports_needed() -> dict[str, int]:
    """The variable -> port of every server `make run` is about to start here."""
    ports = {"API_PORT": API_PORT, "SAMPLES_PORT": SAMPLES_PORT}
    endpoints = any(k == "AWS_ENDPOINT_URL" or k.startswith("AWS_ENDPOINT_URL_") for k in os.environ)
    if not endpoints and os.environ.get("LOCALSTACK", "") in ("", "0"):
        ports["MOTO_PORT"] = MOTO_PORT
    if not os.environ.get("C3_API_KEY"):
        ports["SIMULATOR_PORT"] = SIM_PORT
    return ports


def busy_ports() -> str | None:
    """Why `make run` cannot start, naming each busy port and the variable that moves it;
    None when every port is free. Checked before anything starts or prints."""
    busy = [(name, port) for name, port in ports_needed().items() if processes.port_in_use(port)]
    if not busy:
        return None
    lines = [f"port {port} is busy (something already listens on 127.0.0.1:{port}): stop it, or run "
             f"`{name}=<free port> make run`" for name, port in busy]
    return "\n".join(f"[make run] {line}" for line in lines)


def main() -> int:
    problem = busy_ports()
    if problem:
        print(problem, file=sys.stderr, flush=True)
        return 2
    (RUN_DIR / "logs").mkdir(parents=True, exist_ok=True)
    workers, allow_private = worker_count(), private_urls_allowed()
    sup = Supervisor()
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # also when started with SIGINT ignored (background)
    try:
        env = aws_profile(sup)
        os.environ.update(env)
        settings = Settings()
        urls = create_stack(settings)
        say(f"resources ready: table {settings.jobs_table}, bucket {settings.results_bucket}, queue {urls['jobs']}")
        env.update(comput3_profile(sup))
        env.update(samples_profile(sup))
        env.update({"OUTPUT_DIR": str(RUN_DIR / "output"), "ALLOW_PRIVATE_URLS": str(allow_private).lower()})
        # Result links (GET /results/{id}) point here and are signed with a secret for this run.
        env.update({"PUBLIC_API_URL": os.environ.get("PUBLIC_API_URL", f"http://127.0.0.1:{API_PORT}"),
                    "RESULT_LINK_SECRET": os.environ.get("RESULT_LINK_SECRET", secrets.token_urlsafe(24))})
        os.environ.update(env)
        say(f"starting the API on http://127.0.0.1:{API_PORT}")
        api = processes.start_api(API_PORT, env, RUN_DIR / "logs" / "api.log", edge_acl_file())
        sup.adopt("api", api)
        for n in range(1, workers + 1):
            sup.spawn(f"worker-{n}", [sys.executable, "-m", "worker_runtime"],
                      {**env, "WORKER_HEALTH_FILE": str(RUN_DIR / f"worker-{n}.health")}, restart=True)
        sup.spawn("handlers", [sys.executable, "-m", "infra.local.lambda_poller"], env)
        walkthrough(settings, workers, allow_private)
        name = sup.wait_any()
        say(f"{name} exited; stopping everything (its log: {RUN_DIR / 'logs' / name}.log)")
        return 1
    except StartFailed as exc:
        print(f"[make run] {exc}; stopping everything (logs: {RUN_DIR / 'logs'})", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        say("interrupted; stopping")
        return 0
    finally:
        sup.stop_all()


def samples_profile(sup: Supervisor) -> dict[str, str]:
    """Serve sample inputs (image, speech) for the walkthrough on 127.0.0.1."""
    from infra.local.samples import write_samples

    folder = write_samples(RUN_DIR / "samples")
    sup.spawn("samples", [sys.executable, "-m", "http.server", str(SAMPLES_PORT), "--bind", "127.0.0.1",
                          "--directory", str(folder)], {})
    processes.wait_http(f"http://127.0.0.1:{SAMPLES_PORT}/", timeout=15)
    return {}


def edge_acl_file() -> Path | None:
    """API_EDGE=on: the API answers behind app.yaml's WAF rate rules (their defaults), as on
    AWS; off by default, so that local load (make bench, scripts) is not throttled."""
    raw = os.environ.get("API_EDGE", "").strip().lower() or "off"
    if raw not in ("on", "off"):
        raise StartFailed(f"API_EDGE={raw!r}: must be on or off")
    if raw == "off":
        return None
    from infra.local.edge import web_acl_from_template

    path = RUN_DIR / "edge-acl.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(web_acl_from_template()))
    return path


def worker_count() -> int:
    """WORKERS (make run WORKERS=K): how many worker processes; 1 by default."""
    raw = os.environ.get("WORKERS", "").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        sys.exit(f"[make run] WORKERS={raw!r}: must be a whole number of at least 1")
    return int(raw)


def private_urls_allowed() -> bool:
    """ALLOW_PRIVATE_URLS as the user set it; true (local mode) when unset."""
    raw = os.environ.get("ALLOW_PRIVATE_URLS", "").strip() or "true"
    try:
        return EgressSettings(ALLOW_PRIVATE_URLS=raw).allow_private_urls
    except ValidationError:
        sys.exit(f"[make run] ALLOW_PRIVATE_URLS={raw!r}: must be true or false")


def walkthrough(settings: Settings, workers: int, allow_private: bool) -> None:
    api = f"http://127.0.0.1:{API_PORT}"
    samples = f"http://127.0.0.1:{SAMPLES_PORT}"
    key = f' -H "X-C3-RENDER-KEY: {settings.api_key_list[0]}"' if settings.api_key_list else ""
    mode = ("ALLOW_PRIVATE_URLS=true (local mode): user URLs and webhooks may reach 127.0.0.1 and private networks"
            if allow_private else
            "ALLOW_PRIVATE_URLS=false: user URLs and webhooks to private addresses are REFUSED "
            "(the 127.0.0.1 samples too)")
    page_key = ("enter one of the keys in C3_RENDER_API_KEY" if settings.api_key_list else
                "C3_RENDER_API_KEY is unset: any key opens it")
    banner([
        f"c3-render is up.  API: {api}   OpenAPI: {api}/openapi.json",
        f"Web page: {api}/ui   ({page_key})",
        f"AWS endpoint: {os.environ.get('AWS_ENDPOINT_URL') or os.environ.get('AWS_ENDPOINT_URL_SQS')}",
        f"Workers: {workers} (worker-1..{workers}, restarted when they exit)  Logs: {RUN_DIR / 'logs'}/",
        mode,
        f"Sample inputs: {samples}/portrait.jpg  {samples}/speech.wav",
        "",
        "Try:",
        f"  curl -s -X POST {api}/csm{key} -H 'Content-Type: application/json' \\",
        "       -d '{\"text\": \"Hello from c3-render\"}'",
        f"  curl -s {api}/status/JOB_ID{key}",
        f"  curl -s {api}/result/JOB_ID{key}",
        "Press Ctrl-C to stop everything.",
    ])


if __name__ == "__main__":
    sys.exit(main())
