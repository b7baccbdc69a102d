#!/usr/bin/env bash
# One prepared run for a lent GPU (device tool), within a time budget (default 470 s):
#   1. builds the CUDA extension (lvtp_kernels._C_cuda) beside the CPU one, and measures the
#      entropy-fused attention's tiles on this card (benchmarks/tune_attention.py, written to
#      lvtp_kernels/assets/attention_tuned.json: commit it from logs.tar.gz),
#   2. runs the GPU tests (Triton kernels compiled, CUDA clustering, patched models, timm adapters),
#   3. the end-to-end matrix of issue [E] (benchmarks/e2e_suite.py: ViT-B/16 512x512 and ViT-L/16
#      1024x1024, batch 8 and 1, fp16 and bf16, LVTP and ToMe) with measured copy bandwidth and
#      matmul rate, plus a torch.profiler table of one pruned forward,
#   4. the head's upsample in both layouts (benchmarks/bench_head.py: the fixed cost that caps
#      the ViT-B speedups), then `lvtp bench ops` (every per-op microbenchmark, one table),
#   5. compute-sanitizer memcheck and racecheck on the CUDA clustering op tests.
# Steps are ordered by value; a step that would not fit in the remaining budget is skipped
# and says so. Results land under $OUT: summary.md, e2e.json, e2e.md, ops.md, profile.txt,
# logs.tar.gz (every step's log and bench.csv) and build.tar.gz (the built extensions) -- 7 files.
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
BUDGET=${GPU_CHECK_BUDGET:-470}
[ $DRY = 1 ] && BUDGET=${GPU_CHECK_BUDGET:-3600}  # the CPU has no device clock to save
STEPS=${GPU_CHECK_STEPS:-"build segv tune e2e head pytest ops memcheck racecheck"}
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
  tail -n 25 "$LOGS/$name.log"
  echo "| $name | $rc$([ $rc = 124 ] && echo ' (timed out)') | $((SECONDS - t0)) s |" >>"$SUMMARY"
  [ $rc = 0 ] || status=1
  return $rc
}

{
  echo "# gpu_check $(date -u +%FT%TZ) (budget ${BUDGET} s)"
  echo
  echo "| step | exit | time |"
  echo "| --- | --- | --- |"
} >"$SUMMARY"

# the GPU-only files, plus the CUDA cases of the files whose CPU cases CI runs
GPU_TESTS="tests/test_cuda.py tests/test_gpu_kernels.py"
CUDA_CASES="tests/test_cpp_kmeans.py tests/test_cpp_select.py"
# timm adapters, fuzzing and numerics on the GPU too
for t in ${GPU_CHECK_EXTRA-tests/test_adapters.py tests/test_fuzz.py tests/test_numerics.py}; do
  [ -f "$t" ] && CUDA_CASES="$CUDA_CASES $t"
done
E2E_ARGS=${GPU_CHECK_E2E_ARGS:-}
XDIST=""
$PY -c "import xdist" 2>/dev/null && XDIST="-n 8"

if [ $DRY = 0 ]; then
  step nvidia-smi 20 5 nvidia-smi
  want build && step build 240 60 env LVTP_FORCE_CUDA=1 MAX_JOBS=16 "$PY" setup.py build_ext --inplace
  step ext 60 10 "$PY" -c "import lvtp_kernels, lvtp_kernels._ext as e; s = e.status(); print(s); assert s['cuda'][0], s"
  step info 60 10 "$PY" -m lvtp_kernels info
  # a throw from the compiled CPU op (seen to crash under torch 2.11): backtrace if it does
  want segv && step segv 60 20 cuda-gdb -batch -ex run -ex bt --args "$PY" -X faulthandler -c \
    "import torch, lvtp_kernels; lvtp_kernels._ext.module(\"cpp\").kmeans(torch.randn(1, 3, 2), torch.randn(1, 4, 2), 1)"
  # tiles of the entropy-fused attention measured on this card, written to the package's table
  # (lvtp_kernels/assets/attention_tuned.json) before the e2e step uses them; a copy in the logs
  want tune && step tune 120 60 "$PY" -m benchmarks.tune_attention --json "$LOGS/tune.json" \
    --write lvtp_kernels/assets/attention_tuned.json
  want tune && cp lvtp_kernels/assets/attention_tuned.json "$LOGS/"  # what the e2e step below used
  want e2e && step e2e 240 60 "$PY" -m benchmarks.e2e_suite --out "$OUT" --preset gpu --profile --breakdown $E2E_ARGS
  # the same ViT-B row with a 19-class head: how much of the gap is the 150-class upsample
  want e2e && step e2e-19cls 60 30 "$PY" -m benchmarks.e2e_suite --out "$LOGS/e2e_19cls" --preset gpu --only 0 \
    --classes 19 --methods lvtp,tome
  want head && step head 40 15 "$PY" -m benchmarks.bench_head
  # -v: every test's name and outcome is in the log even if the step times out
  want pytest && step pytest-gpu 170 40 "$PY" -m pytest $GPU_TESTS -v -p no:cacheprovider $XDIST \
    --durations=15 -rfEs --tb=short -o faulthandler_timeout=100
  want pytest && step pytest-cuda-cases 120 30 "$PY" -m pytest $CUDA_CASES -v -p no:cacheprovider $XDIST \
    -k "cuda or timm or gpu" --durations=10 -rfEs --tb=short
  want ops && step ops 100 30 "$PY" -m lvtp_kernels bench ops --md "$OUT/ops.md"
  SAN="compute-sanitizer --error-exitcode 9 --target-processes all"
  want memcheck && step memcheck 60 25 $SAN --tool memcheck "$PY" -m pytest tests/test_cpp_kmeans.py \
    tests/test_cpp_select.py -q -x -p no:cacheprovider -k "cuda and not 4097"
  want racecheck && step racecheck 60 25 $SAN --tool racecheck "$PY" -m pytest tests/test_cpp_kmeans.py \
    tests/test_cpp_select.py -q -x -p no:cacheprovider -k "cuda and not 4097"
else
  step build-check 300 1 bash scripts/check_cuda_compile.sh
  step info 60 1 "$PY" -m lvtp_kernels info
  step pytest 600 1 "$PY" -m pytest $GPU_TESTS $CUDA_CASES tests/test_cli.py -q -p no:cacheprovider -x
  step e2e 600 1 "$PY" -m benchmarks.e2e_suite --out "$OUT" --preset quick --device cpu --repeats 3 --breakdown
  step head 120 1 "$PY" -m benchmarks.bench_head --quick
  step tune 300 1 env TRITON_INTERPRET=1 "$PY" -m benchmarks.tune_attention --quick --json "$LOGS/tune.json"
  step ops 900 1 env TRITON_INTERPRET=1 "$PY" -m lvtp_kernels bench ops --quick --md "$OUT/ops.md"
fi
echo "total: $((SECONDS - T0)) s" >>"$SUMMARY"
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$LOGS"
# the built extensions, to carry into a later run on the same image (skip the build step there)
[ $DRY = 0 ] && ls lvtp_kernels/*.so >/dev/null 2>&1 && tar -czf "$OUT/build.tar.gz" lvtp_kernels/*.so
cat "$SUMMARY"
exit $status
