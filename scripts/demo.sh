#!/usr/bin/env bash
# Set up a virtual environment and run the main job: the source article's example through the
# Triton kernels, checked against eager PyTorch (interpreted on CPU when there is no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then pip install -q torch; else pip install -q torch==2.13.0; fi
fi
pip install -q -e .
triton-dsd demo "$@"
