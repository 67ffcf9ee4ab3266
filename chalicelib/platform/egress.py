"""One egress policy for every outbound call made for a user: downloads of the URLs a
job names (image_url, audio_url, reference_audio_url) and webhooks to notify_url.

Outside local mode (``ALLOW_PRIVATE_URLS``) such a call may not reach a private,
loopback, link-local, reserved or cloud-metadata address. It is applied:

- at submit, ``literal_address_problem`` refuses URLs whose host is such an address
  written literally, in any form a resolver accepts (``127.1``, ``0x7f000001``, ...);
  host names are not resolved there;
- before every connection, the session resolves the host, checks every address, and
  connects to the checked address (no second lookup that could answer differently);
  a refused host is never connected to, so open and closed ports look the same;
- on the connected socket, the peer is checked again (a guard kept against rebinding).

What a tenant sees of a refusal names the rule, never the address it resolved to
(``PUBLIC_REFUSAL``); the address goes to the logs (``AddressRefused.detail``).

``Deadline`` puts a hard total deadline on the exchanges made under it (connect, send,
headers, body): a peer that trickles bytes cannot hold a call past it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from contextvars import ContextVar
from typing import Any, Callable
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.connection import create_connection

# Well-known instance metadata endpoints (AWS/GCP/Azure/OpenStack, AWS IPv6, ECS, Alibaba).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200")
)
# One part of an IPv4 address as inet_aton reads it: hex, octal (leading 0) or decimal.
_IPV4_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")


# What a tenant is told when the host of its URL is refused: the same words for a name
# that does not resolve and one that resolves to an internal address, so neither the
# address nor whether an internal name exists can be learnt from job errors.
PUBLIC_REFUSAL = "its host does not resolve to a public address (refused outside local mode)"


class AddressRefused(requests.exceptions.ConnectionError):
    """A connection would reach an address user URLs must not reach (or the host did
    not resolve). ``str()`` is tenant-safe; ``detail`` names the address, for logs.

    A requests ConnectionError, so a caller that treats every failed request alike
    (the webhook sender) counts it as a failed attempt."""

    def __init__(self, host: str, address: str | None, why: str):
        super().__init__(PUBLIC_REFUSAL)
        self.host, self.address, self.why = host, address, why
        self.detail = f"{host} resolves to {address}, {why}" if address else f"{host}: {why}"


class DeadlineExceeded(requests.exceptions.Timeout):
    """The exchange did not complete within its Deadline."""


class _Refusal(Exception):
    """Carries AddressRefused out of urllib3, which would wrap any OSError it sees."""

    def __init__(self, error: AddressRefused):
        super().__init__(str(error))
        self.error = error


_CURRENT: ContextVar["Deadline | None"] = ContextVar("egress_deadline", default=None)


class Deadline:
    """A hard total deadline for the HTTP exchanges made in this block by egress
    sessions: when it passes, every socket they opened is shut down, which wakes any
    blocked connect, send or read. requests' own timeouts bound each socket wait, so a
    peer sending a byte every few seconds would never trip them."""

    def __init__(self, seconds: float, monotonic: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self._monotonic = monotonic
        self._ends = monotonic() + seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._token: Any = None

    def left(self) -> float:
        """Seconds left (at least a millisecond: requests refuses a zero timeout)."""
        return max(0.001, self._ends - self._monotonic())

    def __enter__(self) -> "Deadline":
        self._token = _CURRENT.set(self)
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._timer.cancel()
        _CURRENT.reset(self._token)
        with self._lock:
            self._sockets.clear()

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            if not self.expired:
                self._sockets.append(sock)
                return
        _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:  # the plain socket's shutdown, also under TLS: it only wakes the blocked call
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _track(sock: socket.socket | None) -> None:
    deadline = _CURRENT.get()
    if deadline is not None and sock is not None:
        deadline.track(sock)


Resolver = Callable[[str], "list[str]"]


def _resolve_in_time(resolve: Resolver, host: str) -> list[str]:
    """``resolve(host)``, within the current Deadline: a lookup cannot be interrupted, and
    a slow name server (the tenant's own) must not hold the call past it. Past the
    deadline the lookup is left to finish on its own thread; socket.timeout is raised."""
    deadline = _CURRENT.get()
    if deadline is None:
        return resolve(host)
    box: dict[str, Any] = {}

    def lookup() -> None:
        try:
            box["addresses"] = resolve(host)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=lookup, name="egress-resolve", daemon=True)
    thread.start()
    thread.join(deadline.left())
    if thread.is_alive():
        raise socket.timeout(f"{host} not resolved in time")
    if "error" in box:
        raise box["error"]
    return box["addresses"]


def resolve_host(host: str) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order of preference."""
    seen: list[str] = []
    for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM):
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


def refusal_reason(address: str) -> str | None:
    """Why ``address`` is off limits for user URLs, or None when it is public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified or ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "a non-public address"
    return None


Policy = Callable[[str, int], "str | None"]  # (address, port) -> why refused, or None


def default_policy(address: str, port: int) -> str | None:
    return refusal_reason(address)


def literal_address_problem(url: str) -> str | None:
    """Why ``url`` is refused when its host is a non-public address written literally
    (or ``localhost``), e.g. ``"0x7f000001 is 127.0.0.1, a loopback address"``; None
    for host names, public addresses and URLs without a host."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    if not host:
        return None
    host = host[:-1] if host.endswith(".") else host  # resolvers accept one trailing dot
    if host == "localhost" or host.endswith(".localhost"):
        return f"{host} is a loopback host name"
    ip = _literal_ip(host)
    if ip is None:
        return None
    why = refusal_reason(str(ip))
    if why is None:
        return None
    if isinstance(ip, ipaddress.IPv4Address) and str(ip) != host:
        return f"{host} is {ip}, {why}"  # name the address an unusual form stands for
    return f"{host} is {why}"


def _literal_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``host`` denotes when it is a literal: IPv6 (``::1``), or IPv4 in
    any form inet_aton accepts (``127.0.0.1``, ``127.1``, ``2130706433``,
    ``0x7f000001``, ``0177.0.0.1``)."""
    if ":" in host:
        try:
            return ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return None
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_IPV4_PART.fullmatch(p) for p in parts):
        return None
    numbers = [int(p[2:] or "0", 16) if p[:2].lower() == "0x" else int(p, 8 if p.startswith("0") else 10)
               for p in parts]
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = last
    for i, n in enumerate(head):
        value += n << (24 - 8 * i)
    return ipaddress.IPv4Address(value)


def checked_adapter(policy: Policy | None, resolve: Resolver = resolve_host) -> HTTPAdapter:
    """An adapter whose every new socket is made to a checked address: the host is
    resolved, each address checked against ``policy`` (None: local mode, no check), and
    the connection made to the checked address, whose peer is checked again once
    connected, before a byte of the request is sent. Sockets are tracked by the
    current Deadline, if any."""

    def connect(conn: HTTPConnection) -> socket.socket:
        if policy is None:
            addresses = [conn._dns_host]
        else:
            try:
                addresses = _resolve_in_time(resolve, conn._dns_host.rstrip("."))
            except socket.timeout:
                raise ConnectTimeoutError(conn, f"{conn.host} was not resolved within the deadline") from None
            except OSError as exc:
                raise _Refusal(AddressRefused(conn.host, None, f"does not resolve ({exc})")) from None
            if not addresses:
                raise _Refusal(AddressRefused(conn.host, None, "resolves to no address"))
            for address in addresses:
                why = policy(address, conn.port)
                if why is not None:
                    raise _Refusal(AddressRefused(conn.host, address, why))
        error: OSError | None = None
        for address in addresses:
            try:
                sock = create_connection((address, conn.port), conn.timeout, source_address=conn.source_address,
                                         socket_options=conn.socket_options)
            except socket.timeout:
                raise ConnectTimeoutError(conn, f"Connection to {conn.host} timed out") from None
            except OSError as exc:
                error = exc
                continue
            _track(sock)
            if policy is not None:
                peer, port = sock.getpeername()[:2]
                why = policy(peer, port)
                if why is not None:
                    sock.close()
                    raise _Refusal(AddressRefused(conn.host, peer, why))
            return sock
        raise NewConnectionError(conn, f"Failed to establish a new connection: {error}")

    class CheckedHTTP(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return connect(self)

        def request(self, *args: Any, **kwargs: Any) -> None:
            _track(self.sock)  # a kept-alive socket, made before this deadline began
            super().request(*args, **kwargs)

    class CheckedHTTPS(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return connect(self)

        def request(self, *args: Any, **kwargs: Any) -> None:
            _track(self.sock)
            super().request(*args, **kwargs)

    class HTTPPool(HTTPConnectionPool):
        ConnectionCls = CheckedHTTP

    class HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = CheckedHTTPS

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": HTTPPool, "https": HTTPSPool}

        def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
            deadline = _CURRENT.get()
            try:
                return super().send(request, *args, **kwargs)
            except _Refusal as refusal:
                raise refusal.error from None
            except requests.RequestException as exc:
                if deadline is not None and deadline.expired:
                    raise DeadlineExceeded(f"no complete answer within {deadline.seconds:g} s") from exc
                raise

    return Adapter()


def egress_session(allow_private: bool, policy: Policy = default_policy,
                   resolve: Resolver = resolve_host) -> requests.Session:
    """A session for calls made on a user's behalf: every connection is made to an
    address checked against ``policy`` unless ``allow_private`` (local mode), and
    honours the current Deadline. Environment proxies are ignored: a proxy would hide
    the real peer from the check."""
    session = requests.Session()
    session.trust_env = False
    adapter = checked_adapter(None if allow_private else policy, resolve)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
