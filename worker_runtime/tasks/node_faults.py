"""One sentence for a node that stopped answering, whatever call it interrupted:

    GPU node 127.0.0.1:9001 stopped answering during the Whisper call (connection refused)

The cause comes from the exception chain (refused, reset, timed out, closed mid-answer);
when the chain does not tell (Gradio's CancelledError, a stream that just ended), a
quick request to the node's root says whether the node is gone or only its app.
That sentence is the operators' (the log); the tenant reads the NodeFault's
``for_tenant()``: the step and the cause, without the node (worker_runtime/tenant_errors.py)."""

from __future__ import annotations

import http.client
import socket

import requests

from .base import NodeFault

PROBE_TIMEOUT = 3.0

_TIMEOUTS = ("ReadTimeout", "ConnectTimeout", "ReadTimeoutError", "ConnectTimeoutError", "TimeoutException",
             "ReadTimeoutException", "ConnectTimeoutException", "PoolTimeout")
_CLOSED = ("RemoteProtocolError", "ProtocolError", "ChunkedEncodingError", "IncompleteRead",
           "RemoteDisconnected", "ReadError")


def transport_cause(exc: BaseException | None) -> str | None:
    """'connection refused', 'connection reset', 'timed out', 'connection closed mid-answer',
    or None when nothing in the chain is a transport failure."""
    stack, seen = [exc], set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            return "connection reset"
        if isinstance(e, (TimeoutError, socket.timeout)) or type(e).__name__ in _TIMEOUTS:
            return "timed out"
        if isinstance(e, (http.client.RemoteDisconnected, http.client.IncompleteRead)) \
                or type(e).__name__ in _CLOSED:
            return "connection closed mid-answer"
        stack.extend([e.__cause__, e.__context__, getattr(e, "reason", None)])
        stack.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
    return None


def probe(base_url: str, headers: dict[str, str]) -> str | None:
    """Why the node does not answer its root URL, or None when it answers."""
    try:
        requests.get(base_url, headers=headers, timeout=PROBE_TIMEOUT)
    except requests.RequestException as exc:
        return transport_cause(exc) or type(exc).__name__
    return None


def stopped_answering(node: str, during: str, cause: str) -> NodeFault:
    """The message names the node (the operators' log); the tenant's text does not."""
    return NodeFault(f"GPU node {node} stopped answering during {during} ({cause})", during=during, cause=cause)


def call_failed(node_name: str, base_url: str, headers: dict[str, str], during: str,
                exc: BaseException | None, otherwise: str) -> NodeFault:
    """The fault for a call to the node that broke with ``exc``: the node stopped
    answering (the cause from the chain, or from a probe), else ``otherwise``."""
    cause = transport_cause(exc) or probe(base_url, headers)
    if cause is not None:
        return stopped_answering(node_name, during, cause)
    return NodeFault(otherwise, during=during)
