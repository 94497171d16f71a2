#!/usr/bin/env bash
# The one command a session runs when a GPU machine is lent (one H200, torch 2.11, Triton 3.6,
# no network). In at most ~8 minutes: the test suite natively on the GPU, a quick tune, the quick
# benchmark, the figures, the large-tensor and determinism checks, and a summary table last.
# Everything lands in $OUT (or the folder given), packed as results.tar.gz plus summary.txt.
#
#   scripts/gpu_check.sh [OUT]            on the GPU machine
#   scripts/gpu_check.sh --dry-run [OUT]  on a CPU machine: the same steps, tiny, interpreted
set -u
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT=${1:-${OUT:-/tmp/triton_dsd_gpu_check}}
mkdir -p "$OUT"
WORK=$(mktemp -d)
LOG="$WORK/log.txt"
export TRITON_DEFAULT_FP_FUSION=1
t0=$(date +%s)
step() {  # step NAME TIMEOUT_S CMD...: run, record rc and seconds, never abort the script
  local name=$1 limit=$2; shift 2
  local s=$(date +%s)
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  timeout "$limit" "$@" > "$WORK/$name.txt" 2>&1
  local rc=$?
  tail -n 25 "$WORK/$name.txt" | tee -a "$LOG"
  echo "$name rc=$rc $(( $(date +%s) - s ))s" >> "$WORK/steps.txt"
}

if [ $DRY = 1 ]; then
  echo "DRY RUN on $(hostname): tiny shapes under the Triton interpreter; timings mean nothing"
  [ -x .venv/bin/python ] && . .venv/bin/activate
  export TRITON_INTERPRET=1
  step install 300 true
  step pytest 600 python -m pytest -q -x -p no:cacheprovider tests/test_models.py -k "article"
  step tune 300 python -m triton_dsd.cli tune --interpret --preset ci --out "$WORK/configs"
  step bench 600 python -m triton_dsd.cli bench --interpret --preset ci --op dsd,depthwise,pointwise \
       --mode fwd --csv "$WORK/bench.csv" --no-plot
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
  step install 120 python -m pip install -q --no-deps --no-build-isolation -e .
  step pytest 240 python -m pytest -q -x -n 8 -p no:cacheprovider tests
  step tune 100 python -m triton_dsd.cli tune --preset quick --out "$WORK/configs"
  step bench 170 python -m triton_dsd.cli bench --preset quick --op dsd,depthwise,pointwise --mode fwd,fwd+bwd \
       --csv "$WORK/bench.csv" --no-plot
fi
step plot 60 python -m triton_dsd.cli plot --csv "$WORK/bench.csv" --out "$WORK/plots"
step checks 120 python -m triton_dsd.checks --out "$WORK"
step inspect 120 python -m triton_dsd.cli inspect --arch 90

{
  echo "triton_dsd GPU check, $(date -u +%FT%TZ), $(( $(date +%s) - t0 ))s in all"
  python - "$WORK" <<'PY'
import json, os, sys
import torch, triton
work = sys.argv[1]
print(f"torch {torch.__version__}, triton {triton.__version__}, "
      f"device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu (interpreter)'}")
print("\nsteps:")
print(open(os.path.join(work, "steps.txt")).read().rstrip())
p = os.path.join(work, "pytest.txt")
if os.path.exists(p):
    tail = [l for l in open(p).read().splitlines() if " passed" in l or " failed" in l or "error" in l]
    print("pytest:", tail[-1] if tail else "no summary line")
c = os.path.join(work, "checks.json")
if os.path.exists(c):
    d = json.load(open(c))
    for k, v in d.items():
        print(f"check {k}: {v}")
b = os.path.join(work, "bench.csv")
if os.path.exists(b):
    from triton_dsd import bench
    rows = bench.read_csv(b)
    print(f"\nbenchmark ({len(rows)} rows):")
    print(bench.summary([r for r in rows if r["op"] == "dsd"]))
PY
} > "$WORK/summary.txt" 2>&1
cp "$WORK/summary.txt" "$OUT/summary.txt"
tar -C "$WORK" -czf "$OUT/results.tar.gz" .
echo
cat "$OUT/summary.txt"
