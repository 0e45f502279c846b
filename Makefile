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
# Five distributions in one repository (see pyproject.toml); editable installs of all of them.
BASE_PKGS := -e ./common[webrtc,http] -e ./device -e ./server -e ./stand-in -e ./devtools
DEV_PKGS ?= -e ./common[webrtc,http] -e ./device[pi,wake,aec,test] -e ./server[postgres] \
	-e ./stand-in -e ./devtools[test]
SOURCES := common device server stand-in devtools tests
PYPROJECTS := pyproject.toml common/pyproject.toml device/pyproject.toml server/pyproject.toml \
	stand-in/pyproject.toml devtools/pyproject.toml

.PHONY: help venv venv-dev demo test test-fast lint fmt typecheck pytest bench soak clean install uninstall pi-check

help:
	@echo "make demo   - run the stand-in, the provisioning server and a device on fake hardware"
	@echo "make test   - lint (ruff), types (mypy --strict) and the test suite"
	@echo "make test-fast - the quick subset (unit and contract tests, < 1 min): no lint, no slow or chromium tests"
	@echo "make bench  - latency, CPU, audio and mint benchmarks (prints tables)"
	@echo "make pi-check - install on an emulated arm64 Debian trixie (Pi OS stand-in) and test there (root)"

$(VENV)/.stamp-base: $(PYPROJECTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(BASE_PKGS)
	touch $@

$(VENV)/.stamp-dev: $(PYPROJECTS) $(VENV)/.stamp-base
	$(PIP) install -q $(DEV_PKGS)
	touch $@

venv: $(VENV)/.stamp-base
venv-dev: $(VENV)/.stamp-dev

BACKEND ?= realtime
demo: $(VENV)/.stamp-base
	$(PY) -m appliance_dev.demo --backend $(BACKEND)

lint: $(VENV)/.stamp-dev
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)
	$(VENV)/bin/mypy

fmt: $(VENV)/.stamp-dev
	$(VENV)/bin/ruff format $(SOURCES)
	$(VENV)/bin/ruff check --fix $(SOURCES)

pytest: $(VENV)/.stamp-dev
	$(PY) -m pytest -q $(PYTEST_ARGS)

test: lint pytest

# the quick subset: no real-time end-to-end (slow), browser (chromium) or PostgreSQL tests
test-fast: $(VENV)/.stamp-dev
	$(PY) -m pytest -q -n auto -m "not slow and not chromium and not postgres" $(PYTEST_ARGS)

bench: $(VENV)/.stamp-dev
	$(PY) -m appliance_dev.bench

soak: $(VENV)/.stamp-dev
	$(PY) -m appliance_dev.bench soak

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build */*.egg-info

# Emulated 64-bit Raspberry Pi OS (Debian trixie arm64 under qemu): install.sh, appliance check,
# the device's unit tests. Root cached in /var/cache/appliance-pi-check. PI_CHECK_SUITE=bookworm too.
pi-check:
	./scripts/pi-check.sh

install:
	./scripts/install.sh

uninstall:
	./scripts/install.sh --uninstall
