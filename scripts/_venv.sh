# Sourced by demo.sh and test.sh: create and activate .venv (or $VENV) with torch installed.
# A machine with no GPU gets the CPU build of torch 2.13.0; one with a GPU, the default build.
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then pip install -q torch; else pip install -q torch==2.13.0; fi
fi
