# SlimDiffSR for QGIS. Every target installs what it needs (Debian 12, as root).
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
SYSTEM_PYTHON ?= /usr/bin/python3
SHARED ?= $(abspath $(CURDIR)/../shared)
export SLIMDIFFSR_SHARED := $(SHARED)

.PHONY: install system venv test test-fast test-qgis lint bench
.DEFAULT_GOAL := help

help:
	@echo "make install | demo | test | test-fast | bench | lint | package | train-smoke | train-default"

system:
	@bash tools/install_system.sh

# The backend environment is made by the same code as the plugin's 'Set up SlimDiffSR
# backend' algorithm (plugin/backend_env.py; TORCH_BUILD auto|cpu|cuda, TORCH_INDEX_URL),
# here with the development tools added and the backend installed editable.
TORCH_BUILD ?= auto
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml plugin/backend_env.py
	@test -x $(SYSTEM_PYTHON) || { echo "error: $(SYSTEM_PYTHON) missing; run 'make system' as root"; exit 1; }
	$(SYSTEM_PYTHON) -m plugin.backend_env --env $(VENV) --python $(SYSTEM_PYTHON) --torch-build $(TORCH_BUILD) \
	  $(if $(TORCH_INDEX_URL),--torch-index-url $(TORCH_INDEX_URL)) --requirements requirements.txt --requirements requirements-dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

venv: system $(VENV)/.installed

install: venv

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The plugin side's test environment: Debian's python3 (which has QGIS's bindings) with pytest
# and pytest-qgis, for tests/pyqgis. Not the backend's .venv: that has no QGIS, and pytest-qgis
# starts QGIS as soon as pytest loads it. The backend work in these tests still runs in .venv,
# through the plugin's worker, as for users.
QGIS_TEST_ENV ?= $(CURDIR)/build/qgis-test-env
QGIS_TEST_RUN = QT_QPA_PLATFORM=offscreen XDG_RUNTIME_DIR=$${XDG_RUNTIME_DIR:-/tmp/runtime-$$(id -u)} \
  SLIMDIFFSR_BACKEND_PYTHON=$(PY) $(QGIS_TEST_ENV)/bin/python -m pytest
$(QGIS_TEST_ENV)/.installed: tests/pyqgis/requirements.txt
	@test -x $(SYSTEM_PYTHON) || { echo "error: $(SYSTEM_PYTHON) missing; run 'make system' as root"; exit 1; }
	$(SYSTEM_PYTHON) -m venv --clear --system-site-packages $(QGIS_TEST_ENV)
	$(QGIS_TEST_ENV)/bin/python -m pip install -q -r tests/pyqgis/requirements.txt
	@touch $@

# The whole suite: model, weights, engine, worker, real QGIS (qgis_process, and in-process
# through pytest-qgis in the plugin side's test environment), training.
test: install train-install $(QGIS_TEST_ENV)/.installed
	$(MAKE) lint
	$(PY) -m pytest -q
	$(QGIS_TEST_RUN) -q tests/pyqgis

# Everyday work: leaves out what needs QGIS, the training extras or root, and the slow tests
# (markers in pyproject.toml, tests/conftest.py); under 2 minutes on two cores.
test-fast: venv
	$(PY) -m pytest -q -m "not slow and not qgis and not train and not root"

test-qgis: install $(QGIS_TEST_ENV)/.installed
	$(QGIS_TEST_RUN) -q tests/pyqgis

# Development tools (devtools/, never in the plugin zip). BENCH_ARGS, e.g. "--size 128 --repeat 1".
bench: venv
	$(PY) -m devtools.bench $(BENCH_ARGS)

-include mk/*.mk
