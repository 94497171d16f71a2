#!/usr/bin/env bash
# Set up a virtual environment and run the main job: the source article's example through the
# fused Triton kernel, checked against eager PyTorch (interpreted on CPU when there is no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
pip install -q -e .
triton-dsd demo "$@"
