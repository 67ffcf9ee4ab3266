"""A small stand-in for the c3-render API on 127.0.0.1, for the SDK and CLI tests: the routes'
contract (README "API"), jobs that follow a plan in time, and scripted answers.

    api = FakeRenderAPI(key="k").start()
    api.script("GET", "/status/*", (429, {"error": "slow down"}, {"Retry-After": "1"}))
    api.plan = [(0.5, {"status": "running", "phase": "render"}), (1.0, {"status": "success"})]

Scripted answers are given first, one per request; then the contract applies. Every request is
recorded (``api.seen``). ``honour_wait`` decides whether ``Prefer: wait`` is applied.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

KEY = "test-key"
TERMINAL = {"success", "failed", "cancelled", "timed_out"}
MEDIA = {"csm": ".mp3", "portrait": ".mp4"}


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    at: float


@dataclass
class FakeJob:
    id: str
    type: str
    params: dict[str, Any]
    created: float
    plan: list[tuple[float, dict[str, Any]]]
    overrides: dict[str, Any] = field(default_factory=dict)  # set by the client (cancel)
    retry_of: str | None = None

    def view(self, now: float) -> dict[str, Any]:
        view: dict[str, Any] = {"id": self.id, "status": "queued", "type": self.type, "attempts": 0,
                                "created_at": "2030-01-01T00:00:00.000+00:00",
                                "complete_by": "2030-01-01T01:00:00.000+00:00", "max_time": 1200}
        for at, fields in self.plan:
            if now - self.created >= at:
                view.update(fields)
        view.update(self.overrides)
        if self.retry_of:
            view["retry_of"] = self.retry_of
        return view

    def final_at(self) -> float | None:
        if self.overrides.get("status") in TERMINAL:
            return self.created
        ends = [at for at, fields in self.plan if fields.get("status") in TERMINAL]
        return self.created + min(ends) if ends else None


class FakeRenderAPI:
    def __init__(self, key: str | None = None, honour_wait: bool = True):
        self.key = key
        self.honour_wait = honour_wait
        self.plan: list[tuple[float, dict[str, Any]]] = [(0.0, {"status": "success", "attempts": 1})]
        self.jobs: dict[str, FakeJob] = {}
        self.idempotency: dict[str, str] = {}
        self.scripted: list[tuple[str, str, tuple[int, Any, dict[str, str]]]] = []
        self.seen: list[Seen] = []
        self.file_bytes = b"ID3" + bytes(range(256)) * 4096  # ~1 MB, streamed in chunks
        self.file_status = 200
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    # -- test controls -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def script(self, method: str, pattern: str, *answers: tuple) -> None:
        """Answer the next requests matching ``method`` and the path ``pattern`` (fnmatch) with
        these (status, body[, headers]) before the contract applies."""
        for answer in answers:
            status, body, *headers = answer
            self.scripted.append((method, pattern, (status, body, headers[0] if headers else {})))

    def requests_to(self, method: str, pattern: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and fnmatch(s.path, pattern)]

    def add_job(self, job_type: str = "csm", plan: list | None = None, **params: Any) -> FakeJob:
        job = FakeJob(str(uuid.uuid4()), job_type, params, time.monotonic(), list(plan or self.plan))
        with self.lock:
            self.jobs[job.id] = job
        return job

    def start(self) -> "FakeRenderAPI":
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                api._handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                api._handle(self, "POST")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    # -- the wire ---------------------------------------------------------------------------------
    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(req.path)
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        headers = {k.lower(): v for k, v in req.headers.items()}
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self.lock:
            self.seen.append(Seen(method, parts.path, query, headers, body, time.monotonic()))
            answer = self._scripted(method, parts.path)
        if answer is None and parts.path.startswith("/files/"):
            return self._send_file(req)
        if answer is None:
            answer = self._route(method, parts.path, query, headers, body)
        status, payload, extra = answer
        data = json.dumps(payload).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        for name, value in extra.items():
            req.send_header(name, value)
        req.end_headers()
        req.wfile.write(data)

    def _scripted(self, method: str, path: str) -> tuple[int, Any, dict[str, str]] | None:
        for i, (m, pattern, answer) in enumerate(self.scripted):
            if m == method and fnmatch(path, pattern):
                del self.scripted[i]
                return answer
        return None

    def _send_file(self, req: BaseHTTPRequestHandler) -> None:
        if self.file_status != 200:
            req.send_response(self.file_status)
            req.send_header("Content-Length", "0")
            req.end_headers()
            return
        req.send_response(200)
        req.send_header("Content-Type", "audio/mpeg")
        req.send_header("Transfer-Encoding", "chunked")
        req.end_headers()
        for start in range(0, len(self.file_bytes), 100_000):
            chunk = self.file_bytes[start:start + 100_000]
            req.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        req.wfile.write(b"0\r\n\r\n")

    # -- the contract ------------------------------------------------------------------------------
    def _route(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
               body: Any) -> tuple[int, Any, dict[str, str]]:
        if path == "/health":
            return 200, {"status": "ok", "queue": {"depth": 0}, "jobs": {}, "workers": {"alive": 1}, "gpus": {}}, {}
        presented = headers.get("x-c3-render-key") or headers.get("authorization", "").removeprefix("Bearer ")
        if self.key and presented != self.key:
            return 401, {"error": "Invalid API key"}, {}
        segments = path.strip("/").split("/")
        if method == "POST" and len(segments) == 1 and segments[0] in ("csm", "whisper", "portrait", "analyze"):
            return self._submit(segments[0], headers, body)
        if method == "GET" and path == "/jobs":
            return self._list(query)
        job = self.jobs.get(segments[-1] if segments[-1] != "retry" else segments[-2])
        if job is None:
            return 404, {"error": f"Job {path} not found"}, {}
        now = time.monotonic()
        if method == "GET" and segments[0] == "status":
            return self._with_wait(job, headers)
        if method == "GET" and segments[0] == "result":
            view = job.view(now)
            if view["status"] != "success":
                return 409, {"error": f"Job {job.id} has no result", "status": view["status"],
                             **({"job_error": view["error"]} if view.get("error") else {})}, {}
            if job.type in MEDIA:
                return 200, {"result_url": f"{self.url}/files/{job.id}/1{MEDIA[job.type]}"}, {}
            return 200, {"text": f"text of {job.id}"}, {}
        if method == "POST" and segments[0] == "job":
            if job.view(now)["status"] in TERMINAL:
                return 409, {"error": f"Job {job.id} is already {job.view(now)['status']}"}, {}
            job.overrides.update(status=body["status"], error=body.get("error") or "cancelled by client")
            return 200, {"message": f"Job {job.id} marked as {body['status']}"}, {}
        if method == "POST" and segments[0] == "jobs" and segments[-1] == "retry":
            if job.view(now)["status"] not in TERMINAL - {"success"}:
                return 409, {"error": f"Job {job.id} cannot be retried"}, {}
            new = self.add_job(job.type, **job.params)
            new.retry_of = job.id
            return 200, {"id": new.id, "status": "queued", "retry_of": job.id}, {}
        return 404, {"error": "no such route"}, {}

    def _submit(self, job_type: str, headers: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        if job_type == "csm" and ("text" in body) == ("monologue" in body):
            return 422, {"error": "Invalid request", "details": [
                {"field": "text", "message": "provide exactly one of 'text' or 'monologue'"}]}, {}
        key = headers.get("idempotency-key")
        with self.lock:
            existing = self.jobs.get(self.idempotency.get(key, ""))
        job = existing or self.add_job(job_type, **body)
        if key:
            self.idempotency[key] = job.id
        if "prefer" in headers:
            return self._with_wait(job, headers)
        return 200, {"id": job.id, "status": "queued"}, {}

    def _with_wait(self, job: FakeJob, headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        prefer = headers.get("prefer", "")
        if not (self.honour_wait and prefer.startswith("wait=")):
            return 200, job.view(time.monotonic()), {}
        seconds = int(prefer.split("=", 1)[1])
        final = job.final_at()
        until = time.monotonic() + seconds if final is None else min(final, time.monotonic() + seconds)
        time.sleep(max(0.0, until - time.monotonic()))
        return 200, job.view(time.monotonic()), {"Preference-Applied": f"wait={seconds}"}

    def _list(self, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        now = time.monotonic()
        views = [job.view(now) for job in reversed(list(self.jobs.values()))]  # newest first
        views = [v for v in views if query.get("status") in (None, v["status"])
                 and query.get("type") in (None, v["type"])]
        limit = int(query.get("limit", 20))
        if not 1 <= limit <= 100:
            return 422, {"error": "Invalid request", "details": [{"field": "limit", "message": "must be 1-100"}]}, {}
        start = int(query.get("cursor", "0"))
        page = views[start:start + limit]
        more = start + limit < len(views)
        return 200, {"jobs": page, "next_cursor": str(start + limit) if more else None}, {}


@pytest.fixture(name="api")
def api_fixture() -> Iterator[FakeRenderAPI]:
    """A fresh stand-in API that wants ``KEY`` (import this into a test module to use ``api``)."""
    server = FakeRenderAPI(key=KEY).start()
    yield server
    server.stop()
