#!/usr/bin/env bash
# Set up a virtual environment (CPU torch on machines without a GPU) and run the test suite.
# On a machine with no GPU the Triton kernels run under the Triton interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then pip install -q torch; else pip install -q torch==2.13.0; fi
fi
pip install -q -e ".[test]"
echo "== offline compile report (sm_80, sm_90; no GPU needed)"
triton-dsd inspect --arch 80,90
echo "== test suite"
python -m pytest -n 2 -q "$@"
