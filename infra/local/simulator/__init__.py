"""A local, SIMULATED Comput3.AI: the control plane (launch / workloads / stop, checking
X-C3-API-KEY) with a billing ledger and fault switches, and one HTTP server per launched
node on 127.0.0.1, named ``127.0.0.1:PORT`` (see node.py for how node apps plug in).

    python -m infra.local.simulator --port 8790

A worker talks to it with::

    C3_API_URL=http://127.0.0.1:8790/api/v0  C3_API_KEY=simulated-local-key
    C3_NODE_URL=http://{node}  C3_COMFYUI_URL=http://{node}/comfyui  C3_OLLAMA_URL=http://{node}/ollama

(``SimulatorProcess.worker_env()`` returns exactly that.)
"""

from .process import SimulatorProcess

__all__ = ["SimulatorProcess"]
