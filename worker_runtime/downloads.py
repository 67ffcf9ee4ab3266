"""Downloads of the URLs users hand in (image_url, audio_url, reference_audio_url).

Streamed to disk with a size cap under one hard deadline (DOWNLOAD_TIMEOUT, whatever
the job's max_time): connect, headers and body together, so a server that sends its
headers or its body a byte at a time is hung up on at the deadline. The body must not
be a web page; and, outside local mode, no request may reach a private, loopback,
link-local or cloud-metadata address (the policy in chalicelib/platform/egress.py): each
connection's host is resolved and checked before connecting, the connection goes to the
checked address, and its peer is checked again. Redirects are followed by hand, so every
hop is a new checked request.

Every failure raises TaskError naming the field, the URL and the rule; the resolved
address, port states and library messages go to the log only."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urljoin, urlsplit

import requests
from urllib3.exceptions import HTTPError

from chalicelib.platform.egress import AddressRefused, Deadline, Policy, default_policy, egress_session, resolve_host
from chalicelib.platform.logs import get_logger

from .cancel import CancelToken
from .tasks.base import TaskError

log = get_logger("c3.downloads")

CHUNK = 64 * 1024
DEADLINE_SLACK = 0.05  # a read timeout this close to the deadline is the deadline
REDIRECTS = (301, 302, 303, 307, 308)
NOT_MEDIA_TYPES = ("text/", "application/json", "application/xhtml", "application/xml")
WHAT = {"image": "an image", "audio": "an audio or video file"}
HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml")


@dataclass(frozen=True)
class Download:
    path: Path
    url: str  # the final URL after redirects
    content_type: str
    size: int


class Downloader:
    def __init__(self, max_bytes: int, timeout: float, max_redirects: int = 5,
                 allow_private: bool = False,
                 resolve: Callable[[str], list[str]] | None = None,
                 policy: Policy = default_policy,
                 monotonic: Callable[[], float] = time.monotonic):
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.allow_private = allow_private
        self.resolve = resolve or resolve_host
        self.policy = policy
        self.monotonic = monotonic

    def fetch(self, url: str, dest: Path, *, field: str, kind: str,
              cancel: CancelToken | None = None) -> Download:
        """Download ``url`` (the request's ``field``) to ``dest``; ``kind`` is "image" or "audio"."""

        def fail(reason: str) -> TaskError:
            return TaskError(f"Could not download {field} {url}: {reason}")

        deadline = Deadline(self.timeout, self.monotonic)
        current = url
        with deadline, egress_session(self.allow_private, self.policy, self.resolve) as session:
            for hop in range(self.max_redirects + 1):
                prefix = f"redirected to {current}: " if hop else ""
                self._check_target(current, fail, prefix)
                try:
                    response = session.get(current, stream=True, allow_redirects=False,
                                           timeout=self._remaining(deadline, fail),
                                           headers={"Accept": f"{kind}/*, */*;q=0.5"})
                except AddressRefused as exc:
                    log.info("download.refused", field=field, url=current, detail=exc.detail)
                    raise fail(prefix + str(exc)) from None
                except requests.Timeout as exc:
                    log.info("download.timeout", field=field, url=current, detail=_short(exc))
                    raise fail(f"not finished within {self.timeout:g} s") from None
                except requests.RequestException as exc:
                    log.info("download.failed", field=field, url=current, detail=_short(exc))
                    raise fail(f"{prefix}the connection failed or broke off") from None
                with response:
                    if response.status_code in REDIRECTS and response.headers.get("Location"):
                        current = urljoin(current, response.headers["Location"])
                        continue
                    return self._save(response, current, dest, kind, deadline, cancel, fail, field)
            raise fail(f"more than {self.max_redirects} redirects")

    # -- steps -------------------------------------------------------------
    def _check_target(self, url: str, fail: Callable[[str], TaskError], prefix: str) -> None:
        """Only absolute http(s) URLs (the addresses are checked by the session, per connection)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise fail(f"{prefix}only absolute http(s) URLs can be downloaded")

    def _remaining(self, deadline: Deadline, fail: Callable[[str], TaskError]) -> float:
        if deadline.expired or deadline.left() <= 0.001:
            raise fail(f"not finished within {self.timeout:g} s")
        return deadline.left()

    def _save(self, response: requests.Response, final_url: str, dest: Path, kind: str,
              deadline: Deadline, cancel: CancelToken | None,
              fail: Callable[[str], TaskError], field: str) -> Download:
        if response.status_code != 200:
            raise fail(f"HTTP {response.status_code} {response.reason or ''}".rstrip())
        ctype = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype.startswith(NOT_MEDIA_TYPES):
            raise fail(f"the server sent {ctype}, not {WHAT[kind]}")
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise fail(f"{int(declared)} bytes is over the limit of {self.max_bytes} bytes")
        size = 0
        if cancel is not None:
            cancel.on_cancel(lambda: _abort(response))
        try:
            with open(dest, "wb") as out:
                while chunk := response.raw.read1(CHUNK, decode_content=True):
                    if size == 0 and chunk.lstrip()[:16].lower().startswith(HTML_STARTS):
                        raise fail(f"the server sent a web page, not {WHAT[kind]}")
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise fail(f"more than the limit of {self.max_bytes} bytes")
                    out.write(chunk)
                    self._remaining(deadline, fail)
        except (OSError, HTTPError, requests.RequestException) as exc:
            dest.unlink(missing_ok=True)
            if cancel is not None:
                cancel.raise_if_cancelled()  # the break was our own abort
            if deadline.expired or deadline.left() <= DEADLINE_SLACK:  # the deadline shut the socket
                raise fail(f"not finished within {self.timeout:g} s") from None
            log.info("download.broke_off", field=field, url=final_url, size=size, detail=_short(exc))
            raise fail(f"transfer broke off after {size} bytes") from None
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        if cancel is not None:
            cancel.raise_if_cancelled()
        if deadline.expired:  # the last read ended at the deadline's shutdown, not at the body's end
            dest.unlink(missing_ok=True)
            raise fail(f"not finished within {self.timeout:g} s")
        if size == 0:
            dest.unlink(missing_ok=True)
            raise fail("the server sent an empty body")
        return Download(path=dest, url=final_url, content_type=ctype, size=size)


def _abort(response: requests.Response) -> None:
    """Wake a read blocked on this response's socket (called from the canceller's thread)."""
    conn = getattr(response.raw, "connection", None)
    sock = getattr(conn, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."
