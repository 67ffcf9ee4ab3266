"""Ollama's generate API (``POST {base}/api/generate``), streamed and stoppable.

The answer is streamed (NDJSON, one chunk per few tokens) over a connection this
module holds, so that a cancel can shut the socket: Ollama stops generating when
its client goes away, and the task thread wakes at once, even while the model is
still loading and nothing has been sent yet."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import urlsplit

from ..cancel import CancelToken
from .base import NodeFault
from .node_faults import probe, stopped_answering, transport_cause


def _connection(url: str, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return cls(parts.hostname or "", parts.port, timeout=timeout)


def generate(base_url: str, headers: dict[str, str], body: dict[str, Any], cancel: CancelToken,
             connect_timeout: float, node: str | None = None) -> str:
    """Run one generation; returns the concatenated ``response`` text. ``node``: the
    node's name, for errors."""
    url = base_url.rstrip("/") + "/api/generate"
    path = urlsplit(url).path
    conn = _connection(url, connect_timeout)

    def abort() -> None:
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    try:
        try:
            conn.connect()
            conn.sock.settimeout(None)  # generation time is bounded by max_time via the token
            cancel.on_cancel(abort)
            conn.request("POST", path, body=json.dumps({**body, "stream": True}),
                         headers={**headers, "Content-Type": "application/json"})
            response = conn.getresponse()
            if response.status != 200:
                raise NodeFault(f"Ollama at {url} answered HTTP {response.status}: {_error(response.read())}")
            text = _collect(response, url)
        except (OSError, http.client.HTTPException, NodeFault) as exc:
            cancel.raise_if_cancelled()  # the failure is our own abort
            if isinstance(exc, NodeFault):
                raise
            cause = transport_cause(exc)
            if cause is not None:
                raise stopped_answering(node or url, "the Ollama generate call", cause) from None
            raise NodeFault(f"Ollama at {url} failed: {exc or type(exc).__name__}") from None
        if text is None:  # the stream ended early: the node died, or only Ollama did
            cancel.raise_if_cancelled()
            cause = probe(base_url, headers)
            if cause is not None:
                raise stopped_answering(node or url, "the Ollama generate call", cause)
            raise NodeFault(f"Ollama at {url} closed the stream before the answer was done")
        return text
    finally:
        conn.close()


def _collect(response: http.client.HTTPResponse, url: str) -> str | None:
    """The answer, or None when the stream ends before ``done``."""
    parts: list[str] = []
    for line in response:
        if not line.strip():
            continue
        try:
            chunk = json.loads(line)
        except ValueError:
            raise NodeFault(f"Ollama at {url} sent a line that is not JSON: {line[:200]!r}") from None
        if chunk.get("error"):
            raise NodeFault(f"Ollama at {url} reported: {chunk['error']}")
        parts.append(chunk.get("response", ""))
        if chunk.get("done"):
            return "".join(parts).strip()
    return None


def _error(raw: bytes) -> str:
    try:
        data = json.loads(raw)
        if isinstance(data, dict) and data.get("error"):
            return str(data["error"])
    except ValueError:
        pass
    text = raw.decode("utf-8", "replace").strip()
    return text[:300] or "(empty body)"
