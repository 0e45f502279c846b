# Newcomer commands:  make demo   (runs the whole system on this machine, fake hardware)
#                     make test   (lint + types + the test suite)
#                     make test-fast (the quick subset while you work: no lint, no slow tests)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Pi-only extras (PyAudio, systemd-python) build from source and need apt packages:
# portaudio19-dev libsystemd-dev pkg-config (see .ci/run and scripts/install.sh).
EXTRAS ?= server,dev,wake,aec,postgres,pi

.PHONY: help venv venv-dev demo test test-fast lint fmt typecheck pytest bench soak clean install uninstall pi-check

help:
	@echo "make demo   - run the stand-in, the provisioning server and a device on fake hardware"
	@echo "make test   - lint (ruff), types (mypy --strict) and the test suite"
	@echo "make test-fast - the quick subset (unit and contract tests, < 1 min): no lint, no slow or chromium tests"
	@echo "make bench  - latency, CPU, audio and mint benchmarks (prints tables)"
	@echo "make pi-check - install on an emulated arm64 Debian trixie (Pi OS stand-in) and test there (root)"

$(VENV)/.stamp-base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[server]"
	touch $@

$(VENV)/.stamp-dev: pyproject.toml $(VENV)/.stamp-base
	$(PIP) install -q -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.stamp-base
venv-dev: $(VENV)/.stamp-dev

BACKEND ?= realtime
demo: $(VENV)/.stamp-base
	$(PY) -m appliance.demo --backend $(BACKEND)

lint: $(VENV)/.stamp-dev
	$(VENV)/bin/ruff check appliance provisioning tests
	$(VENV)/bin/ruff format --check appliance provisioning tests
	$(VENV)/bin/mypy

fmt: $(VENV)/.stamp-dev
	$(VENV)/bin/ruff format appliance provisioning tests
	$(VENV)/bin/ruff check --fix appliance provisioning tests

pytest: $(VENV)/.stamp-dev
	$(PY) -m pytest -q $(PYTEST_ARGS)

test: lint pytest

# the quick subset: no real-time end-to-end (slow), browser (chromium) or PostgreSQL tests
test-fast: $(VENV)/.stamp-dev
	$(PY) -m pytest -q -n auto -m "not slow and not chromium and not postgres" $(PYTEST_ARGS)

bench: $(VENV)/.stamp-dev
	$(PY) -m appliance.bench

soak: $(VENV)/.stamp-dev
	$(PY) -m appliance.bench soak

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info

# Emulated 64-bit Raspberry Pi OS (Debian trixie arm64 under qemu): install.sh, appliance check,
# the device's unit tests. Root cached in /var/cache/appliance-pi-check. PI_CHECK_SUITE=bookworm too.
pi-check:
	./scripts/pi-check.sh

install:
	./scripts/install.sh

uninstall:
	./scripts/install.sh --uninstall
