"""A small client of ComfyUI's REST API: readiness, uploads, queueing, polling,
stopping and downloading outputs. Every failure is a NodeFault that says what
ComfyUI answered (node errors of a rejected graph, the failing node of a run)."""

from __future__ import annotations

import mimetypes
import time
from pathlib import Path
from typing import Any, Callable

import requests

from chalicelib.platform.logs import EventLogger

from ..cancel import CancelToken
from .base import NodeFault
from .node_faults import stopped_answering, transport_cause

STOP_TIMEOUT = 10.0
CONFIRM_TIMEOUT = 3.0  # within the task's wind-down: the prompt must be gone from /queue by then
CONFIRM_POLL = 0.1


class ComfyUI:
    def __init__(self, base_url: str, headers: dict[str, str], timeout: float, log: EventLogger,
                 node: str | None = None):
        self.base = base_url.rstrip("/")
        self.node = node or self.base  # the node's name, for errors
        self.timeout = timeout
        self.log = log
        self.session = requests.Session()
        self.session.headers.update(headers)

    def close(self) -> None:
        self.session.close()

    def _call(self, method: str, path: str, timeout: float | None = None,
              **kwargs: Any) -> requests.Response:
        try:
            return self.session.request(method, self.base + path, timeout=timeout or self.timeout,
                                        **kwargs)
        except requests.RequestException as exc:
            cause = transport_cause(exc)
            if cause is not None:
                raise stopped_answering(self.node, f"the ComfyUI call {method} {path}", cause) from None
            raise NodeFault(f"ComfyUI {method} {self.base}{path} failed: {exc}") from None

    def _check(self, response: requests.Response, what: str) -> requests.Response:
        if response.status_code != 200:
            raise NodeFault(f"ComfyUI {what} answered HTTP {response.status_code}: {_body(response)}")
        return response

    # -- steps -----------------------------------------------------------------
    def wait_ready(self, cancel: CancelToken, timeout: float, poll: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = self.session.get(self.base + "/system_stats", timeout=self.timeout)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise NodeFault(f"ComfyUI at {self.base} was not ready within {timeout:g} s "
                                f"(last answer: {last})")
            self.log.info("comfyui.waiting", reason=f"/system_stats not ready yet: {last}")
            cancel.wait(poll)
            cancel.raise_if_cancelled()

    def upload(self, path: Path, name: str) -> str:
        """Upload an input file (``/upload/image`` takes audio too); returns the name to use."""
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        with open(path, "rb") as fh:
            response = self._call("POST", "/upload/image", files={"image": (name, fh, ctype)},
                                  data={"type": "input", "overwrite": "true"})
        body = _json(self._check(response, f"upload of {name}"), f"upload of {name}")
        stored = body.get("name")
        if not stored:
            raise NodeFault(f"ComfyUI upload of {name} answered without a file name: {body}")
        subfolder = body.get("subfolder") or ""
        return f"{subfolder}/{stored}" if subfolder else stored

    def queue(self, workflow: dict[str, Any], client_id: str) -> str:
        response = self._call("POST", "/prompt", json={"prompt": workflow, "client_id": client_id})
        if response.status_code == 400:
            raise NodeFault(prompt_error(_json(response, "/prompt")))
        body = _json(self._check(response, "/prompt"), "/prompt")
        if body.get("node_errors"):
            raise NodeFault(prompt_error(body))
        prompt_id = body.get("prompt_id")
        if not prompt_id:
            raise NodeFault(f"ComfyUI /prompt answered without a prompt_id: {body}")
        return str(prompt_id)

    def wait(self, prompt_id: str, cancel: CancelToken, poll: float,
             report: Callable[..., None] | None = None) -> dict[str, Any]:
        """Poll ``/history/{id}`` until the prompt finishes; returns its outputs. While it
        runs, ``report(progress=...)`` hears the sampler's progress where ComfyUI tells it."""
        while True:
            cancel.raise_if_cancelled()
            response = self._check(self._call("GET", f"/history/{prompt_id}"), "/history")
            entry = _json(response, "/history").get(prompt_id)
            if entry:
                status = entry.get("status") or {}
                if status.get("status_str") == "error":
                    raise NodeFault(execution_error(prompt_id, status))
                if status.get("completed") or status.get("status_str") == "success":
                    return entry.get("outputs") or {}
            elif report is not None:
                progress = self.progress(prompt_id)
                if progress is not None:
                    report(progress=progress)
            cancel.wait(poll)

    def progress(self, prompt_id: str) -> float | None:
        """The running prompt's progress (0-1) from ``GET /queue``'s ``progress`` (the
        websocket's progress message: value of max); None when ComfyUI gives none.
        Best effort: a failed look is no fault of the node."""
        try:
            body = self.session.get(self.base + "/queue", timeout=self.timeout).json()
            data = body.get("progress") or {}
            if data.get("prompt_id") == prompt_id and data.get("max"):
                return min(1.0, max(0.0, float(data["value"]) / float(data["max"])))
        except (requests.RequestException, ValueError, TypeError, AttributeError):
            pass
        return None

    def stop(self, prompt_id: str) -> bool:
        """Remove the prompt if still pending and interrupt it if running, then confirm:
        True once ``/queue`` shows it neither running nor pending (ComfyUI stops a run only
        at its next step), False when that was not seen within CONFIRM_TIMEOUT (the node
        may still be busy with it). Runs in the canceller's thread: short timeouts."""
        for path, body in (("/queue", {"delete": [prompt_id]}), ("/interrupt", {"prompt_id": prompt_id})):
            try:
                self._check(self._call("POST", path, json=body, timeout=STOP_TIMEOUT), path)
            except NodeFault as exc:
                self.log.warning("comfyui.stop_failed", prompt_id=prompt_id, reason=str(exc))
        deadline = time.monotonic() + CONFIRM_TIMEOUT
        while True:
            left = self._still_queued(prompt_id)
            if left is False:
                self.log.info("comfyui.stopped", prompt_id=prompt_id,
                              reason="job cancelled or out of time; /queue shows the prompt gone")
                return True
            if time.monotonic() >= deadline:
                self.log.warning("comfyui.stop_unconfirmed", prompt_id=prompt_id,
                                 reason=f"/queue still shows the prompt {CONFIRM_TIMEOUT:g} s after /interrupt"
                                        if left else "/queue did not answer")
                return False
            time.sleep(CONFIRM_POLL)

    def _still_queued(self, prompt_id: str) -> bool | None:
        """Whether ``GET /queue`` lists the prompt as running or pending; None if it did not say."""
        try:
            body = self.session.get(self.base + "/queue", timeout=STOP_TIMEOUT).json()
            entries = list(body.get("queue_running") or []) + list(body.get("queue_pending") or [])
            return any(isinstance(e, list) and len(e) > 1 and e[1] == prompt_id for e in entries)
        except (requests.RequestException, ValueError, TypeError, AttributeError):
            return None

    def download(self, item: dict[str, Any], dest: Path) -> Path:
        params = {"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                  "type": item.get("type", "output")}
        response = self._call("GET", "/view", params=params, stream=True)
        with response:
            self._check(response, f"/view of {item['filename']}")
            with open(dest, "wb") as out:
                for chunk in response.iter_content(64 * 1024):
                    out.write(chunk)
        return dest


def find_video(outputs: dict[str, Any], prefer: str | None = None) -> dict[str, Any]:
    """The video file listed in the outputs (VHS lists it under ``gifs`` or ``videos``)."""
    order = sorted(outputs, key=lambda node_id: node_id != prefer)
    for node_id in order:
        for key in ("gifs", "videos"):
            for item in outputs[node_id].get(key) or []:
                if isinstance(item, dict) and str(item.get("filename", "")).endswith((".mp4", ".webm", ".mov")):
                    return item
    raise NodeFault(f"ComfyUI finished but listed no video output (outputs: {str(outputs)[:300]})")


def prompt_error(body: dict[str, Any]) -> str:
    """A rejected graph: ComfyUI's ``error`` plus each node's errors."""
    error = body.get("error")
    message = error.get("message") if isinstance(error, dict) else error
    parts = []
    for node_id, node in (body.get("node_errors") or {}).items():
        for err in node.get("errors") or []:
            text = err.get("message") or err.get("type") or "error"
            if err.get("details"):
                text += f": {err['details']}"
            parts.append(f"node {node_id} ({node.get('class_type', '?')}): {text}")
    detail = "; ".join(parts)
    return "ComfyUI rejected the workflow: " + "; ".join(p for p in (message or "invalid prompt", detail) if p)


def execution_error(prompt_id: str, status: dict[str, Any]) -> str:
    """A failed run: the node that failed and ComfyUI's exception, from the status messages."""
    for name, data in status.get("messages") or []:
        if name == "execution_error":
            return (f"ComfyUI failed in node {data.get('node_id')} ({data.get('node_type')}): "
                    f"{data.get('exception_type', 'error')}: {data.get('exception_message', '').strip()}")
        if name == "execution_interrupted":
            return f"ComfyUI interrupted the workflow in node {data.get('node_id')} ({data.get('node_type')})"
    return f"ComfyUI reported an error for prompt {prompt_id} without details"


def _json(response: requests.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise NodeFault(f"ComfyUI {what} answered with something that is not JSON: {_body(response)}") from None
    if not isinstance(body, dict):
        raise NodeFault(f"ComfyUI {what} answered with unexpected JSON: {str(body)[:300]}")
    return body


def _body(response: requests.Response) -> str:
    text = response.text.strip()
    return text if len(text) <= 300 else text[:300] + "..."
