"""One egress policy for every outbound call made for a user: downloads of the URLs a
job names (image_url, audio_url, reference_audio_url) and webhooks to notify_url.

Outside local mode (``ALLOW_PRIVATE_URLS``) such a call may not reach a private,
loopback, link-local, reserved or cloud-metadata address. Three places apply it:

- at submit, ``literal_address_problem`` refuses URLs whose host is such an address
  written literally, in any form a resolver accepts (``127.1``, ``0x7f000001``, ...);
  host names are not resolved there;
- before each download hop, the downloader resolves the host and checks every address;
- on every connection, ``public_only_adapter`` checks the connected socket's peer, so a
  DNS answer that changes between check and connect cannot slip through.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any, Callable
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

# Well-known instance metadata endpoints (AWS/GCP/Azure/OpenStack, AWS IPv6, ECS, Alibaba).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200")
)
# One part of an IPv4 address as inet_aton reads it: hex, octal (leading 0) or decimal.
_IPV4_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")


class AddressRefused(requests.exceptions.ConnectionError):
    """A connection would reach an address user URLs must not reach.

    A requests ConnectionError, so a caller that treats every failed request alike
    (the webhook sender) counts it as a failed attempt."""

    def __init__(self, host: str, address: str, why: str):
        super().__init__(f"{host} resolves to {address}, {why} (refused outside local mode)")


class _Refusal(Exception):
    """Carries AddressRefused out of urllib3, which would wrap any OSError it sees."""

    def __init__(self, error: AddressRefused):
        super().__init__(str(error))
        self.error = error


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


def public_only_adapter(policy: Policy) -> HTTPAdapter:
    """An adapter whose every new socket is checked against ``policy`` right after the
    TCP connect, before a byte of the request is sent."""

    def check(sock: socket.socket, host: str) -> None:
        address, port = sock.getpeername()[:2]
        why = policy(address, port)
        if why is not None:
            sock.close()
            raise _Refusal(AddressRefused(host, address, why))

    class CheckedHTTP(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            check(sock, self.host)
            return sock

    class CheckedHTTPS(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            check(sock, self.host)
            return sock

    class HTTPPool(HTTPConnectionPool):
        ConnectionCls = CheckedHTTP

    class HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = CheckedHTTPS

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": HTTPPool, "https": HTTPSPool}

        def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
            try:
                return super().send(request, *args, **kwargs)
            except _Refusal as refusal:
                raise refusal.error from None

    return Adapter()


def egress_session(allow_private: bool, policy: Policy = default_policy) -> requests.Session:
    """A session for calls made on a user's behalf: every connection is checked against
    ``policy`` unless ``allow_private`` (local mode). Environment proxies are ignored:
    a proxy would hide the real peer from the check."""
    session = requests.Session()
    session.trust_env = False
    if not allow_private:
        adapter = public_only_adapter(policy)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    return session
