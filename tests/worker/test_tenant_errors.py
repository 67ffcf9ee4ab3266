"""The redaction under a job's error (worker_runtime/tenant_errors.py), on the texts the
libraries write; the worker's use of it runs against the simulator in test_gpu_jobs.py."""

from __future__ import annotations

import pickle

import pytest

from worker_runtime.node import Node, NodeUrls
from worker_runtime.tasks.base import NodeFault
from worker_runtime.tenant_errors import node_addresses, redact

PROD = Node(workload="wl-8f2c", name="node-7.comput3.ai", api_key="k", urls=NodeUrls())
LOCAL = Node(workload="sim-abc123", name="127.0.0.1:40123", api_key="k", urls=NodeUrls())


@pytest.mark.parametrize("node, text, expected", [
    (PROD, "HTTPSConnectionPool(host='ui-node-7.comput3.ai', port=443): Max retries exceeded with url: /prompt",
     "HTTPSConnectionPool(host='<GPU node>'): Max retries exceeded with url: /prompt"),
    (PROD, "Could not fetch config for https://node-7.comput3.ai/csm/: 502", "Could not fetch config for <GPU node>: 502"),
    (PROD, "workload wl-8f2c on NODE-7.comput3.ai", "workload <GPU node> on <GPU node>"),
    (LOCAL, "HTTPConnectionPool(host='127.0.0.1', port=40123): Read timed out.",
     "HTTPConnectionPool(host='<GPU node>'): Read timed out."),
    # The tenant's own URLs stay, even on the same host (another port is not the node).
    (LOCAL, "Could not download audio_url http://127.0.0.1:5555/a.wav: HTTP 404",
     "Could not download audio_url http://127.0.0.1:5555/a.wav: HTTP 404"),
    (LOCAL, "HTTPConnectionPool(host='127.0.0.1', port=5555): refused",
     "HTTPConnectionPool(host='127.0.0.1', port=5555): refused"),
])
def test_redact_replaces_the_nodes_addresses_only(node: Node, text: str, expected: str) -> None:
    assert redact(text, node_addresses([node])) == expected


def test_a_node_fault_keeps_its_tenant_text_across_the_task_process() -> None:
    """A task step's fault reaches the worker pickled (worker_runtime/isolation.py)."""
    fault = NodeFault("GPU node 127.0.0.1:40123 stopped answering during the CSM call (timed out)",
                      during="the CSM call", cause="timed out")
    fault.instance_stopped = True
    back = pickle.loads(pickle.dumps(fault))
    assert str(back) == str(fault)
    assert back.for_tenant() == "The GPU node stopped answering during the CSM call (timed out); the instance was stopped"
