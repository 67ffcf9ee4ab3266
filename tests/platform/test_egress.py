"""The egress policy: literal addresses refused at submit, every connection checked at
connect time, and webhooks that never follow a redirect. Real servers on 127.0.0.1;
where a reachable "public" host is needed, a policy treats one loopback port as public."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from chalicelib.delivery.webhooks import WebhookSender
from chalicelib.platform.egress import (PUBLIC_REFUSAL, AddressRefused, egress_session, literal_address_problem,
                                        refusal_reason)
from tests.support.harness import wait_until


class Server:
    """Records every request (any method) and answers ``status`` with ``location``."""

    def __init__(self, status: int = 200, location: str | None = None):
        self.status, self.location = status, location
        self.seen: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                self.rfile.read(length)
                server.seen.append((self.command, self.path))
                self.send_response(server.status)
                if server.location:
                    self.send_header("Location", server.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = _answer  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.stop()


def public_port(port: int):
    """A policy under which 127.0.0.1:``port`` stands for a public host; every other
    address is judged as it is."""
    return lambda address, p: None if p == port else refusal_reason(address)


# -- literal addresses (checked at submit) ----------------------------------------

@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.1/x", "127.0.0.1 is a loopback address"),
    ("https://localhost:8443/hook", "localhost is a loopback host name"),
    ("http://api.localhost/", "api.localhost is a loopback host name"),
    ("http://[::1]:8080/", "::1 is a loopback address"),
    ("http://2130706433/", "2130706433 is 127.0.0.1, a loopback address"),
    ("http://0x7f000001/", "0x7f000001 is 127.0.0.1, a loopback address"),
    ("http://127.1/", "127.1 is 127.0.0.1, a loopback address"),
    ("http://0177.0.0.1/", "0177.0.0.1 is 127.0.0.1, a loopback address"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
    ("http://10.0.0.1/", "10.0.0.1 is a private address"),
    ("http://192.168.0x1.1/", "192.168.0x1.1 is 192.168.1.1, a private address"),
    ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1 is a loopback address"),
    ("http://[fe80::1%25eth0]/", "fe80::1%25eth0 is a link-local address"),
    ("http://224.0.0.1/", "224.0.0.1 is a multicast address"),
    ("http://0/", "0 is 0.0.0.0, a reserved address"),
    ("http://127.0.0.1./", "127.0.0.1 is a loopback address"),
])
def test_literal_non_public_addresses_are_refused_with_the_reason(url: str, reason: str) -> None:
    assert literal_address_problem(url) == reason


@pytest.mark.parametrize("url", [
    "https://hooks.example.com/x", "http://93.184.216.34/", "http://[2606:4700:4700::1111]/",
    "http://1e100.net/", "http://08.1/", "http://127.0.0.1.example.com/", "http://[::1/",
])
def test_host_names_and_public_addresses_pass(url: str) -> None:
    assert literal_address_problem(url) is None


# -- connections (checked at connect) ---------------------------------------------

def test_egress_session_refuses_a_loopback_server_before_sending(server: Server) -> None:
    with egress_session(allow_private=False) as session:
        with pytest.raises(AddressRefused) as refused:
            session.post(server.url, data=b"{}", timeout=5)
    # The tenant's words name the rule; the address is for the logs.
    assert str(refused.value) == PUBLIC_REFUSAL
    assert refused.value.detail == "127.0.0.1 resolves to 127.0.0.1, a loopback address"
    with egress_session(allow_private=True) as session:
        assert session.post(server.url, data=b"{}", timeout=5).status_code == 200
    assert server.seen == [("POST", "/hook")]  # only the local-mode request arrived


def test_egress_session_reaches_an_address_the_policy_allows(server: Server) -> None:
    with egress_session(allow_private=False, policy=public_port(server.port)) as session:
        assert session.get(server.url, timeout=5).status_code == 200
    assert server.seen == [("GET", "/hook")]


def test_a_refused_webhook_is_a_failed_attempt_not_an_exception(server: Server) -> None:
    sender = WebhookSender(attempts=2, interval=0, timeout=5, allow_private=False)
    ok, outcome = sender.attempt(server.url, {"id": "j1", "status": "success"})
    assert (ok, outcome) == (False, f"notify_url: {PUBLIC_REFUSAL}")
    assert server.seen == []


@pytest.mark.parametrize("code", [307, 303])
@pytest.mark.parametrize("session", ["local mode", "public policy"])
def test_webhooks_never_follow_a_redirect(code: int, session: str) -> None:
    receiver = Server()
    hop = Server(status=code, location=receiver.url)
    try:
        # In local mode nothing but the redirect rule stands between the hop and the
        # receiver; under the policy the hop's port is "public", the receiver's is not.
        custom = egress_session(False, public_port(hop.port)) if session == "public policy" else None
        sender = WebhookSender(attempts=2, interval=0, timeout=5, session=custom)
        for _ in range(2):
            assert sender.attempt(hop.url, {"id": "j1", "status": "success"}) == (False, f"HTTP {code}")
        assert hop.seen == [("POST", "/hook"), ("POST", "/hook")]  # each attempt, a 3xx
        assert receiver.seen == []
    finally:
        hop.stop()
        receiver.stop()


def test_requests_would_have_followed_it() -> None:
    """The control: without allow_redirects=False the receiver is reached, so the test
    above can fail."""
    receiver = Server()
    hop = Server(status=307, location=receiver.url)
    try:
        with egress_session(allow_private=True) as session:
            session.post(hop.url, data=b"{}", timeout=5)
        assert receiver.seen == [("POST", "/hook")]
    finally:
        hop.stop()
        receiver.stop()


# -- hostile peers: port-scan oracle, trickling receivers -----------------------------

def test_a_tenant_cannot_port_scan_internal_names(server: Server) -> None:
    """A notify_url host name that resolves to an internal address: refused before any
    connection, with the same words for an open port, a closed port and a name that
    does not resolve at all; the resolved address is in no tenant-visible text."""
    from tests.support.hostile import Listener, closed_port

    listener = Listener()
    names = {"open.internal.test": "127.0.0.1", "closed.internal.test": "127.0.0.1"}

    def resolve(host: str) -> list[str]:
        if host not in names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [names[host]]

    sender = WebhookSender(attempts=2, interval=0, timeout=2, session=egress_session(False, resolve=resolve))
    try:
        outcomes = {sender.attempt(url, {"id": "j1", "status": "success"})[1] for url in (
            f"http://open.internal.test:{listener.port}/hook", f"http://closed.internal.test:{closed_port()}/hook",
            f"http://open.internal.test:{server.port}/hook", "http://nowhere.internal.test/hook")}
        assert outcomes == {f"notify_url: {PUBLIC_REFUSAL}"}
        assert listener.connections() == 0 and server.seen == []  # checked before connecting
    finally:
        listener.stop()


def test_the_session_connects_to_the_address_it_checked(server: Server) -> None:
    """Resolved once: a second lookup (a rebinding DNS answer) is never made."""
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])
    lookups: list[str] = []

    def resolve(host: str) -> list[str]:
        lookups.append(host)
        return next(answers)

    with egress_session(False, public_port(server.port), resolve=resolve) as session:
        assert session.get(f"http://hooks.example.test:{server.port}/hook", timeout=5).status_code == 200
    assert lookups == ["hooks.example.test"] and server.seen == [("GET", "/hook")]


@pytest.mark.parametrize("slow", ["headers", "body"])
def test_a_trickling_receiver_cannot_hold_a_webhook_past_its_deadline(slow: str) -> None:
    """A byte every 0.2 s beats any per-read timeout; the attempt still ends at its
    hard deadline (1 s here; the trickle would take minutes), hanging up on the peer."""
    from tests.support.hostile import Trickler

    peer = Trickler(slow=slow, every=0.2)
    sender = WebhookSender(attempts=2, interval=0, timeout=1, allow_private=True)
    result: list = []
    attempt = threading.Thread(target=lambda: result.append(sender.attempt(peer.url, {"id": "j", "status": "success"})),
                               daemon=True)
    try:
        attempt.start()
        attempt.join(30)  # the trickle alone takes over 400 s
        assert result == [(False, "notify_url: no complete answer within 1 s")]
        wait_until(lambda: peer.connections and "end" in peer.connections[0], 10)
        assert peer.connections[0]["client_hung_up"]
    finally:
        peer.stop()


def test_a_slow_name_server_cannot_hold_a_webhook_past_its_deadline() -> None:
    """The lookup is bounded by the attempt's deadline too (a tenant's own name server
    may answer as slowly as it likes)."""
    answered = threading.Event()

    def slow_resolve(host: str) -> list[str]:
        answered.wait(60)
        return ["93.184.216.34"]

    sender = WebhookSender(attempts=2, interval=0, timeout=1, session=egress_session(False, resolve=slow_resolve))
    result: list = []
    attempt = threading.Thread(target=lambda: result.append(sender.attempt("http://slow-dns.example.test/hook",
                                                                            {"id": "j", "status": "success"})),
                               daemon=True)
    try:
        attempt.start()
        attempt.join(30)
        assert result == [(False, "notify_url: no complete answer within 1 s")]
    finally:
        answered.set()
