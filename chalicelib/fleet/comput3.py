"""Comput3.AI control-plane client: launch, list running workloads, stop, node health.

Protocol (PROTOCOLS.md §1): JSON bodies, ``X-C3-API-KEY`` on every call.

    Comput3Error                  anything the control plane did not do
     +-- Comput3KeyRefused        401/403: the key is wrong; never retried
     +-- LaunchFailed             launch gave up (retries exhausted or a definite 4xx)
     +-- LaunchAborted            the caller's wait said stop between attempts
     +-- WorkloadNotFound         stop of a workload Comput3 does not know (already gone)

Launch retries with growing delays on 5xx, 429, connection errors and non-JSON answers
(a CDN's HTML error page). ``maybe_launched`` on a launch failure tells the caller
whether some attempt may have started an instance anyway (a timeout or 5xx after the
request was sent), so it can reconcile against the workloads list.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Sequence

import requests
from urllib3.exceptions import NewConnectionError

DEFAULT_API_URL = "https://api.comput3.ai/api/v0"
DEFAULT_RETRY_DELAYS = (5.0, 15.0, 30.0, 45.0, 60.0)

# wait(seconds) -> True when the caller wants to stop waiting (e.g. a cancel token).
Wait = Callable[[float], bool]


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


class Comput3Error(Exception):
    """The control plane did not do what was asked; the message names the call and why."""


class Comput3KeyRefused(Comput3Error):
    pass


class LaunchFailed(Comput3Error):
    def __init__(self, message: str, maybe_launched: bool):
        super().__init__(message)
        self.maybe_launched = maybe_launched


class LaunchAborted(LaunchFailed):
    pass


class WorkloadNotFound(Comput3Error):
    pass


def _why(exc: Exception) -> str:
    inner = getattr(exc.args[0] if exc.args else None, "reason", None)
    return f"{type(exc).__name__}: {type(inner).__name__}" if inner is not None else type(exc).__name__


class _Retryable(Exception):
    """One attempt failed in a way worth retrying."""

    def __init__(self, reason: str, maybe_launched: bool):
        super().__init__(reason)
        self.maybe_launched = maybe_launched


def _epoch(value: Any) -> int | None:
    """``expires`` as unix seconds, whether it comes as a number or an ISO time."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        try:
            return int(float(value))
        except ValueError:
            try:
                return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
            except ValueError:
                return None
    return None


@dataclass(frozen=True)
class Workload:
    workload: str
    node: str
    type: str | None = None
    expires: int | None = None

    @classmethod
    def from_json(cls, data: Any, source: str) -> "Workload":
        if not isinstance(data, dict) or not data.get("workload") or not data.get("node"):
            raise Comput3Error(f"{source}: answer lacks 'workload' or 'node': {str(data)[:200]}")
        return cls(str(data["workload"]), str(data["node"]), data.get("type"), _epoch(data.get("expires")))


@dataclass(frozen=True)
class Launch:
    workload: Workload
    attempts: int
    maybe_duplicated: bool  # an earlier attempt may also have started an instance


class Comput3Client:
    def __init__(self, api_url: str, api_key: str, *, retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
                 stop_retry_delays: Sequence[float] = (1.0, 3.0), timeout: float = 30.0,
                 launch_timeout: float = 60.0, session: requests.Session | None = None):
        self.api_url = api_url.rstrip("/")
        self.api_key = api_key
        self.retry_delays = tuple(retry_delays)
        self.stop_retry_delays = tuple(stop_retry_delays)
        self.timeout = timeout
        self.launch_timeout = launch_timeout
        self.session = session or requests.Session()

    @property
    def headers(self) -> dict[str, str]:
        return {"X-C3-API-KEY": self.api_key}

    def _post(self, path: str, body: dict[str, Any], timeout: float) -> requests.Response:
        return self.session.post(f"{self.api_url}{path}", json=body, headers=self.headers, timeout=timeout)

    def _refused(self, resp: requests.Response, call: str) -> Comput3KeyRefused:
        return Comput3KeyRefused(
            f"Comput3 refused the API key (HTTP {resp.status_code} from {call}): check C3_API_KEY")

    @staticmethod
    def _json(resp: requests.Response, call: str) -> Any:
        try:
            return resp.json()
        except ValueError:
            ctype = resp.headers.get("content-type", "no content type")
            raise _Retryable(f"{call} answered a non-JSON page (HTTP {resp.status_code}, {ctype})", True) from None

    # -- launch -----------------------------------------------------------------
    def launch(self, workload_type: str, expires: int, wait: Wait = _sleep) -> Launch:
        call = f"POST {self.api_url}/launch"
        attempts = 1 + len(self.retry_delays)
        maybe_launched = False
        last = ""
        for attempt in range(1, attempts + 1):
            try:
                workload = self._launch_once(workload_type, expires, call)
                return Launch(workload, attempt, maybe_launched)
            except _Retryable as exc:
                last = str(exc)
                maybe_launched = maybe_launched or exc.maybe_launched
            if attempt < attempts:
                if wait(self.retry_delays[attempt - 1]):
                    raise LaunchAborted(f"GPU launch abandoned after {attempt} attempts (last: {last})",
                                        maybe_launched)
        raise LaunchFailed(f"Could not launch a Comput3 GPU ({workload_type}) after {attempts} attempts; "
                           f"last error: {last}", maybe_launched)

    def _launch_once(self, workload_type: str, expires: int, call: str) -> Workload:
        try:
            resp = self._post("/launch", {"type": workload_type, "expires": expires}, self.launch_timeout)
        except requests.ConnectTimeout as exc:
            raise _Retryable(f"{call}: connection timed out ({exc})", False) from None
        except requests.Timeout:
            raise _Retryable(f"{call}: no answer within {self.launch_timeout:g} s", True) from None
        except requests.ConnectionError as exc:
            # Refused before sending is harmless; a reset after sending may have launched.
            never_sent = isinstance(getattr(exc.args[0] if exc.args else None, "reason", None),
                                    NewConnectionError)
            raise _Retryable(f"{call}: connection error ({_why(exc)})", not never_sent) from None
        if resp.status_code in (401, 403):
            raise self._refused(resp, call)
        if resp.status_code >= 500 or resp.status_code == 429:
            raise _Retryable(f"{call} answered HTTP {resp.status_code}", resp.status_code >= 500)
        if resp.status_code >= 400:
            raise LaunchFailed(f"{call} answered HTTP {resp.status_code}: {resp.text[:300]}", False)
        data = self._json(resp, call)
        try:
            return Workload.from_json(data, call)
        except Comput3Error as exc:  # a success we cannot read may have started an instance: never retried
            raise LaunchFailed(f"{exc}; whatever it started is found by its expires and stopped", True) from None

    # -- workloads and stop -------------------------------------------------------
    def workloads(self) -> list[Workload]:
        """Running workloads. Raises Comput3Error on any failure (callers retry)."""
        call = f"POST {self.api_url}/workloads"
        try:
            resp = self._post("/workloads", {"running": True}, self.timeout)
        except requests.RequestException as exc:
            raise Comput3Error(f"{call}: {type(exc).__name__}: {exc}") from None
        if resp.status_code in (401, 403):
            raise self._refused(resp, call)
        if resp.status_code != 200:
            raise Comput3Error(f"{call} answered HTTP {resp.status_code}")
        try:
            data = self._json(resp, call)
        except _Retryable as exc:
            raise Comput3Error(str(exc)) from None
        if isinstance(data, dict) and isinstance(data.get("workloads"), list):
            data = data["workloads"]
        if not isinstance(data, list):
            raise Comput3Error(f"{call}: expected a JSON list, got {type(data).__name__}")
        return [Workload.from_json(item, call) for item in data]

    def stop(self, workload: str, wait: Wait = _sleep) -> dict[str, Any]:
        """Stop a workload; a few quick retries on transient failures."""
        call = f"POST {self.api_url}/stop"
        last = ""
        for attempt in range(len(self.stop_retry_delays) + 1):
            if attempt and wait(self.stop_retry_delays[attempt - 1]):
                break
            try:
                resp = self._post("/stop", {"workload": workload}, self.timeout)
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status_code in (401, 403):
                raise self._refused(resp, call)
            if resp.status_code == 404:
                raise WorkloadNotFound(f"{call}: workload {workload} is unknown to Comput3")
            if resp.status_code == 200:
                try:
                    body = resp.json()
                except ValueError:
                    body = {}
                return body if isinstance(body, dict) else {"answer": body}
            last = f"HTTP {resp.status_code}"
        raise Comput3Error(f"{call} for workload {workload} failed: {last}")

    # -- node health --------------------------------------------------------------
    def node_health(self, base_url: str, timeout: float) -> str | None:
        """One HTTP check of the node's health endpoint: None when it answers 200, else why."""
        url = f"{base_url.rstrip('/')}/"
        try:
            resp = self.session.get(url, headers=self.headers, timeout=timeout)
        except requests.RequestException as exc:
            return f"GET {url} failed: {_why(exc)}"
        if resp.status_code != 200:
            return f"GET {url} answered HTTP {resp.status_code}"
        return None

    def check_node(self, base_url: str, attempts: int = 3, delay: float = 2.0, timeout: float = 10.0,
                   wait: Wait = _sleep) -> str | None:
        return with_attempts(lambda: self.node_health(base_url, timeout), attempts, delay, wait)


def with_attempts(check: Callable[[], str | None], attempts: int, delay: float, wait: Wait = _sleep) -> str | None:
    """Run ``check`` up to ``attempts`` times; None as soon as one passes, else the last reason.
    Stops early (returning the last reason) when ``wait`` says so."""
    reason: str | None = "not checked"
    for attempt in range(attempts):
        if attempt and wait(delay):
            break
        reason = check()
        if reason is None:
            return None
    return reason
