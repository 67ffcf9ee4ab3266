"""One call to a Gradio app on the node (CSM, Whisper), stoppable from the cancel token.

The call is submitted asynchronously; its result arrives on Gradio's event stream, and
the wait ends the moment the client's future completes (or the cancel token fires):
no poll interval stands between the node's last byte and the job's next step. A cancel
(client status, max_time, complete_by, shutdown, GPU loss) cancels the remote Gradio
job through the client, which removes it from the app's queue. A call already running
cannot be stopped (Gradio runs a non-generator function to its end): the task then says
how long the node stays busy with it (``ctx.extras["node_busy_for"]``: from the app's
progress so far, infinite when it gave none), so the worker does not hand the node to the
next job meanwhile. The app's gr.Progress is read every ``progress_interval`` while it runs."""

from __future__ import annotations

import importlib
import math
import os
import ssl
import threading
import time
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# The worker never talks to the Hugging Face Hub. Without this, gradio_client's headers
# (huggingface_hub's build_hf_headers) fetch an "agent harnesses" registry from the Hub
# whenever its day-long cache (a file in the HF cache dir) is missing: in every task
# child, since a read-only container cannot write that cache (0.1-0.5 s per call here,
# and a call to huggingface.co per job in production).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402,F401 - after the switches above
from gradio_client.exceptions import AppError, AuthenticationError  # noqa: E402
from gradio_client.utils import Status  # noqa: E402

# Imported when the worker's forkserver preloads this module, not in each task child at
# its first request: httpx's transport (httpcore) and the async backends it probes.
for _name in ("httpcore", "h11", "anyio", "sniffio", "trio"):
    try:
        importlib.import_module(_name)
    except ImportError:  # optional: what is missing, httpx does not import either
        pass
# One TLS context (httpx's own default, its CA bundle read once, in the forkserver) for every
# call to a node; gradio_client otherwise has httpx build one per request (~25 ms each here).
TLS: ssl.SSLContext = httpx.create_ssl_context()

from .base import NodeFault, TaskContext, TaskError  # noqa: E402
from .node_faults import call_failed  # noqa: E402


def connect(ctx: TaskContext, app: str, url: str) -> Client:
    try:
        return Client(url, headers=ctx.node.headers, verbose=False, analytics_enabled=False,
                      download_files=str(ctx.path("_gradio")), ssl_verify=TLS)  # type: ignore[arg-type]
    except AuthenticationError:
        raise TaskError(f"{app} app at {url} refused the node's API key",
                        public=f"The {app} app on the GPU node refused the node's API key") from None
    except Exception as exc:  # noqa: BLE001 - connection refused, bad config, HTTP errors ...
        raise _fault(ctx, app, exc, f"{app} app at {url} is not reachable: {_describe(exc)}") from None


def call(ctx: TaskContext, app: str, url: str, api_name: str, inputs: dict[str, Any],
         progress_interval: float) -> Any:
    """Run ``api_name`` with named ``inputs``; returns its result or raises TaskError
    (app failure) / TaskCancelled (token cancelled, remote job cancelled)."""
    started = time.monotonic()
    client = connect(ctx, app, url)
    connected = time.monotonic()
    try:
        job = client.submit(api_name=api_name, **inputs)
        ctx.log.info("gradio.submitted", app=app, api_name=api_name, url=url,
                     connect_seconds=round(connected - started, 3),
                     submit_seconds=round(time.monotonic() - connected, 3))
        seen: dict[str, float] = {"submitted": time.monotonic()}  # and the latest progress
        judged = threading.Event()  # the cancel has said whether the call was left running

        def cancel_remote() -> None:
            try:
                busy_for = _left_running(job, seen)
                if busy_for is not None:
                    ctx.extras["node_busy_for"] = busy_for
            finally:
                judged.set()
            ctx.log.info("gradio.cancelling", app=app, api_name=api_name, node_busy_for=busy_for,
                         reason=ctx.cancel.reason or "cancelled")
            job.cancel()

        ctx.cancel.on_cancel(cancel_remote)
        ended = threading.Event()  # the result (or error) arrived, or the token fired
        job.future.add_done_callback(lambda _future: ended.set())
        ctx.cancel.on_cancel(ended.set)
        while not ended.wait(progress_interval):
            progress = _progress(job)
            if progress is not None:
                seen["progress"] = progress
                ctx.report(progress=progress)
        if ctx.cancel.cancelled:
            judged.wait(5)  # the canceller's thread judges (no network call) before the task ends
        ctx.cancel.raise_if_cancelled()
        try:
            return job.result(timeout=0)
        except AppError as exc:
            raise NodeFault(f"{app} app failed: {_describe(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - transport or protocol failure mid-call
            raise _fault(ctx, app, exc, f"{app} app call {api_name} failed: {_describe(exc)}") from None
    finally:
        client.close()


RUNNING = (Status.PROCESSING, Status.PROGRESS, Status.ITERATING)


def _running(job: Any) -> bool:
    try:
        return job.status().code in RUNNING
    except Exception:  # noqa: BLE001 - unknown: the progress decides
        return False


def _left_running(job: Any, seen: dict[str, float]) -> float | None:
    """Seconds the node stays busy with a call cancelled now: None when it was not running
    yet (Gradio drops it from the queue), else the rest at the pace of its progress so far,
    infinite without any."""
    progress = seen.get("progress") or 0.0
    if job.done() or not (progress > 0 or _running(job)):
        return None
    if progress <= 0:
        return math.inf
    # Counted from the submission (its time in the app's queue included: never less than the
    # truth), plus a quarter and a second: progress is seen late and the pace is not even.
    elapsed = time.monotonic() - seen["submitted"]
    return round(elapsed * (1 - progress) / progress * 1.25 + 1.0, 3)


def _progress(job: Any) -> float | None:
    """The app's gr.Progress, as gradio_client's Job.status() reports it (0-1), or None."""
    try:
        units = job.status().progress_data or []
    except Exception:  # noqa: BLE001 - progress is a nicety; the result decides
        return None
    for unit in units:
        if unit.progress is not None:
            return min(1.0, max(0.0, float(unit.progress)))
        if unit.index is not None and unit.length:
            return min(1.0, max(0.0, unit.index / unit.length))
    return None


def _fault(ctx: TaskContext, app: str, exc: Exception, otherwise: str) -> NodeFault:
    """A node that stopped answering says so (gradio_client alone reports a dead node as
    e.g. CancelledError); an app that failed on a live node keeps ``otherwise``."""
    node = ctx.node
    return call_failed(node.name, node.base_url, node.headers, f"the {app} call", exc, otherwise)


def _describe(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 500 else text[:500] + "..."
