#!/usr/bin/env bash
# One prepared run for a lent GPU (device tool): environment facts, the whole test suite
# (CUDA tests included), `lvtp info` and the demo on the GPU; everything lands under $OUT.
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run  # here, on the CPU: every step but the GPU ones
# Later issues add the CUDA build, compute-sanitizer and the benchmarks to this script.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-out/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
[ -x .venv/bin/python ] && [ $DRY = 1 ] && PY=.venv/bin/python
SUMMARY="$OUT/summary.md"
status=0

step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, record the exit code
  local name=$1; shift
  local t0=$SECONDS
  echo "==> $name: $*"
  "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
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
  step nvidia-smi nvidia-smi
fi
step info "$PY" -m lvtp_kernels info
if [ $DRY = 0 ]; then
  step pytest "$PY" -m pytest tests -q -x -p no:cacheprovider --durations=15
  step demo "$PY" -m lvtp_kernels demo --device cuda --batch 8 --repeats 20
else
  step pytest "$PY" -m pytest tests/test_cuda.py tests/test_cli.py -q -p no:cacheprovider
  step demo "$PY" -m lvtp_kernels demo --device cpu --size 96x128 --repeats 1
fi
cat "$SUMMARY"
exit $status
