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

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(SYSTEM_PYTHON) || { echo "error: $(SYSTEM_PYTHON) missing; run 'make system' as root"; exit 1; }
	@test -x $(PY) || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	bash tools/install_torch.sh $(PY)
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

venv: system $(VENV)/.installed

install: venv

lint: venv
	$(PY) -m ruff check .

# The whole suite: model, weights, engine, worker, real QGIS (qgis_process), training.
test: install train-install
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: venv
	$(PY) -m backend.bench

-include mk/*.mk
