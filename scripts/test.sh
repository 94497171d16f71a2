#!/usr/bin/env bash
# Set up a virtual environment and run the test suite. The offline compile report (every kernel
# for sm_80 and sm_90, no GPU needed) runs once, first; the suite reads its JSON. On a machine
# with no GPU the Triton kernels run under the Triton interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
pip install -q -e ".[test]"
echo "== offline compile report (sm_80, sm_90; no GPU needed)"
REPORT=$(mktemp -d)/inspect.json
triton-dsd inspect --arch 80,90 --json-out "$REPORT"
echo "== test suite"
TRITON_DSD_INSPECT_JSON="$REPORT" python -m pytest -n 2 -q "$@"
