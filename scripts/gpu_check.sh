#!/usr/bin/env bash
# The one command a session runs when a GPU machine is lent (one H200, torch 2.11, Triton 3.6,
# no network). Within ~8 minutes: the test suite natively on the GPU, a quick tune, the quick
# benchmark (most valuable cases first), the decode-step benchmark, the figures, the
# large-tensor and determinism checks, and a summary table last. After EVERY step $OUT/summary.txt and $OUT/results.tar.gz are
# rewritten, so a run cut short still returns what it did.
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
export TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
# the Python to use: $PY, else the active environment's python (never a hard-coded python3)
PY=${PY:-$(command -v python || command -v python3)}
T0=$(date +%s)
BUDGET=${BUDGET:-470}  # seconds for all steps together

summarize() {
  { echo "triton_dsd GPU check, $(date -u +%FT%TZ), $(( $(date +%s) - T0 ))s so far"
    $PY - "$WORK" <<'PY'
import json, os, sys
work = sys.argv[1]
try:
    import torch, triton
    print(f"torch {torch.__version__}, triton {triton.__version__}, device "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu (interpreter)'}")
except Exception as e:
    print("cannot import torch/triton:", e)
print("\nsteps:")
st = os.path.join(work, "steps.txt")
print(open(st).read().rstrip() if os.path.exists(st) else "(none yet)")
p = os.path.join(work, "pytest.txt")
if os.path.exists(p):
    tail = [l for l in open(p).read().splitlines() if " passed" in l or " failed" in l or " error" in l]
    print("pytest:", tail[-1] if tail else "no summary line (cut short?)")
c = os.path.join(work, "checks.json")
if os.path.exists(c):
    for k, v in json.load(open(c)).items():
        print(f"check {k}: {v}")
m = os.path.join(work, "model.json")
if os.path.exists(m):
    cases = json.load(open(m))["cases"]
    print("\nperformance model vs this GPU (modeled H200 us, measured us, measured/modeled):")
    for c in cases:
        meas = c.get("measured_us")
        print(f"  {c['case']:40s} {c['modeled_us']:9.1f} "
              + (f"{meas:9.1f} {meas / c['modeled_us']:6.2f}" if meas else "      n/a"))
b = os.path.join(work, "bench.csv")
if os.path.exists(b):
    try:
        from triton_dsd import bench
        rows = bench.read_csv(b)
        print(f"\nbenchmark ({len(rows)} rows):")
        print(bench.summary([r for r in rows if r["op"] == "dsd"]))
    except Exception as e:
        print("benchmark summary failed:", e)
PY
  } > "$OUT/summary.txt" 2>&1
  tar -C "$WORK" -czf "$OUT/results.tar.gz.tmp" . && mv "$OUT/results.tar.gz.tmp" "$OUT/results.tar.gz"
}

step() {  # step NAME LIMIT_S CMD...: run within the limit and the overall budget; never abort
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - T0) ))
  if [ "$left" -lt 15 ]; then echo "$name skipped (budget spent)" >> "$WORK/steps.txt"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  local s=$(date +%s)
  echo "== $name (limit ${limit}s): $*"
  timeout -k 10 "$limit" "$@" > "$WORK/$name.txt" 2>&1
  local rc=$?
  tail -n 20 "$WORK/$name.txt"
  echo "$name rc=$rc $(( $(date +%s) - s ))s" >> "$WORK/steps.txt"
  summarize
}

if [ $DRY = 1 ]; then
  echo "DRY RUN on $(hostname): tiny shapes under the Triton interpreter; timings mean nothing"
  export TRITON_INTERPRET=1
  step install 60 $PY -c "import triton_dsd.kernels.fused, triton_dsd.autotune_configs"
  step pytest 600 $PY -m pytest -q -p no:cacheprovider tests/test_models.py -k "article"
  step tune 300 $PY -m triton_dsd.cli tune --interpret --preset ci --out "$WORK/configs"
  export TRITON_DSD_CONFIG_DIR="$WORK/configs"
  step bench 600 $PY -m triton_dsd.cli bench --interpret --preset ci --op dsd,depthwise,pointwise \
       --mode fwd --csv "$WORK/bench.csv" --no-plot
  step bench_step 300 $PY -m triton_dsd.cli bench --interpret --preset ci --dim 1 --N 1,2 \
       --mode step --provider triton_fused,eager --csv "$WORK/bench.csv" --no-plot
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$WORK/gpu.txt"
  # editable install: the package maps kernels/ and autotune_configs/ into triton_dsd (the
  # source tree also maps them itself when imported in place)
  step install 45 bash -c "$PY -m pip install -q --no-deps --no-build-isolation -e . && \
       $PY -c 'import triton_dsd.kernels.fused, triton_dsd.autotune_configs; print(\"import ok\")'"
  step pytest 120 $PY -m pytest -q -n 8 -p no:cacheprovider tests
  step tune 50 $PY -m triton_dsd.cli tune --preset quick --K 3,7 --dilation 1 --max-candidates 5 \
       --out "$WORK/configs"
  export TRITON_DSD_CONFIG_DIR="$WORK/configs"  # what was just tuned is used from here on
  G="--preset quick --K 3,7 --dilation 1,2 --C 64,128 --M 128 --csv $WORK/bench.csv --no-plot --fast"
  step bench 100 $PY -m triton_dsd.cli bench $G --op dsd --mode fwd,fwd+bwd \
       --provider triton_fused,triton_unfused,eager,eager_native,eager_cudnn
  # decode steps (one frame of N streams): ours against the eager decode and torch.compile
  step bench_step 40 $PY -m triton_dsd.cli bench --preset step --K 4 --C 256,1024 --M 256,1024 \
       --N 1,16,64,256 --csv "$WORK/bench.csv" --no-plot --fast
  step checks 50 $PY -m triton_dsd.reliability --out "$WORK"
  step bench_stages 35 $PY -m triton_dsd.cli bench $G --op depthwise,pointwise --mode fwd \
       --provider triton_unfused,eager
  step bench_compile 35 $PY -m triton_dsd.cli bench $G --op dsd --mode fwd --provider compile
  # the offline model's cases timed on this GPU beside their modeled time (calibration)
  step model 120 $PY -m triton_dsd.cli model --measure --json-out "$WORK/model.json" -v
fi
[ $DRY = 1 ] && step checks 120 $PY -m triton_dsd.reliability --out "$WORK"
step plot 25 $PY -m triton_dsd.cli plot --csv "$WORK/bench.csv" --out "$WORK/plots"
summarize
echo
cat "$OUT/summary.txt"
