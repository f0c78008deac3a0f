# SlimDiffSR for QGIS. Every target installs what it needs (Debian 12, as root).
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
SYSTEM_PYTHON ?= /usr/bin/python3
SHARED ?= $(abspath $(CURDIR)/../shared)
export SLIMDIFFSR_SHARED := $(SHARED)

.PHONY: install system venv test lint bench
.DEFAULT_GOAL := help

help:
	@echo "make install | demo | test | bench | lint | package | train-smoke | train-default"

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

# The whole suite: model, weights, engine, worker, real QGIS (qgis_process), training.
test: install train-install
	$(MAKE) lint
	$(PY) -m pytest -q

# Development tools (devtools/, never in the plugin zip). BENCH_ARGS, e.g. "--size 128 --repeat 1".
bench: venv
	$(PY) -m devtools.bench $(BENCH_ARGS)

-include mk/*.mk
