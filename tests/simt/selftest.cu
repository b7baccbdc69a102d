// Kernels with known defects, and one correct reduction, for tests/test_cuda_simt.py: they
// show that the emulator's checks fire (a checker that cannot fail checks nothing).
// Compiled only by tests/simt/build.py; not part of the package. Launches and shared memory
// go through the macros of csrc/lvtp_cuda_launch.cuh, as in csrc/*.cu (nvcc compiles this
// file too: `nvcc -c -Icsrc tests/simt/selftest.cu`).
#include <cuda_runtime.h>

#include <cstdint>

#include "lvtp_cuda_launch.cuh"

namespace {

__global__ void block_sum_kernel(const float* x, int n, float* out) {  // correct
  LVTP_SHARED_ARRAY(float, red, [256]);
  float s = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
  red[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
    __syncthreads();
  }
  float v = threadIdx.x < 32 ? red[threadIdx.x] : 0.f;
  if (threadIdx.x < 32) {
    v = __shfl_sync(0xffffffffu, v, 0);
    if (threadIdx.x == 0) out[blockIdx.x] = v;
  }
}

__global__ void divergent_barrier_kernel(int* out) {  // two different __syncthreads
  if (threadIdx.x < 64) {
    __syncthreads();
    out[threadIdx.x] = 1;
  } else {
    out[threadIdx.x] = 2;
    __syncthreads();
  }
}

__global__ void deadlock_kernel(unsigned* out) {  // half a warp at a ballot, the rest at a barrier
  unsigned m = 0;
  if (threadIdx.x % 32 < 16) m = __ballot_sync(0xffffffffu, 1);
  __syncthreads();
  out[threadIdx.x] = m;
}

__global__ void early_exit_kernel(int* out) {  // legal: exited threads do not block a barrier
  if (threadIdx.x >= 64) return;
  out[threadIdx.x] = 1;
  __syncthreads();
  const int next = out[(threadIdx.x + 1) % 64];
  __syncthreads();
  out[threadIdx.x] += next;
}

__global__ void divergent_collective_kernel(unsigned* out) {  // lanes at two different ballots
  unsigned m;
  if (threadIdx.x % 2 == 0)
    m = __ballot_sync(0xffffffffu, 1);
  else
    m = __ballot_sync(0xffffffffu, 0);
  out[threadIdx.x] = m;
}

__global__ void exited_lanes_kernel(unsigned* out) {  // half a warp returns before a full-mask ballot
  if (threadIdx.x % 32 >= 16) return;
  out[threadIdx.x] = __ballot_sync(0xffffffffu, 1);
}

__global__ void unwritten_shared_kernel(float* out) {  // reads a shared slot nobody wrote
  LVTP_SHARED_ARRAY(float, buf, [64]);
  if (threadIdx.x < 32) buf[threadIdx.x] = 1.f;
  __syncthreads();
  out[threadIdx.x] = buf[threadIdx.x];
}

__global__ void racy_kernel(int* out) {  // reads a neighbour's slot that it may have updated already
  out[threadIdx.x] = 1;
  __syncthreads();
  out[threadIdx.x] += out[(threadIdx.x + 1) % blockDim.x];
}

__global__ void dynamic_smem_kernel(const double* x, int n, double* out) {
  LVTP_DYNAMIC_SMEM(double, s);
  for (int i = threadIdx.x; i < n; i += blockDim.x) s[i] = x[i];
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
    for (int i = 0; i < n; ++i) t += s[i];
    out[0] = t;
  }
}

}  // namespace

extern "C" {
int selftest_block_sum(const float* x, int n, float* out) {
  LVTP_LAUNCH(block_sum_kernel, 1, 256, 0, nullptr)(x, n, out);
  return cudaGetLastError();
}
int selftest_divergent_barrier(int* out) {
  LVTP_LAUNCH(divergent_barrier_kernel, 1, 128, 0, nullptr)(out);
  return cudaGetLastError();
}
int selftest_deadlock(unsigned* out) {
  LVTP_LAUNCH(deadlock_kernel, 1, 64, 0, nullptr)(out);
  return cudaGetLastError();
}
int selftest_early_exit(int* out) {
  LVTP_LAUNCH(early_exit_kernel, 1, 128, 0, nullptr)(out);
  return cudaGetLastError();
}
int selftest_racy(int* out) {
  LVTP_LAUNCH(racy_kernel, 1, 64, 0, nullptr)(out);
  return cudaGetLastError();
}
int selftest_divergent_collective(unsigned* out) {
  LVTP_LAUNCH(divergent_collective_kernel, 1, 32, 0, nullptr)(out);
  return cudaGetLastError();
}
int selftest_exited_lanes(unsigned* out) {
  LVTP_LAUNCH(exited_lanes_kernel, 1, 32, 0, nullptr)(out);
  return cudaGetLastError();
}
int selftest_unwritten_shared(float* out) {
  LVTP_LAUNCH(unwritten_shared_kernel, 1, 64, 0, nullptr)(out);
  return cudaGetLastError();
}
// opt_in: call cudaFuncSetAttribute first (needed above 48 KB)
int selftest_dynamic_smem(const double* x, int n, double* out, int opt_in) {
  const size_t bytes = static_cast<size_t>(n) * sizeof(double);
  if (opt_in) {
    const cudaError_t e = cudaFuncSetAttribute(dynamic_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(bytes));
    if (e != cudaSuccess) return e;
  }
  LVTP_LAUNCH(dynamic_smem_kernel, 1, 128, bytes, nullptr)(x, n, out);
  return cudaGetLastError();
}
}

namespace {
__global__ void oob_read_kernel(const float* x, int n, float* out) {  // reads x[n]: one past the end
  float s = 0.f;
  for (int i = threadIdx.x; i <= n; i += blockDim.x) s += x[i];
  out[threadIdx.x] = s;
}
}  // namespace

extern "C" int selftest_oob_read(const float* x, int n, float* out) {  // for the memcheck build only
  LVTP_LAUNCH(oob_read_kernel, 1, 32, 0, nullptr)(x, n, out);
  return cudaGetLastError();
}
