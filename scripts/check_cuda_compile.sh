#!/usr/bin/env bash
# Compile every csrc/*.cu, and the emulator's tests/simt/selftest.cu, with the local nvcc (no
# GPU and no CUDA torch needed): catches CUDA compile errors on a CPU-only machine. The .cu
# files use only the CUDA runtime, and launch kernels / declare shared memory through the
# macros of csrc/lvtp_cuda_launch.cuh (found through -Icsrc), which expand to <<<...>>> and
# __shared__ under nvcc (tests/simt/simt.h defines them for g++).
#   bash scripts/check_cuda_compile.sh          # NVCC=/path/to/nvcc  ARCH=sm_90 to override
# Exits non-zero on the first error; skips (exit 0) with a message when nvcc is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || true)}
if [ -z "$NVCC" ]; then
  for c in "${CUDA_HOME:-}/bin/nvcc" /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
    [ -x "$c" ] && NVCC=$c && break
  done
fi
if [ -z "$NVCC" ] || [ ! -x "$NVCC" ]; then
  echo "check_cuda_compile: SKIPPED, no nvcc found (set NVCC or CUDA_HOME)"
  exit 0
fi
ARCH=${ARCH:-sm_90}
OUTDIR=$(mktemp -d /tmp/lvtp_nvcc.XXXXXX)
trap 'rm -rf "$OUTDIR"' EXIT
echo "check_cuda_compile: $("$NVCC" --version | tail -n 1) arch=$ARCH"
n=0
for f in csrc/*.cu tests/simt/selftest.cu; do
  [ -e "$f" ] || continue
  echo "  nvcc $f"
  "$NVCC" -c -arch="$ARCH" -std=c++17 -O2 -Icsrc --expt-relaxed-constexpr -Werror all-warnings \
    "$f" -o "$OUTDIR/$(basename "$f" .cu).o"
  n=$((n + 1))
done
echo "check_cuda_compile: OK ($n files)"
