#!/usr/bin/env bash
# Set up a virtual environment and run the test suite (offline compile report first).
# On a machine with no GPU the Triton kernels run under the Triton interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
pip install -q -e ".[test]"
echo "== offline compile report (sm_80, sm_90; no GPU needed)"
triton-dsd inspect --arch 80,90
echo "== test suite"
python -m pytest -n 2 -q "$@"
