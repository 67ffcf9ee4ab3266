"""The operators' page (GET /ui) in a real headless Chromium, against `make run`'s stack:
`python -m infra.local.run` on free ports and its own run directory (its own moto server,
simulator, worker, handlers and sample server), one job of each type submitted with the
README's payloads plus one that fails. The browser refuses a wrong key, lists the jobs,
plays the TTS result from the presigned S3 URL, shows the failed job's error as text and
the health numbers, and fits a 390 px phone screen.

Chromium and chromedriver are Debian's (`make browser` installs them); Selenium Manager is
never asked to download anything."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from chalicelib.api.openapi import UI_PATHS
from chalicelib.api.ui import ASSETS, STATIC
from infra.local.processes import ROOT
from tests.conftest import PROFILE, resource_env
from tests.support import procs
from tests.support.harness import wait_until
from tests.support.receiver import Receiver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
KEY = "ui-key"
FINAL = {"success", "failed", "cancelled", "timed_out"}


def in_browser(test: Any) -> Any:
    """The browser tests share one `make run` stack and one Chromium (module fixtures): the
    first one's time includes starting both and finishing the jobs."""
    return pytest.mark.integration(pytest.mark.timeout(300)(test))


# ---- the static files, without a browser -------------------------------------------------

def test_every_page_file_is_served_and_documented() -> None:
    assert set(ASSETS) == set(UI_PATHS) == {"/ui", "/ui/app.js", "/ui/app.css"}
    for route, (name, content_type) in ASSETS.items():
        assert (STATIC / name).is_file()
        assert set(UI_PATHS[route]["get"]["responses"]["200"]["content"]) == {content_type.split(";")[0]}
        assert UI_PATHS[route]["get"]["security"] == []


def test_the_page_loads_nothing_from_elsewhere_and_writes_no_html() -> None:
    for name in ("index.html", "app.js", "app.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), name  # no CDN, no fonts
        assert "@import" not in text and "url(" not in text, name
    script = (STATIC / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink


# ---- the stack and the browser -----------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """`make run` (python -m infra.local.run) with a key, on free ports; stopped with SIGINT
    to its process group, as Ctrl-C stops it."""
    run_dir = tmp_path_factory.mktemp("ui-run")
    ports = {name: procs.free_port() for name in ("API_PORT", "MOTO_PORT", "SIMULATOR_PORT", "SAMPLES_PORT")}
    env = {k: v for k, v in os.environ.items()
           if k not in ("C3_API_KEY", "AWS_ENDPOINT_URL") and not k.startswith("AWS_ENDPOINT_URL_")}
    if PROFILE == "localstack":  # on the profile's emulators (make run honours AWS_ENDPOINT_URL*)
        env.update({**request.getfixturevalue("aws_endpoints"), **resource_env(f"u{uuid.uuid4().hex[:12]}")})
    env.update({name: str(port) for name, port in ports.items()})
    env.update({"RUN_DIR": str(run_dir), "C3_RENDER_API_KEY": KEY, "WORKERS": "1", "ALLOW_PRIVATE_URLS": "true",
                "LAMBDA_POLL_WAIT_SECONDS": "1", "WEBHOOK_INTERVAL": "0.2"})
    log_path = run_dir / "make-run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "infra.local.run"], env=env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    receiver = Receiver().start()
    try:
        api = f"http://127.0.0.1:{ports['API_PORT']}"
        banner = wait_until(lambda: proc.poll() is not None or "c3-render is up" in log_path.read_text(), 150, 0.2)
        text = log_path.read_text()
        assert proc.poll() is None, text[-4000:]
        assert banner and f"Web page: {api}/ui" in text
        yield {"api": api, "samples": f"http://127.0.0.1:{ports['SAMPLES_PORT']}", "receiver": receiver,
               "log": log_path}
    finally:
        stop_group(proc)
        receiver.stop()


def stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def jobs(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The README's walkthrough jobs (with a notify_url), and a download that 404s (its URL
    carrying markup the page must show as text); each followed until it is final and its
    webhook settled. Name -> final status view."""
    samples, hook = stack["samples"], stack["receiver"].url
    submissions = {
        "csm": ("/csm", {"monologue": ["Hello from c3-render.", "This is the second sentence."],
                         "voice": "conversational_a", "notify_url": hook}),
        "whisper": ("/whisper", {"audio_url": f"{samples}/speech.wav", "model": "large-v3", "notify_url": hook}),
        "portrait": ("/portrait", {"image_url": f"{samples}/portrait.jpg", "audio_url": f"{samples}/speech.wav",
                                   "notify_url": hook}),
        "analyze": ("/analyze", {"image_url": f"{samples}/portrait.jpg", "notify_url": hook}),
        "broken": ("/whisper", {"audio_url": f"{samples}/missing.wav?<b>not-bold</b>"}),
    }
    ids = {}
    for name, (path, body) in submissions.items():
        resp = requests.post(f"{stack['api']}{path}", json=body, headers={"X-C3-RENDER-KEY": KEY}, timeout=10)
        assert resp.status_code == 200, resp.text
        ids[name] = resp.json()["id"]

    def settled() -> dict[str, dict[str, Any]] | None:
        views = {name: requests.get(f"{stack['api']}/status/{job_id}", headers={"X-C3-RENDER-KEY": KEY},
                                    timeout=10).json() for name, job_id in ids.items()}
        done = all(v["status"] in FINAL and (v.get("webhook") or {}).get("status") != "pending"
                   for v in views.values())
        return views if done else None

    views = wait_until(settled, 150, 0.5)
    assert {n: v["status"] for n, v in views.items()} == {
        "csm": "success", "whisper": "success", "portrait": "success", "analyze": "success", "broken": "failed"}, \
        json.dumps(views, indent=1)
    return views


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    assert not missing, f"{', '.join(missing)} missing: `make browser` installs Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={profile}",
                "--window-size=1280,900"):
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    chrome.set_script_timeout(30)
    yield chrome
    chrome.quit()


def until(chrome: Any, condition: Any, timeout: float = 20) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(chrome, timeout, poll_frequency=0.1,
                         ignored_exceptions=[StaleElementReferenceException]).until(condition)


def css(chrome: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return chrome.find_elements(By.CSS_SELECTOR, selector)


def enter_key(chrome: Any, key: str) -> None:
    until(chrome, lambda c: css(c, "#key") and css(c, "#key")[0].is_displayed())
    field = css(chrome, "#key")[0]
    field.clear()
    field.send_keys(key)
    css(chrome, "#key-submit")[0].click()


def signed_in(chrome: Any, stack: dict[str, Any]) -> None:
    """The page open with the right key (from sessionStorage when it already has it)."""
    if not chrome.current_url.startswith(f"{stack['api']}/ui"):
        chrome.get(f"{stack['api']}/ui")
    until(chrome, lambda c: css(c, "#dashboard")[0].is_displayed() or css(c, "#key")[0].is_displayed())
    if not css(chrome, "#dashboard")[0].is_displayed():
        enter_key(chrome, KEY)
        until(chrome, lambda c: css(c, "#dashboard")[0].is_displayed())


def open_job(chrome: Any, job_id: str) -> Any:
    if css(chrome, "#detail[open]"):
        css(chrome, "#detail-close")[0].click()
        until(chrome, lambda c: not css(c, "#detail[open]"))
    until(chrome, lambda c: css(c, f'tr.job[data-id="{job_id}"]'))[0].click()
    until(chrome, lambda c: css(c, "#detail[open] .full-id") and
          css(c, "#detail .full-id")[0].text == job_id)
    return css(chrome, "#detail")[0]


# ---- in the browser ----------------------------------------------------------------------

@in_browser
def test_a_wrong_key_shows_an_error_and_no_jobs(stack, jobs, driver) -> None:
    driver.get(f"{stack['api']}/ui")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    enter_key(driver, "not-the-key")
    error = until(driver, lambda c: [e for e in css(c, "#login-error") if e.is_displayed()])[0]
    assert "refused this key" in error.text and "401" in error.text
    assert css(driver, "tr.job") == [] and not css(driver, "#dashboard")[0].is_displayed()
    assert driver.execute_script("return sessionStorage.getItem('c3-render-key')") is None
    # Another key can be entered at once.
    enter_key(driver, KEY)
    until(driver, lambda c: css(c, "#dashboard")[0].is_displayed())
    assert not css(driver, "#login-error")[0].is_displayed()


@in_browser
def test_the_list_shows_every_job_with_its_status(stack, jobs, driver, tmp_path) -> None:
    signed_in(driver, stack)
    for name, view in jobs.items():
        row = until(driver, lambda c: css(c, f'tr.job[data-id="{view["id"]}"]'))[0]
        assert row.find_element("css selector", ".type").text == view["type"]
        assert row.find_element("css selector", ".status").text == view["status"]
        assert row.find_element("css selector", ".attempts").text == "1"
        assert re.fullmatch(r"\d+ (s|min \d+ s)", row.find_element("css selector", ".age").text)
        assert row.find_element("css selector", ".webhook").text == ("—" if name == "broken" else "delivered")
    shot = tmp_path / "desktop.png"
    driver.save_screenshot(str(shot))
    print(f"desktop screenshot: {shot}")


@in_browser
def test_the_tts_result_plays(stack, jobs, driver) -> None:
    signed_in(driver, stack)
    detail = open_job(driver, jobs["csm"]["id"])
    audio = until(driver, lambda c: css(c, "#detail audio"))[0]
    assert audio.get_attribute("src").startswith("http://127.0.0.1:")  # the presigned URL on the local S3
    assert "Hello from c3-render." in detail.text  # the parameters
    assert [e.text for e in css(driver, "#detail .timeline .phase")][0] == "queued"
    started = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "document.querySelector('#detail audio').play().then(() => done('playing'),"
        " (err) => done(`${err.name}: ${err.message}`));")
    assert started == "playing"
    state = until(driver, lambda c: c.execute_script(
        "const a = document.querySelector('#detail audio');"
        "return a.error ? {error: a.error.code} : a.currentTime > 0 ? "
        "{time: a.currentTime, duration: a.duration, ready: a.readyState} : null;"))
    assert "error" not in state and state["duration"] > 0 and state["ready"] >= 2, state


@in_browser
def test_a_failed_job_shows_its_error_as_text(stack, jobs, driver) -> None:
    signed_in(driver, stack)
    open_job(driver, jobs["broken"]["id"])
    error = until(driver, lambda c: css(c, "#detail .job-error"))[0]
    assert error.text == jobs["broken"]["error"]
    assert "404" in error.text and "<b>not-bold</b>" in error.text  # markup shown, not parsed
    assert css(driver, "#detail b") == []
    assert "No result: the job is failed." in css(driver, "#detail-result")[0].text


@in_browser
def test_health_shows_workers_queue_and_gpus(stack, jobs, driver) -> None:
    signed_in(driver, stack)
    health = requests.get(f"{stack['api']}/health", headers={"X-C3-RENDER-KEY": KEY}, timeout=10).json()

    def shown(name: str) -> str:
        # Read in the page in one step: the panel is re-rendered every poll, so an element
        # found by one WebDriver call may be gone by the next.
        return driver.execute_script(
            "const e = document.querySelector(arguments[0]); return e && e.innerText;",
            f'[data-stat="{name}"] .value')

    until(driver, lambda c: css(c, '[data-stat="workers.alive"]'))
    assert shown("workers.alive") == str(health["workers"]["alive"]) == "1"
    assert shown("queue.messages") == "0" and shown("queue.dead_letters") == "0"
    assert shown("queue.lanes") == "high 0/0 · normal 0/0 · low 0/0"  # each priority lane: waiting / in flight
    assert shown("jobs.queued") == "0" and shown("jobs.running") == "0"
    assert int(shown("gpus.instances")) >= 1
    # Each instance on a line of its own, with its billed time (what /health says).
    slots = [g["slot"] for g in health["gpus"]["fleet"]]
    lines = "return [...document.querySelectorAll('.fleet li')].map((li) => [li.dataset.slot, li.innerText]);"
    until(driver, lambda c: [slot for slot, _ in c.execute_script(lines)] == slots)
    line = driver.execute_script(lines)[0][1]
    assert line.startswith(slots[0]) and "billed" in line


@in_browser
def test_a_phone_screen_needs_no_horizontal_scrolling(stack, jobs, driver, tmp_path) -> None:
    signed_in(driver, stack)
    if css(driver, "#detail[open]"):
        css(driver, "#detail-close")[0].click()
    driver.set_window_size(390, 844)
    try:
        until(driver, lambda c: c.execute_script("return window.innerWidth") <= 390)
        fits = "return document.documentElement.scrollWidth <= window.innerWidth"
        assert driver.execute_script(fits), driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]")
        # The table is cards now: each row's cells are labelled.
        label = driver.execute_script(
            "return getComputedStyle(document.querySelector('tr.job td.status'), '::before').content")
        assert label == '"Status"'
        phone = tmp_path / "phone.png"
        driver.execute_script("document.getElementById('jobs').scrollIntoView()")
        driver.save_screenshot(str(phone))
        open_job(driver, jobs["portrait"]["id"])
        until(driver, lambda c: css(c, "#detail video"))
        assert driver.execute_script(fits)
        detail = tmp_path / "phone-detail.png"
        driver.save_screenshot(str(detail))
        print(f"phone screenshots: {phone} {detail}")
    finally:
        driver.set_window_size(1280, 900)
