#!/usr/bin/env bash
# One prepared run for a lent GPU (device tool): builds the CUDA extension, runs the GPU
# tests (CUDA op tests also under compute-sanitizer memcheck and racecheck), every
# microbenchmark and the demo; every log, table and a summary land under $OUT.
#   bash benchmarks/gpu_check.sh            # on the GPU machine (~6-8 min)
#   bash benchmarks/gpu_check.sh --dry-run  # here, on the CPU: every step that needs no GPU
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-out/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export LVTP_BENCH_CSV="$OUT/bench.csv"
PY=${PY:-python3}
[ -x .venv/bin/python ] && [ $DRY = 1 ] && PY=.venv/bin/python
SUMMARY="$OUT/summary.md"
status=0

step() {  # step NAME TIMEOUT_S COMMAND...: run, log to $OUT/NAME.log, record the exit code
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "==> $name: $*"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 30 "$OUT/$name.log"
  echo "| $name | $rc | $((SECONDS - t0)) s |" >>"$SUMMARY"
  [ $rc = 0 ] || status=1
}

{
  echo "# gpu_check $(date -u +%FT%TZ)"
  echo
  echo "| step | exit | time |"
  echo "| --- | --- | --- |"
} >"$SUMMARY"

if [ $DRY = 0 ]; then
  step nvidia-smi 30 nvidia-smi
  # the CUDA extension (lvtp_kernels._C_cuda) next to the CPU one; fails loudly if it cannot
  step build 300 env LVTP_FORCE_CUDA=1 MAX_JOBS=16 "$PY" setup.py build_ext --inplace
else
  step build-check 300 bash scripts/check_cuda_compile.sh
fi
step info 60 "$PY" -m lvtp_kernels info
if [ $DRY = 0 ]; then
  GPU_TESTS="tests/test_cuda.py tests/test_gpu_kernels.py tests/test_cpp_kmeans.py tests/test_cpp_select.py"
  step pytest-gpu 300 "$PY" -m pytest $GPU_TESTS -q -x -p no:cacheprovider --durations=10
  SAN="compute-sanitizer --error-exitcode 9 --target-processes all"
  step memcheck 240 $SAN --tool memcheck "$PY" -m pytest tests/test_cpp_kmeans.py tests/test_cpp_select.py \
    -q -x -p no:cacheprovider -k cuda
  step racecheck 240 $SAN --tool racecheck "$PY" -m pytest tests/test_cpp_kmeans.py tests/test_cpp_select.py \
    -q -x -p no:cacheprovider -k "cuda and not 4097"
  for b in bench_entropy bench_attention_entropy bench_gather_scatter bench_edge bench_kmeans bench_select; do
    step "$b" 120 "$PY" -m "benchmarks.$b"
  done
  step demo 120 "$PY" -m lvtp_kernels demo --device cuda --batch 8 --repeats 20 --out "$OUT/demo"
  step pytest-all 300 "$PY" -m pytest tests -q -p no:cacheprovider --durations=10
else
  step pytest 600 "$PY" -m pytest tests/test_cuda.py tests/test_gpu_kernels.py tests/test_cli.py -q -p no:cacheprovider
  for b in bench_entropy bench_attention_entropy bench_gather_scatter bench_edge bench_kmeans bench_select; do
    step "$b" 300 env TRITON_INTERPRET=1 "$PY" -m "benchmarks.$b" --quick
  done
  step demo 300 "$PY" -m lvtp_kernels demo --device cpu --repeats 1 --out "$OUT/demo"
fi
cat "$SUMMARY"
exit $status
