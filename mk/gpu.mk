# CUDA check (tools/gpu_check.py): CUDA output against CPU fp32 (fp32/fp16/bf16, max |DN|),
# upscale of 4096^2- and 20000^2-output rasters at batch sizes 1/4/8 with peak GPU memory;
# exits non-zero on a mismatch. Under 10 minutes on one GPU. GPU_DEVICE=cpu for a dry run.
# Uses $(PY) when the backend venv exists, else the machine's python3 (GPU hosts carry
# torch but not our venv); GPU_WHEELHOUSE: wheels for offline installs.
GPU_DEVICE ?= cuda
GPU_CHECK_ARGS ?=
GPU_PYTHON := $(if $(wildcard $(PY)),$(PY),python3)

.PHONY: gpu-check

gpu-check:
	$(GPU_PYTHON) tools/gpu_check.py --device $(GPU_DEVICE) \
	  $(if $(GPU_WHEELHOUSE),--wheelhouse $(GPU_WHEELHOUSE)) --json build/gpu_check.json $(GPU_CHECK_ARGS)
