# Training targets (docs/training.md). SMOKE_OUT: where train-smoke writes its run.
SMOKE_OUT ?= build/smoke
GPU_BENCH_STEPS ?= 300

.PHONY: train-install train-smoke train-gpu-bench

$(VENV)/.train-installed: requirements-train.txt | $(VENV)/.installed
	$(PY) -m pip install -q -r requirements-train.txt
	@touch $@

train-install: install $(VENV)/.train-installed

train-smoke: train-install
	$(PY) tools/train_smoke.py --out $(SMOKE_OUT)

train-gpu-bench: train-install
	$(PY) tools/gpu_distill_bench.py --steps $(GPU_BENCH_STEPS)
