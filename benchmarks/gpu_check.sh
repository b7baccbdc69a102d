#!/usr/bin/env bash
# [H]'s one prepared run for a lent GPU (device tool), within GPU_CHECK_BUDGET seconds
# (default 480: with the machine's start it stays under 9 device-minutes):
#   1. build the CUDA extension (lvtp_kernels._C_cuda) beside the CPU one;
#   2. the GPU tests: compiled Triton kernels, CUDA clustering, the fast selection on CUDA
#      (certified against float64, fast vs exact end to end on the bundled model);
#   3. the end-to-end check (benchmarks/e2e_suite.py --preset check: ViT-B/16 512x512 b8 LVTP
#      fast / exact / ToMe and b1, one eager b8 row, ViT-L/16 1024x1024 b2; 30 and 45 %),
#      judged PASS/FAIL by benchmarks/gpu_targets.py (static ceiling, overhead %, eager/graph);
#   4. the selection microbenchmark (benchmarks/bench_select.py: exact / fast, per shape) and
#      the attention one at ViT-B's shape (bench_attention.py --quick: the fused kernel vs SDPA
#      flash vs SDPA + the entropy-only pass, [H] item 3's alternative);
#   5. compute-sanitizer memcheck, racecheck and synccheck on one small case of every CUDA
#      clustering kernel (benchmarks/sanitize_case.py).
# Results under $OUT: summary.md (steps, exit codes, times), targets.md (PASS/FAIL),
# e2e.json / e2e.md, gpu_e2e_<date>.json (the e2e JSON to commit as docs/results/), select.md,
# logs.tar.gz (every step's log and bench.csv).
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run  # here, on the CPU: every step that needs no GPU
#   GPU_CHECK_BUDGET=300 GPU_CHECK_STEPS="build pytest e2e" bash benchmarks/gpu_check.sh  # a subset
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-out/gpu_check}
LOGS="$OUT/logs"
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export LVTP_BENCH_CSV="$LOGS/bench.csv"
PY=${PY:-python3}
[ -x .venv/bin/python ] && [ $DRY = 1 ] && PY=.venv/bin/python
BUDGET=${GPU_CHECK_BUDGET:-480}
[ $DRY = 1 ] && BUDGET=${GPU_CHECK_BUDGET:-1800}  # the CPU has no device clock to save
STEPS=${GPU_CHECK_STEPS:-"build pytest e2e select attention sanitize"}
SUMMARY="$OUT/summary.md"
T0=$SECONDS
status=0

want() { [[ " $STEPS " == *" $1 "* ]]; }

step() {  # step NAME MAX_S MIN_S COMMAND...: run if MIN_S still fit the budget; log, record exit code
  local name=$1 limit=$2 need=$3; shift 3
  local left=$((BUDGET - (SECONDS - T0)))
  if [ "$left" -lt "$need" ]; then
    echo "| $name | skipped: ${left} s left of the ${BUDGET} s budget | - |" >>"$SUMMARY"
    echo "==> $name: skipped (${left} s left)"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS
  echo "==> $name (<= ${limit} s): $*"
  timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  tail -n 30 "$LOGS/$name.log"
  echo "| $name | $([ $rc = 0 ] && echo PASS || echo "FAIL ($rc$([ $rc = 124 ] && echo ', timed out'))") | $((SECONDS - t0)) s |" >>"$SUMMARY"
  [ $rc = 0 ] || status=1
  return $rc
}

{
  echo "# gpu_check $(date -u +%FT%TZ) (budget ${BUDGET} s)"
  echo
  echo "| step | verdict | time |"
  echo "| --- | --- | --- |"
} >"$SUMMARY"

# GPU-only test files, and the fast selection's and fused reconstruction's tests (compiled here)
GPU_TESTS="tests/test_cuda.py tests/test_gpu_kernels.py tests/test_op_select_fast.py tests/test_op_tokens_fused.py"
XDIST=""
$PY -c "import xdist" 2>/dev/null && XDIST="-n 8"
E2E="-m benchmarks.e2e_suite --out $OUT --preset check --reductions 0.3,0.45"
DATE=$(date -u +%F)

if [ $DRY = 0 ]; then
  step nvidia-smi 20 5 nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
  want build && step build 200 60 env LVTP_FORCE_CUDA=1 MAX_JOBS=16 "$PY" setup.py build_ext --inplace
  step ext 60 10 "$PY" -c "import lvtp_kernels, lvtp_kernels._ext as e; s = e.status(); print(s); assert s['cuda'][0], s"
  want pytest && step pytest-gpu 120 40 "$PY" -m pytest $GPU_TESTS -v -p no:cacheprovider $XDIST \
    --durations=10 -rfEs --tb=short -o faulthandler_timeout=100
  want e2e && step e2e 200 80 "$PY" $E2E --repeats 20 --max-seconds 1.0
  want select && step select 60 20 "$PY" -m benchmarks.bench_select --quick
  want attention && step attention 45 15 "$PY" -m benchmarks.bench_attention --quick --no-compile
  SAN="compute-sanitizer --error-exitcode 9 --target-processes all"
  for tool in memcheck racecheck synccheck; do
    want sanitize && step "$tool" 50 20 $SAN --tool $tool "$PY" -m benchmarks.sanitize_case
  done
else
  step build-check 300 1 bash scripts/check_cuda_compile.sh
  step info 60 1 "$PY" -m lvtp_kernels info
  step pytest 600 1 "$PY" -m pytest $GPU_TESTS tests/test_cuda_simt_fast.py -q -p no:cacheprovider -x
  step e2e 600 1 "$PY" -m benchmarks.e2e_suite --out "$OUT" --preset quick --device cpu --repeats 3 --reductions 0.3,0.45
  step select 300 1 "$PY" -m benchmarks.bench_select --quick --device cpu
  step attention 300 1 env TRITON_INTERPRET=1 "$PY" -m benchmarks.bench_attention --quick --no-compile
fi
if [ -f "$OUT/e2e.json" ]; then
  # PASS/FAIL against [H]'s targets; the JSON (config.date inside) to commit as docs/results/
  step targets 30 1 "$PY" -m benchmarks.gpu_targets "$OUT/e2e.json" --md "$OUT/targets.md"
  cp "$OUT/e2e.json" "$OUT/gpu_e2e_$DATE.json"
fi
[ -f "$LOGS/select.log" ] && grep -A20 "^## select" "$LOGS/select.log" >"$OUT/select.md"
[ -f "$LOGS/attention.log" ] && cp "$LOGS/attention.log" "$OUT/attention.md"
echo "total: $((SECONDS - T0)) s" >>"$SUMMARY"
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$LOGS"
cat "$SUMMARY"
[ -f "$OUT/targets.md" ] && cat "$OUT/targets.md"
exit $status
