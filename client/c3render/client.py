"""``Client``: one typed method per route of the c3-render API."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypedDict
from urllib.parse import quote, urlsplit

import httpx

from . import __version__
from ._http import RetryPolicy, Retrying, raise_for_status
from .errors import DownloadFailed, WaitTimeout
from .models import (Batch, BatchSubmitted, Deliveries, Health, Job, JobPage, JobType, Message, Redelivery,
                     Result, Usage)

if TYPE_CHECKING:
    from typing_extensions import Unpack

DEFAULT_URL = "http://127.0.0.1:8000"
MAX_WAIT = 25  # the longest `Prefer: wait` the server honours, in seconds


class SubmitOptions(TypedDict, total=False):
    """What every job type accepts besides its own parameters."""

    notify_url: str
    max_time: int
    complete_in: int
    webhook_events_filter: list[str]
    priority: str  # high | normal (the default) | low
    idempotency_key: str  # default: a fresh one per call, so the client's retries are safe
    wait: int  # seconds (1..25) the server may hold the answer until the job is final


def _wait_header(wait: int) -> dict[str, str]:
    if isinstance(wait, bool) or not isinstance(wait, int) or not 1 <= wait <= MAX_WAIT:
        raise ValueError(f"wait must be an integer from 1 to {MAX_WAIT} seconds, not {wait!r}")
    return {"Prefer": f"wait={wait}"}


def _job_path(route: str, job_id: str, suffix: str = "") -> str:
    return f"/{route}/{quote(str(job_id), safe='')}{suffix}"


class Client:
    """``Client(base_url, api_key)``; both default to ``C3_RENDER_URL`` (else
    http://127.0.0.1:8000) and ``C3_RENDER_API_KEY``. Use it as a context manager, or
    call ``close()``."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 30.0, retry: RetryPolicy = RetryPolicy(),
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.base_url = (base_url or os.environ.get("C3_RENDER_URL") or DEFAULT_URL).rstrip("/")
        api_key = api_key if api_key is not None else os.environ.get("C3_RENDER_API_KEY")
        headers = {"User-Agent": f"c3-render-client/{__version__}", "Accept": "application/json"}
        if api_key:
            headers["X-C3-RENDER-KEY"] = api_key
        self._api = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout,
                                 transport=transport)
        # Result files live elsewhere (S3): that client never carries the API key.
        self._files = httpx.Client(timeout=timeout, transport=transport, follow_redirects=True,
                                   headers={"User-Agent": headers["User-Agent"]})
        self._timeout = timeout
        self._retrying = Retrying(retry, sleep)
        self._sleep = sleep
        self._clock = clock

    def close(self) -> None:
        self._api.close()
        self._files.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
              headers: dict[str, str] | None = None, idempotent: bool | None = None,
              extra_timeout: float = 0.0) -> httpx.Response:
        headers = headers or {}
        if idempotent is None:
            idempotent = method == "GET" or "Idempotency-Key" in headers
        params = {k: v for k, v in (params or {}).items() if v is not None}

        def send() -> httpx.Response:
            return raise_for_status(self._api.request(method, path, json=json, params=params or None,
                                                      headers=headers, timeout=self._timeout + extra_timeout))

        return self._retrying(send, idempotent, f"{method} {path}")

    # -- submissions -------------------------------------------------------------------
    def submit(self, job_type: JobType | str, params: dict[str, Any], *, notify_url: str | None = None,
               max_time: int | None = None, complete_in: int | None = None,
               webhook_events_filter: list[str] | None = None, idempotency_key: str | None = None,
               wait: int | None = None, priority: str | None = None) -> Job:
        """Submit a job of any type. Parameters left as None are not sent (the server's defaults
        apply). With ``wait`` the server may hold the answer up to that many seconds and answer
        the full status view; otherwise the Job has only ``id`` and ``status``."""
        body = {**params, "notify_url": notify_url, "max_time": max_time, "complete_in": complete_in,
                "webhook_events_filter": webhook_events_filter, "priority": priority}
        body = {k: v for k, v in body.items() if v is not None}
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        if wait is not None:
            headers.update(_wait_header(wait))
        resp = self._call("POST", f"/{JobType(job_type).value}", json=body, headers=headers,
                          extra_timeout=wait or 0)
        return Job.model_validate(resp.json())

    def csm(self, *, text: str | None = None, monologue: list[str] | None = None, voice: str | None = None,
            reference_audio_url: str | None = None, reference_text: str | None = None,
            temperature: float | None = None, topk: int | None = None, max_audio_length: int | None = None,
            pause_duration: int | None = None, **options: Unpack[SubmitOptions]) -> Job:
        """Text to speech: ``text`` or ``monologue``; voice random | conversational_a |
        conversational_b | clone (with ``reference_audio_url`` and ``reference_text``)."""
        return self.submit(JobType.CSM, {
            "text": text, "monologue": monologue, "voice": voice, "reference_audio_url": reference_audio_url,
            "reference_text": reference_text, "temperature": temperature, "topk": topk,
            "max_audio_length": max_audio_length, "pause_duration": pause_duration}, **options)

    def whisper(self, *, audio_url: str, model: str | None = None, task: str | None = None,
                language: str | None = None, **options: Unpack[SubmitOptions]) -> Job:
        """Speech to text of the audio at ``audio_url``."""
        return self.submit(JobType.WHISPER, {"audio_url": audio_url, "model": model, "task": task,
                                             "language": language}, **options)

    def portrait(self, *, image_url: str, audio_url: str, **options: Unpack[SubmitOptions]) -> Job:
        """A talking-portrait video of the image speaking the audio."""
        return self.submit(JobType.PORTRAIT, {"image_url": image_url, "audio_url": audio_url}, **options)

    def analyze(self, *, image_url: str, **options: Unpack[SubmitOptions]) -> Job:
        """A text description of the image."""
        return self.submit(JobType.ANALYZE, {"image_url": image_url}, **options)

    # -- batches -------------------------------------------------------------------------
    def submit_batch(self, items: list[dict[str, Any]], *, priority: str | None = None,
                     notify_url: str | None = None, idempotency_key: str | None = None) -> BatchSubmitted:
        """Submit up to 100 jobs in one request: each item ``{"type", "params",
        "idempotency_key"?}``. Every item is answered on its own, in order (a job id, or the
        error naming ``items.<index>.<field>``); the valid ones are accepted even when others
        are not. ``priority`` and ``notify_url`` are every item's defaults; ``notify_url`` also
        receives one ``batch.completed`` webhook. An Idempotency-Key is always sent (a fresh
        one unless given), so the client's retries make one batch."""
        body: dict[str, Any] = {"items": items}
        if priority is not None:
            body["priority"] = priority
        if notify_url is not None:
            body["notify_url"] = notify_url
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        return BatchSubmitted.model_validate(self._call("POST", "/batch", json=body, headers=headers).json())

    def batch(self, batch_id: str) -> Batch:
        """The batch's members: counts by status and their ids."""
        return Batch.model_validate(self._call("GET", _job_path("batch", batch_id)).json())

    def wait_batch(self, batch_id: str, timeout: float = 3600.0, *,
                   on_update: Callable[[Batch], None] | None = None, poll_interval: float = 1.0,
                   max_poll_interval: float = 5.0) -> Batch:
        """Block until every member of the batch is final and return it; raise WaitTimeout
        after ``timeout`` seconds. Polls with a growing pause; ``on_update`` sees every view."""
        deadline = self._clock() + timeout
        pause = poll_interval
        while True:
            batch = self.batch(batch_id)
            if on_update is not None:
                on_update(batch)
            if batch.completed:
                return batch
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise WaitTimeout(f"Batch {batch_id} has {batch.finished} of {batch.total} jobs final "
                                  f"after {timeout:g}s", last=batch)
            self._sleep(min(pause, remaining))
            pause = min(pause * 1.5, max_poll_interval)

    # -- one job -------------------------------------------------------------------------
    def _status(self, job_id: str, wait: int | None) -> tuple[Job, bool]:
        headers = _wait_header(wait) if wait is not None else None
        resp = self._call("GET", _job_path("status", job_id), headers=headers, extra_timeout=wait or 0)
        applied = resp.headers.get("Preference-Applied", "").replace(" ", "").startswith("wait=")
        return Job.model_validate(resp.json()), applied

    def status(self, job_id: str, wait: int | None = None) -> Job:
        """The job's status view; with ``wait`` (1..25 s) the server may hold the answer until
        the job is final."""
        return self._status(job_id, wait)[0]

    def wait(self, job_id: str, timeout: float = 600.0, *, on_update: Callable[[Job], None] | None = None,
             long_poll: int = MAX_WAIT, poll_interval: float = 0.5, max_poll_interval: float = 5.0) -> Job:
        """Block until the job is final and return its view; raise WaitTimeout after ``timeout``
        seconds. Asks the server to hold each answer (``Prefer: wait``, up to ``long_poll``
        seconds); when the server does not apply that, polls with a growing pause.
        ``on_update`` sees every view that is not final."""
        deadline = self._clock() + timeout
        pause = poll_interval
        while True:
            remaining = deadline - self._clock()
            job, applied = self._status(job_id, max(1, min(long_poll, MAX_WAIT, int(remaining))))
            if job.is_terminal:
                return job
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise WaitTimeout(f"Job {job_id} is still {job.status.value} after {timeout:g}s", last=job)
            if on_update is not None:
                on_update(job)
            if not applied:
                self._sleep(min(pause, remaining))
                pause = min(pause * 1.5, max_poll_interval)

    def update(self, job_id: str, status: str, error: str | None = None, remove_data: bool = False) -> Message:
        """Set a queued or running job to cancelled, timed_out or failed; ``remove_data`` also
        deletes its record and result files (for a finished job too)."""
        body: dict[str, Any] = {"status": status}
        if error is not None:
            body["error"] = error
        if remove_data:
            body["remove_data"] = True
        return Message.model_validate(self._call("POST", _job_path("job", job_id), json=body).json())

    def cancel(self, job_id: str, error: str | None = None, remove_data: bool = False) -> Message:
        return self.update(job_id, "cancelled", error, remove_data)

    def retry(self, job_id: str, idempotency_key: str | None = None) -> Job:
        """A new job with the parameters of a failed, timed_out or cancelled one. Like a
        submission it carries an Idempotency-Key (a fresh one by default), so the client's
        own retries of this call make one new job, not several."""
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        return Job.model_validate(self._call("POST", _job_path("jobs", job_id, "/retry"), headers=headers).json())

    def deliveries(self, job_id: str) -> Deliveries:
        """Every webhook attempt of the job, oldest first: time, event, HTTP status or error
        class, latency and webhook-id."""
        return Deliveries.model_validate(self._call("GET", _job_path("jobs", job_id, "/deliveries")).json())

    def redeliver(self, job_id: str, event: str | None = None) -> Redelivery:
        """Queue one more delivery of a final job's webhook (``event``: "completed", the
        default, or "start"), with the same webhook-id. Conflict while the job is not final."""
        body = {"event": event} if event else {}
        return Redelivery.model_validate(self._call("POST", _job_path("jobs", job_id, "/redeliver"),
                                                    json=body).json())

    def result(self, job_id: str) -> Result:
        """A successful job's result; Conflict (with ``job_status``) while it has none."""
        return Result.model_validate(self._call("GET", _job_path("result", job_id)).json())

    def download(self, job_id: str, path: str | os.PathLike[str]) -> Path:
        """Write the job's result to ``path`` (a file, or a directory to put ``<id>.<ext>`` in)
        and return the file's path. Media is streamed to a ``.part`` file renamed at the end,
        so a failed download leaves no partial file under the final name; a text result is
        written as UTF-8."""
        result = self.result(job_id)
        url = result.result_url or result.result_link
        target = Path(path)
        if target.is_dir():
            suffix = PurePosixPath(urlsplit(url).path).suffix if url else ".txt"
            target = target / f"{job_id}{suffix}"
        if url is None:
            target.write_text(result.text or "", encoding="utf-8")
            return target
        part = target.with_name(target.name + ".part")

        def fetch() -> Path:
            with self._files.stream("GET", url) as resp:
                if resp.status_code >= 400:
                    raise DownloadFailed(f"Downloading the result of job {job_id} failed",
                                         status=resp.status_code)
                with open(part, "wb") as out:
                    for chunk in resp.iter_bytes(64 * 1024):
                        out.write(chunk)
            part.replace(target)
            return target

        try:
            return self._retrying(fetch, True, f"download {job_id}")
        finally:
            part.unlink(missing_ok=True)

    # -- many jobs -----------------------------------------------------------------------
    def jobs(self, status: str | None = None, type: str | None = None, limit: int | None = None,
             cursor: str | None = None) -> JobPage:
        """One page of this key's jobs, newest first; ``next_cursor`` fetches the next."""
        params = {"status": status, "type": type, "limit": limit, "cursor": cursor}
        return JobPage.model_validate(self._call("GET", "/jobs", params=params).json())

    def iter_jobs(self, status: str | None = None, type: str | None = None, page_size: int | None = None,
                  cursor: str | None = None) -> Iterator[Job]:
        """Every job matching the filters, newest first, fetching pages as needed."""
        seen: set[str] = set()
        while True:
            page = self.jobs(status, type, page_size, cursor)
            yield from page.jobs
            cursor = page.next_cursor
            if not cursor or cursor in seen:
                return
            seen.add(cursor)

    def usage(self, from_: str | None = None, to: str | None = None) -> Usage:
        """This key's jobs, GPU seconds and USD by day (UTC, YYYY-MM-DD) and job type."""
        params = {"from": from_, "to": to}
        return Usage.model_validate(self._call("GET", "/usage", params=params).json())

    def health(self) -> Health:
        return Health.model_validate(self._call("GET", "/health").json())
