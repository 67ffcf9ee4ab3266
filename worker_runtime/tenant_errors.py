"""What a tenant reads of a failed job, and what only the operators' log keeps.

Issue 21's rule: what a tenant sees (a job's ``error`` in GET /status, webhooks, events,
/result, the operators' page shown to a tenant) never names a GPU node: no host name, URL
or Comput3 workload id. The code that knows the step writes the tenant's text without any
address (``TaskError.public``, ``NodeFault.for_tenant()``, the GPU monitor's
``CancelToken.public``, all carried as ``Outcome.public``); ``Worker.finish`` is the one
place that picks the job's error, and it logs the full text ("job.node_fault", with the
job id) whenever the tenant reads less.

``redact`` is the belt and braces under that: whatever text still reaches the record loses
the addresses of the GPU nodes this worker knows (an exception from requests, httpx or
gradio_client that a task let through, say, "HTTPConnectionPool(host='node-x', port=443)").
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Iterable

PLACEHOLDER = "<GPU node>"
_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s'\"<>()]+", re.IGNORECASE)
_POOL = re.compile(r"host='([^']*)', port=(\d+)")  # urllib3's HTTPConnectionPool(...)


def node_addresses(nodes: Iterable[Any]) -> list[str]:
    """What names each node (``worker_runtime.node.Node``): its workload id, its host name
    (with and, unless an IP literal, without its port), longest first."""
    found: set[str] = set()
    for node in nodes:
        if node is None:
            continue
        found.update(s for s in (node.workload, node.name) if s)
        host, _, port = (node.name or "").rpartition(":")
        if host and port.isdigit() and not _is_ip(host):
            found.add(host)
    return sorted(found, key=len, reverse=True)


def redact(text: str, addresses: list[str]) -> str:
    """``text`` with every URL that names one of ``addresses``, and every other mention of
    one, replaced by PLACEHOLDER."""
    if not addresses or not text:
        return text
    lowered = [a.lower() for a in addresses]

    def names_node(s: str) -> bool:
        s = s.lower()
        return any(a in s for a in lowered)

    def url(m: re.Match[str]) -> str:
        found = m.group(0)
        bare = found.rstrip(".,:;!?]")  # punctuation after a URL is the sentence's
        return PLACEHOLDER + found[len(bare):] if names_node(bare) else found

    text = _URL.sub(url, text)
    text = _POOL.sub(lambda m: f"host='{PLACEHOLDER}'" if names_node(f"{m.group(1)}:{m.group(2)}")
                     or m.group(1).lower() in lowered else m.group(0), text)
    for address in addresses:
        text = re.sub(re.escape(address), PLACEHOLDER, text, flags=re.IGNORECASE)
    return text


def tenant_error(error: str, public: str | None, addresses: list[str]) -> str:
    """The job's error: ``public`` (written without addresses) when there is one, else
    ``error``; either way with any node address left in it redacted."""
    return redact(public or error, addresses)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
