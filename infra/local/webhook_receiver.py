"""A local HTTP receiver for webhooks that records every request and can be told to
fail (status code, a scripted sequence, or a random share), to be slow, or to be gone.
Used by the tests and by `make soak`."""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    answered: int = 200

    @property
    def accepted(self) -> bool:
        return 200 <= self.answered < 300

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    status: int = 200
    delay: float = 0.0
    script: list[int] = field(default_factory=list)  # answered first, one per request
    refuse_ratio: float = 0.0  # this share of the other requests gets a 503
    seed: int | None = None
    retry_after: str | None = None  # sent as Retry-After with a 429 or 503
    requests: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def answer(self) -> int:
        with self._lock:
            if self.script:
                return self.script.pop(0)
            if self.refuse_ratio and self._rng.random() < self.refuse_ratio:
                return 503
            return self.status

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                status = receiver.answer()
                receiver.requests.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time(),
                             status)
                )
                if receiver.delay:
                    time.sleep(receiver.delay)
                self.send_response(status)
                if receiver.retry_after is not None and status in (429, 503):
                    self.send_header("Retry-After", receiver.retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()

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

    def for_job(self, job_id: str) -> list[Received]:
        return [r for r in self.requests if r.json().get("id") == job_id]

    def accepted_for(self, job_id: str) -> list[Received]:
        return [r for r in self.for_job(job_id) if r.accepted]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.time() + timeout
        while time.time() < deadline and len(self.requests) < count:
            time.sleep(0.02)
        return list(self.requests)
