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
from selenium.common.exceptions import StaleElementReferenceException

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
OTHER_KEY = "other-tenant-key"  # a second tenant
OPS_KEY = "ops-key"  # an operator key (C3_RENDER_OPERATOR_KEYS)
SHOTS = Path(os.environ.get("UI_SCREENSHOTS") or "/tmp/c3-render-ui-shots")
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
    env.update({"RUN_DIR": str(run_dir), "C3_RENDER_API_KEY": f"{KEY},{OTHER_KEY}", "WORKERS": "1",
                "C3_RENDER_OPERATOR_KEYS": OPS_KEY, "ALLOW_PRIVATE_URLS": "true",
                "LAMBDA_POLL_WAIT_SECONDS": "1", "WEBHOOK_INTERVAL": "0.2",
                "LOCAL_SCHEDULE_INTERVAL": "5"})  # the reaper's GPU sample for /stats every 5 s
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
        assert f"Logs: {run_dir / 'logs'}/" in text and ".run/logs" not in text  # the paths follow RUN_DIR
        yield {"api": api, "samples": f"http://127.0.0.1:{ports['SAMPLES_PORT']}", "receiver": receiver,
               "log": log_path, "sim": f"http://127.0.0.1:{ports['SIMULATOR_PORT']}", "run_dir": run_dir,
               "sqs": env.get("AWS_ENDPOINT_URL_SQS") or env.get("AWS_ENDPOINT_URL") or
               f"http://127.0.0.1:{ports['MOTO_PORT']}", "intake_queue": env.get("INTAKE_QUEUE", "c3-render-intake")}
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
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every URL the page requests
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


def signed_in(chrome: Any, stack: dict[str, Any], key: str = KEY) -> None:
    """The page open with ``key`` (from sessionStorage when it already has it)."""
    if not chrome.current_url.startswith(f"{stack['api']}/ui"):
        chrome.get(f"{stack['api']}/ui")
    until(chrome, lambda c: css(c, "#dashboard")[0].is_displayed() or css(c, "#key")[0].is_displayed())
    if css(chrome, "#dashboard")[0].is_displayed() and \
            chrome.execute_script("return sessionStorage.getItem('c3-render-key')") != key:
        if css(chrome, "#detail[open]"):
            css(chrome, "#detail-close")[0].click()
            until(chrome, lambda c: not css(c, "#detail[open]"))
        css(chrome, "#change-key")[0].click()
    if not css(chrome, "#dashboard")[0].is_displayed():
        enter_key(chrome, key)
        until(chrome, lambda c: css(c, "#dashboard")[0].is_displayed())


def open_job(chrome: Any, job_id: str) -> Any:
    if css(chrome, "#detail[open]"):
        css(chrome, "#detail-close")[0].click()
        until(chrome, lambda c: not css(c, "#detail[open]"))
    def click_row(c: Any) -> bool:
        """The list re-renders every 2 s: a row found just before a render is stale, so look again."""
        try:
            rows = css(c, f'tr.job[data-id="{job_id}"]')
            if rows:
                rows[0].click()
            return bool(rows)
        except StaleElementReferenceException:
            return False

    until(chrome, click_row)
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
    cost = until(driver, lambda c: css(c, "#detail .cost"))[0].text  # the job's receipt
    assert "GPU billed" in cost and "Cold start" in cost and "Queued" in cost
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


# ---- the operators' page: trailing slash, no key in a URL, operator keys, actions, plots ----------

def as_key(stack: dict[str, Any], method: str, path: str, key: str, body: Any = None) -> requests.Response:
    return requests.request(method, f"{stack['api']}{path}", json=body, headers={"X-C3-RENDER-KEY": key}, timeout=10)


def requested_urls(chrome: Any) -> list[str]:
    """Every URL the browser requested since the last call (Chrome's performance log)."""
    urls = []
    for entry in chrome.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def slow_nodes(stack: dict[str, Any], on: bool) -> None:
    """The simulator's slow switch for image analysis, on every node (POST /admin/nodes)."""
    faults = {"ollama": "slow", "slow_seconds": 60} if on else {}
    requests.post(f"{stack['sim']}/admin/nodes", json={"faults": faults}, timeout=10).raise_for_status()


def shot(chrome: Any, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    chrome.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


@in_browser
def test_the_trailing_slash_page_works_and_no_url_carries_the_key(stack, jobs, driver) -> None:
    driver.get(f"{stack['api']}/ui")
    driver.execute_script("sessionStorage.clear()")
    # Without its script the form cannot submit: no URL ever gets the key.
    driver.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    try:
        driver.get(f"{stack['api']}/ui/")
        assert driver.current_url == f"{stack['api']}/ui"  # /ui/ is redirected to the page
        field = css(driver, "#key")[0]
        assert not field.get_attribute("name") and css(driver, "#key-submit")[0].get_attribute("disabled")
        field.send_keys(KEY + "\n")
        assert driver.current_url == f"{stack['api']}/ui"
    finally:
        driver.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})
    requested_urls(driver)  # drain
    driver.get(f"{stack['api']}/ui/")
    until(driver, lambda c: c.current_url == f"{stack['api']}/ui")
    enter_key(driver, KEY)
    until(driver, lambda c: css(c, "#dashboard")[0].is_displayed())
    until(driver, lambda c: css(c, f'tr.job[data-id="{jobs["csm"]["id"]}"]'))
    open_job(driver, jobs["csm"]["id"])
    until(driver, lambda c: css(c, "#detail audio"))
    css(driver, "#detail-close")[0].click()
    urls = requested_urls(driver)
    paths = {url.split("?")[0].removeprefix(stack["api"]) for url in urls}
    assert {"/ui", "/ui/app.js", "/ui/app.css", "/jobs", "/health", "/stats",
            f"/status/{jobs['csm']['id']}", f"/result/{jobs['csm']['id']}"} <= paths, paths
    assert not [url for url in urls if KEY in url or "key=" in url], urls


@in_browser
def test_an_operator_sees_every_tenant_and_a_tenant_only_its_own(stack, jobs, driver) -> None:
    other = as_key(stack, "post", "/analyze", OTHER_KEY, {"image_url": f"{stack['samples']}/portrait.jpg"}).json()["id"]
    tenant = as_key(stack, "get", f"/status/{other}", OPS_KEY).json()["tenant"]
    signed_in(driver, stack, OPS_KEY)
    row = until(driver, lambda c: css(c, f'tr.job[data-id="{other}"]'))[0]
    until(driver, lambda c: css(c, f'tr.job[data-id="{jobs["csm"]["id"]}"]'))
    assert row.find_element("css selector", ".tenant").text == tenant.removeprefix("key-sha256:")
    mine = css(driver, f'tr.job[data-id="{jobs["csm"]["id"]}"] .tenant')[0].text
    assert mine and mine != row.find_element("css selector", ".tenant").text  # two tenants
    assert css(driver, "#scope-note")[0].is_displayed()
    # A tenant key: its own jobs only, no tenant column.
    signed_in(driver, stack, KEY)
    until(driver, lambda c: css(c, f'tr.job[data-id="{jobs["csm"]["id"]}"]'))
    assert css(driver, f'tr.job[data-id="{other}"]') == []
    assert not css(driver, "th.operator-only")[0].is_displayed() and not css(driver, "#scope-note")[0].is_displayed()
    assert [j["id"] for j in as_key(stack, "get", "/jobs?limit=100", KEY).json()["jobs"]].count(other) == 0


@in_browser
def test_an_operator_cancels_and_retries_a_tenants_job_and_sees_its_worker(stack, jobs, driver) -> None:
    receiver = stack["receiver"]
    slow_nodes(stack, True)
    try:
        job_id = as_key(stack, "post", "/analyze", OTHER_KEY, {
            "image_url": f"{stack['samples']}/portrait.jpg", "notify_url": receiver.url}).json()["id"]
        signed_in(driver, stack, OPS_KEY)
        # Running: the worker list names its job.
        wait_until(lambda: as_key(stack, "get", f"/status/{job_id}", OTHER_KEY).json()["status"] == "running", 120, 0.3)
        until(driver, lambda c: c.execute_script(
            "return [...document.querySelectorAll('#worker-rows .worker-job a')].map((a) => a.title)").count(job_id),
            timeout=60)
        open_job(driver, job_id)
        until(driver, lambda c: css(c, "#detail .act-cancel"))[0].click()
        confirm = until(driver, lambda c: css(c, "#detail .confirm-yes"))[0]
        assert "Cancel this job?" in css(driver, "#detail .confirm")[0].text
        assert as_key(stack, "get", f"/status/{job_id}", OTHER_KEY).json()["status"] == "running"  # not yet
        confirm.click()
        until(driver, lambda c: "marked as cancelled" in (css(c, "#action-result")[0].text or ""))
        view = as_key(stack, "get", f"/status/{job_id}", OTHER_KEY).json()
        assert view["status"] == "cancelled" and view["error"] == "Cancelled from the operators' page"
    finally:
        slow_nodes(stack, False)
    until(driver, lambda c: css(c, "#detail .act-retry"), timeout=30)[0].click()
    until(driver, lambda c: css(c, "#detail .confirm-yes"))[0].click()
    link = until(driver, lambda c: css(c, "#action-result a.new-job"))[0]
    new_id = link.text
    retried = wait_until(lambda: (v := as_key(stack, "get", f"/status/{new_id}", OTHER_KEY).json())["status"] in FINAL
                         and v, 150, 0.5)
    assert retried["retry_of"] == job_id and retried["status"] == "success"
    # Redeliver the cancelled job's webhook: the button is there; the route is built elsewhere
    # (POST /jobs/{id}/redeliver), so it is exercised only where this API has it.
    wait_until(lambda: (as_key(stack, "get", f"/status/{job_id}", OTHER_KEY).json().get("webhook") or {})
               .get("status") in ("delivered", "failed"), 60, 0.3)
    open_job(driver, job_id)
    button = until(driver, lambda c: css(c, "#detail .act-redeliver"), timeout=30)[0]
    probe = requests.post(f"{stack['api']}/jobs/00000000-0000-4000-8000-000000000000/redeliver", json={},
                          headers={"X-C3-RENDER-KEY": OPS_KEY}, timeout=10)
    before = len(receiver.for_job(job_id))
    button.click()
    until(driver, lambda c: css(c, "#detail .confirm-yes"))[0].click()
    result = until(driver, lambda c: [e for e in css(c, "#action-result") if e.text])[0]
    if probe.status_code == 404 and probe.json()["error"].startswith("No route"):
        assert "no redeliver webhook route yet" in result.text
    else:
        assert "error" not in result.get_attribute("class"), result.text
        wait_until(lambda: len(receiver.for_job(job_id)) > before, 60, 0.3)


@in_browser
def test_the_plots_draw_the_last_hour_from_stats(stack, jobs, driver) -> None:
    signed_in(driver, stack, OPS_KEY)
    script = (
        "const sum = (sel) => [...document.querySelectorAll(sel)].reduce((n, r) => n + Number(r.dataset.value), 0);"
        "return {success: sum('#plot-finished rect.o-success'), failed: sum('#plot-finished rect.o-failed'),"
        " runs: document.querySelectorAll('#plot-latency circle.s-rt50').length,"
        " waits: document.querySelectorAll('#plot-latency circle.s-qw95').length,"
        " minutes: new Set([...document.querySelectorAll('#plot-finished rect')].map((r) => r.dataset.minute)).size};")
    # The fixture's jobs (4 successes, 1 failure) are counted once the page has read /stats again.
    drawn = until(driver, lambda c: (d := c.execute_script(script)) and d["success"] >= 4 and d["failed"] >= 1 and d,
                  timeout=40)
    stats = requests.get(f"{stack['api']}/stats", headers={"X-C3-RENDER-KEY": KEY}, timeout=10).json()
    assert drawn["success"] <= stats["hour"]["finished"]["success"], (drawn, stats["hour"])
    assert 1 <= drawn["failed"] <= stats["hour"]["finished"]["failed"]
    assert drawn["runs"] >= 1 and drawn["waits"] >= 1 and drawn["minutes"] >= 1
    assert "in the hour" in css(driver, "#plot-finished .plot-note")[0].text
    assert "run time p50" in css(driver, "#plot-latency .plot-note")[0].text
    # The reaper's GPU sample (every 5 s here) shows once the page reads /stats again.
    until(driver, lambda c: css(c, "#plot-gpu rect.g-billed"), timeout=60)
    assert "billed" in css(driver, "#plot-gpu .plot-note")[0].text


@in_browser
def test_job_columns_search_by_id_and_workers(stack, jobs, driver) -> None:
    signed_in(driver, stack, KEY)
    broken = jobs["broken"]
    row = until(driver, lambda c: css(c, f'tr.job[data-id="{broken["id"]}"]'))[0]
    cell = row.find_element("css selector", ".error-cell")
    assert cell.get_attribute("title") == broken["error"]
    assert cell.text.endswith("…") and broken["error"].startswith(cell.text[:-1]) and len(cell.text) <= 60
    done = css(driver, f'tr.job[data-id="{jobs["csm"]["id"]}"]')[0]
    assert re.fullmatch(r"\d+(\.\d)? s|\d+ min( \d+ s)?", done.find_element("css selector", ".duration").text)
    assert done.find_element("css selector", ".error-cell").text == "—"
    assert css(driver, "th.cost-col")[0].is_displayed()  # finished jobs carry their cost block
    # Search by id.
    field = css(driver, "#search-id")[0]
    field.clear()
    field.send_keys("not-an-id\n")
    assert not css(driver, "#detail[open]") and driver.execute_script(
        "return document.getElementById('search-id').validationMessage").startswith("Enter a whole job id")
    field.clear()
    field.send_keys(jobs["whisper"]["id"] + "\n")
    until(driver, lambda c: css(c, "#detail[open] .full-id") and css(c, "#detail .full-id")[0].text == jobs["whisper"]["id"])
    css(driver, "#detail-close")[0].click()
    # The workers: id and last beat, one row each.
    rows = until(driver, lambda c: c.execute_script(
        "return [...document.querySelectorAll('#worker-rows tr')].map((tr) => tr.innerText)"))
    assert len(rows) == 1 and "ago" in rows[0], rows


@in_browser
def test_screenshots_at_1400_and_390(stack, jobs, driver) -> None:
    signed_in(driver, stack, OPS_KEY)
    if css(driver, "#detail[open]"):
        css(driver, "#detail-close")[0].click()
    driver.set_window_size(1400, 1100)
    try:
        until(driver, lambda c: css(c, "#plot-finished rect.o-success"), timeout=40)
        shot(driver, "operators-1400.png")
        driver.execute_script("document.getElementById('jobs').scrollIntoView()")
        shot(driver, "operators-1400-jobs.png")
        assert css(driver, "th.operator-only")[0].is_displayed() and css(driver, "th.cost-col")[0].is_displayed()
        driver.set_window_size(390, 844)
        until(driver, lambda c: c.execute_script("return window.innerWidth") <= 390)
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        driver.execute_script("document.getElementById('activity').scrollIntoView()")
        shot(driver, "operators-390-plots.png")
        driver.execute_script("document.getElementById('jobs').scrollIntoView()")
        shot(driver, "operators-390-jobs.png")
        assert [e for e in css(driver, "td.cost-col") if e.is_displayed()]  # each card shows its cost
        open_job(driver, jobs["broken"]["id"])
        until(driver, lambda c: css(c, "#detail .act-retry"))
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        shot(driver, "operators-390-detail.png")
        css(driver, "#detail-close")[0].click()
    finally:
        driver.set_window_size(1280, 900)


@in_browser
def test_an_operator_sees_the_intake_rejections(stack, jobs, driver) -> None:
    import boto3

    sqs = boto3.client("sqs", endpoint_url=stack["sqs"], region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    url = sqs.get_queue_url(QueueName=stack["intake_queue"])["QueueUrl"]
    sent = sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"type": "csm", "params": {"voice": "nobody"}}))
    message_id = sent["MessageId"]
    signed_in(driver, stack, OPS_KEY)
    assert css(driver, "#incidents")[0].is_displayed()
    row = until(driver, lambda c: [tr for tr in css(c, "#rejected-rows tr")
                                   if message_id[:12] in tr.text], timeout=60)[0]
    assert "voice" in row.text
    assert css(driver, "#dead-empty")[0].text == "None in the last hour."
    signed_in(driver, stack, KEY)  # a tenant: no incidents panel
    assert not css(driver, "#incidents")[0].is_displayed()
    assert as_key(stack, "get", "/incidents", KEY).status_code == 403
