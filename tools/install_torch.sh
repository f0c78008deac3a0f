#!/usr/bin/env bash
# Install torch into the backend environment. Where an NVIDIA GPU is visible we say so and
# check afterwards that the installed build can use it: users' top complaint about DL
# plugins is a GPU silently unused because a CPU-only torch was installed.
set -euo pipefail
py=$1
version=2.13.0
if "$py" -c "import torch,sys; sys.exit(0 if torch.__version__.startswith('$version') else 1)" 2>/dev/null; then
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "NVIDIA GPU found: installing the CUDA build of torch $version"
  "$py" -m pip install -q "torch==$version"
  "$py" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || echo "warning: torch cannot use the GPU (CPU-only build?); see README 'GPU setup'" >&2
else
  echo "no NVIDIA GPU: installing the CPU build of torch $version"
  "$py" -m pip install -q "torch==$version"
fi
