"""An HTTP proxy in front of the AWS emulator that injects faults on the wire.

Point a process at it with ``AWS_ENDPOINT_URL`` (or a per-service variable) and it
forwards every call to the emulator, except the ones a rule picks: those get what AWS
itself answers when it is unhappy (a throttle, a 500), a connection closed without an
answer, or a stall (the call hangs until released). botocore sees exactly what it
would see from AWS; nothing in the code under test knows it is being tested.

    proxy = FaultProxy(upstream="http://127.0.0.1:4566").start()
    proxy.add(Rule(service="dynamodb", operation="UpdateItem", action="throttle", times=4))
    ... AWS_ENDPOINT_URL=proxy.url ...
    proxy.stop()

Used by the durability tests and by ``make soak`` (a low random throttle rate)."""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import urlsplit

Action = Literal["throttle", "error", "reset", "stall"]
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te",
              "trailer", "proxy-authenticate", "proxy-authorization"}


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that went away mid-answer (a SIGKILLed worker) is part of the tests


@dataclass
class Rule:
    """Which calls to break and how. ``times`` caps how many (None: unbounded);
    ``probability`` picks a random share of the matching calls; ``contains`` also
    requires a substring of the body (a queue name, a key)."""

    service: str | None = None  # "dynamodb", "sqs", "s3"; None: any
    operation: str | None = None  # "UpdateItem", "SendMessage", "PUT" (S3: the method)
    action: Action = "throttle"
    times: int | None = 1
    probability: float = 1.0
    contains: str | None = None
    hits: int = 0
    released: threading.Event = field(default_factory=threading.Event)
    stalled: threading.Event = field(default_factory=threading.Event)  # set once a call is held

    def matches(self, service: str, operation: str, body: bytes, rng: random.Random) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.service not in (None, service) or self.operation not in (None, operation):
            return False
        if self.contains is not None and self.contains.encode() not in body:
            return False
        return rng.random() < self.probability


def classify(headers: dict[str, str]) -> tuple[str, str]:
    """(service, operation) of an AWS request: JSON protocols name it in X-Amz-Target."""
    target = headers.get("x-amz-target", "")
    if target.startswith("DynamoDB_"):
        return "dynamodb", target.split(".", 1)[1]
    if target.startswith("AmazonSQS."):
        return "sqs", target.split(".", 1)[1]
    if target.startswith("DynamoDBStreams_"):
        return "dynamodbstreams", target.split(".", 1)[1]
    return "s3", ""


def fault_response(service: str, action: Action) -> tuple[int, dict[str, str], bytes]:
    if service == "s3":
        code, status = ("SlowDown", 503) if action == "throttle" else ("InternalError", 500)
        body = f"<Error><Code>{code}</Code><Message>injected by the fault proxy</Message></Error>"
        return status, {"Content-Type": "application/xml"}, body.encode()
    kind = "ThrottlingException" if action == "throttle" else "InternalServerError"
    prefix = "com.amazonaws.dynamodb.v20120810#" if service == "dynamodb" else "com.amazonaws.sqs#"
    body = json.dumps({"__type": prefix + kind, "message": "injected by the fault proxy"}).encode()
    return (400 if action == "throttle" else 500), {"Content-Type": "application/x-amz-json-1.0"}, body


class FaultProxy:
    def __init__(self, upstream: str, port: int = 0, seed: int | None = None,
                 stall_timeout: float = 120.0):
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.rules: list[Rule] = []
        self.counts: dict[str, int] = {}
        self.rng = random.Random(seed)
        self.stall_timeout = stall_timeout
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        for rule in self.rules:
            rule.released.set()
        self._server.shutdown()
        self._server.server_close()

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            for rule in self.rules:
                rule.released.set()
            self.rules.clear()

    def pick(self, service: str, operation: str, body: bytes) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(service, operation, body, self.rng):
                    rule.hits += 1
                    key = f"{service}.{operation or 'rest'}.{rule.action}"
                    self.counts[key] = self.counts.get(key, 0) + 1
                    return rule
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                service, operation = classify(headers)
                if service == "s3":
                    operation = self.command
                rule = proxy.pick(service, operation, body)
                if rule is not None and rule.action in ("reset", "stall"):
                    if rule.action == "stall":
                        rule.stalled.set()
                        rule.released.wait(proxy.stall_timeout)
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                if rule is not None:
                    status, out_headers, out = fault_response(service, rule.action)
                else:
                    try:
                        status, out_headers, out = self._forward(body)
                    except (OSError, http.client.HTTPException):
                        # The emulator dropped the connection: pass that on as it is.
                        with proxy._lock:
                            proxy.counts["upstream.dropped"] = proxy.counts.get("upstream.dropped", 0) + 1
                        self.close_connection = True
                        return
                self.send_response(status)
                for name, value in out_headers.items():
                    self.send_header(name, value)
                if "content-length" not in {k.lower() for k in out_headers}:
                    self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(out)

            def _forward(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    # A HEAD answer keeps the upstream's length (of the body it did not send).
                    out = {k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP
                           and (k.lower() != "content-length" or self.command == "HEAD")}
                    return resp.status, out, data
                finally:
                    conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

        return Handler
