"""Downloads of user URLs against a real local HTTP server: size cap, deadline, content
check, and the SSRF guard (host check before each hop, socket check at connect)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from chalicelib.platform.egress import PUBLIC_REFUSAL, refusal_reason
from tests.support.node_apps import inputs  # noqa: F401 - fixture
from tests.support.harness import wait_until
from tests.support.samples import SampleServer
from worker_runtime.cancel import CancelToken, TaskCancelled
from worker_runtime.downloads import Downloader
from worker_runtime.tasks.base import TaskError

PUBLIC = "93.184.216.34"


def local(**kw: object) -> Downloader:
    return Downloader(max_bytes=kw.pop("max_bytes", 5_000_000), timeout=kw.pop("timeout", 10.0),
                      allow_private=kw.pop("allow_private", True), **kw)  # type: ignore[arg-type]


def fetch_error(dl: Downloader, url: str, dest: Path, kind: str = "image") -> str:
    with pytest.raises(TaskError) as info:
        dl.fetch(url, dest, field="image_url", kind=kind)
    assert not dest.exists(), "a failed download must not leave a partial file"
    return str(info.value)


def test_streams_the_file_to_disk(inputs: SampleServer, tmp_path: Path) -> None:
    dest = tmp_path / "x.jpg"
    got = local().fetch(inputs.url("portrait.jpg"), dest, field="image_url", kind="image")
    assert dest.read_bytes() == (inputs.root / "portrait.jpg").read_bytes()
    assert (got.content_type, got.size) == ("image/jpeg", dest.stat().st_size)


@pytest.mark.parametrize("path, reason", [
    ("/status/404", "HTTP 404 Not Found"),
    ("/status/500", "HTTP 500"),
    ("/html", "the server sent text/html, not an image"),
    ("/disguised", "the server sent a web page, not an image"),
    ("/files/missing.jpg", "HTTP 404"),
])
def test_bad_answers_fail_naming_the_url(inputs: SampleServer, tmp_path: Path, path: str, reason: str) -> None:
    url = inputs.base + path
    message = fetch_error(local(), url, tmp_path / "x")
    assert message.startswith(f"Could not download image_url {url}: ")
    assert reason in message


def test_size_cap_by_header_and_by_counting(inputs: SampleServer, tmp_path: Path) -> None:
    declared = fetch_error(local(max_bytes=1000), inputs.url("large.jpg"), tmp_path / "a")
    assert "is over the limit of 1000 bytes" in declared
    counted = fetch_error(local(max_bytes=20_000), inputs.base + "/chunked/50000", tmp_path / "b")
    assert "more than the limit of 20000 bytes" in counted


def test_whole_download_deadline(inputs: SampleServer, tmp_path: Path) -> None:
    message = fetch_error(local(timeout=0.6), inputs.base + "/drip", tmp_path / "x")
    assert "within 0.6 s" in message


def test_cancel_stops_a_download(inputs: SampleServer, tmp_path: Path) -> None:
    token = CancelToken()
    threading.Timer(0.3, token.cancel, args=("client cancelled", "client")).start()
    with pytest.raises(TaskCancelled):
        local().fetch(inputs.base + "/drip", tmp_path / "x", field="image_url", kind="image", cancel=token)
    assert not (tmp_path / "x").exists()


def test_redirects_are_followed(inputs: SampleServer, tmp_path: Path) -> None:
    got = local().fetch(inputs.base + "/redirect?to=/files/speech.wav", tmp_path / "a", field="audio_url",
                        kind="audio")
    assert got.url == inputs.url("speech.wav")
    assert (tmp_path / "a").read_bytes() == (inputs.root / "speech.wav").read_bytes()
    message = fetch_error(local(), inputs.base + "/redirect?to=ftp://example.com/x", tmp_path / "b")
    assert "redirected to ftp://example.com/x: only absolute http(s) URLs" in message


# -- SSRF guard (local mode off) ------------------------------------------------

def test_private_addresses_are_refused_outside_local_mode(inputs: SampleServer, tmp_path: Path) -> None:
    url = inputs.url("portrait.jpg")
    message = fetch_error(local(allow_private=False), url, tmp_path / "x")
    assert message == f"Could not download image_url {url}: {PUBLIC_REFUSAL}"


def test_metadata_host_is_refused_before_connecting(tmp_path: Path) -> None:
    dl = local(allow_private=False, resolve=lambda host: ["169.254.169.254"])
    message = fetch_error(dl, "http://metadata.google.internal/computeMetadata/v1/", tmp_path / "x")
    assert message.endswith(PUBLIC_REFUSAL) and "169.254" not in message


def test_redirect_to_a_private_address_is_refused(inputs: SampleServer, tmp_path: Path) -> None:
    # The sample server's own port stands in for a public site; any other port on
    # 127.0.0.1 stays what it is: loopback.
    def policy(address: str, port: int) -> str | None:
        return None if port == inputs.port else refusal_reason(address)

    target = "http://127.0.0.1:9/secret"
    message = fetch_error(local(allow_private=False, policy=policy), inputs.base + f"/redirect?to={target}",
                          tmp_path / "x")
    assert f"redirected to {target}: {PUBLIC_REFUSAL}" in message


def test_the_connection_goes_to_the_checked_address(inputs: SampleServer, tmp_path: Path) -> None:
    """Resolved once per connection, checked, connected to: a name whose answer is
    public is fetched from that public address, never re-resolved to the local server."""
    dl = local(allow_private=False, resolve=lambda host: [PUBLIC])
    message = fetch_error(dl, f"http://files.example.test:{inputs.port}/files/portrait.jpg", tmp_path / "x")
    assert message.endswith("the connection failed or broke off") or "not finished within" in message


def test_the_connected_peer_is_checked_again(inputs: SampleServer, tmp_path: Path) -> None:
    """The guard kept against rebinding: the peer of the connected socket is judged again."""
    calls: list[str] = []

    def policy(address: str, port: int) -> str | None:
        calls.append(address)
        return None if len(calls) == 1 else refusal_reason(address)  # public at the check, not once connected

    message = fetch_error(local(allow_private=False, policy=policy), inputs.url("portrait.jpg"), tmp_path / "x")
    assert message.endswith(PUBLIC_REFUSAL) and calls == ["127.0.0.1", "127.0.0.1"]


@pytest.mark.parametrize("slow", ["headers", "encoded"])
def test_a_slow_server_is_hung_up_on_at_the_download_deadline(tmp_path: Path, slow: str) -> None:
    """A byte every 0.1 s beats every per-read timeout, and a check between reads never
    runs: the status line's headers never end, or the gzip body's header never ends, so
    the reader never returns a byte of either. Only the hard deadline (1 s here) ends the
    download, hanging up on the server; without it the download would never end."""
    from tests.support.hostile import Trickler

    peer = Trickler(slow=slow, every=0.1, body_bytes=1_000_000)  # headers: a day's trickle
    errors: list[str] = []
    fetch = threading.Thread(target=lambda: errors.append(fetch_error(local(timeout=1), peer.url, tmp_path / "x",
                                                                       kind="audio")), daemon=True)
    try:
        fetch.start()
        wait_until(lambda: errors, 20)  # seconds of slack for a loaded machine; it never ends on its own
        assert errors == [f"Could not download image_url {peer.url}: not finished within 1 s"]
        wait_until(lambda: "end" in peer.connections[0], 10)  # the server saw the hang-up
        assert peer.connections[0]["client_hung_up"]
    finally:
        peer.stop()


@pytest.mark.parametrize("address, reason", [
    ("10.1.2.3", "a private address"), ("172.16.0.1", "a private address"),
    ("192.168.1.10", "a private address"), ("127.0.0.1", "a loopback address"),
    ("::1", "a loopback address"), ("169.254.10.1", "a link-local address"),
    ("fe80::1", "a link-local address"), ("169.254.169.254", "a cloud metadata address"),
    ("fd00:ec2::254", "a cloud metadata address"), ("::ffff:10.0.0.1", "a private address"),
    ("100.64.0.1", "a non-public address"), ("0.0.0.0", "a reserved address"),
    (PUBLIC, None), ("2606:4700:4700::1111", None),
])
def test_refusal_reasons(address: str, reason: str | None) -> None:
    assert refusal_reason(address) == reason
