// CUDA kernels and launchers of the batched Lloyd k-means (spec step 5.1): the k-means of
// lvtp_kernels._C_cuda.kmeans and of the CUDA select (select_cuda.cu). Interface (raw
// device pointers, a stream, a cudaError_t back; CUDA runtime only, no ATen): lvtp_cuda.h.
//
//   kmeans_f32 / kmeans_f64            x (B, n, d) fp32 / fp64 rows, centroids c (B, k, d) of
//                                      the same dtype, accumulated in that dtype
//   kmeans_rows_f32_f64 / _f64_f64     rows x[i] / rownorm[i] (fp32 or fp64 x, fp64 norms),
//                                      centroids and accumulation in fp64 (select's features)
//   c: initial centroids in, final out; assign (B, n) int64 out (after `iters` iterations,
//   a final assignment against the final centroids, as python_ref.kmeans).
//
// Assignment: one warp per point, lanes split d, KC centroids per register chunk, blocks
// of up to 64 points (fewer for small batches); the batch image's centroids sit in dynamic
// shared memory when k*d*sizeof(acc) fits: up to 48 KB always, above that up to the
// device's opt-in limit (227 KB on Hopper) after cudaFuncSetAttribute; otherwise they are
// read from global memory (a refused opt-in is not an error). Lane partial sums are
// combined by a fixed shuffle-down tree; ties go to the lower cluster index (strict <),
// like argmin.
// Update: blocks of (32 columns, cluster, image); warps split the points, partial sums are
// added in warp order (see update_kernel); an empty cluster keeps its centroid.
// Determinism: no atomics, fixed summation orders: the same result on every run. It equals
// python_ref.kmeans in the assignments (up to near-ties of the distances) and the centroids
// to rounding (tests/test_cuda_simt.py, under the simt emulator).
// Limits: 1 <= k <= n, B <= 65535, k <= 65535, n <= INT32_MAX, else cudaErrorInvalidValue.
// Shared memory: the dynamic k*d centroid block above, plus (update) 8 x 32 accumulators
// and 8 counts. Launches and shared arrays go through lvtp_cuda_launch.cuh (the simt
// emulator compiles this file unchanged for the host).

#include <cuda_runtime.h>

#include <cstdint>

#include "lvtp_cuda.h"
#include "lvtp_cuda_launch.cuh"

namespace lvtp {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kAssignThreads = 256;
constexpr int kPointsPerBlock = 64;  // at most; fewer when the grid would not fill the GPU
constexpr int64_t kTargetBlocks = 264;  // about two blocks per SM of an H100/H200
constexpr int kUpdateThreads = 256;
constexpr int KC = 8;  // centroids per register chunk
constexpr size_t kSmemLimit = 48 * 1024;

template <typename InT, typename AccT>
struct Rows {
  const InT* x;
  int64_t bstride;
  int64_t n;
  int64_t d;
  const double* rownorm;  // nullptr: plain rows

  __device__ __forceinline__ AccT at(int64_t b, int64_t i, int64_t t) const {
    AccT v = static_cast<AccT>(x[b * bstride + i * d + t]);
    if (rownorm != nullptr) v = v / static_cast<AccT>(rownorm[b * n + i]);
    return v;
  }
};

template <typename T>
__device__ __forceinline__ T warp_sum_to_all(T v) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return __shfl_sync(0xffffffffu, v, 0);
}

template <typename InT, typename AccT, bool kSmem>
__global__ void __launch_bounds__(kAssignThreads) assign_kernel(Rows<InT, AccT> X, const AccT* __restrict__ c,
                                                                int64_t k, int64_t ppb,
                                                                int64_t* __restrict__ assign) {
  const int64_t b = blockIdx.y;
  const int64_t d = X.d;
  const AccT* cb = c + b * k * d;
  if (kSmem) {
    LVTP_DYNAMIC_SMEM(AccT, cs);  // k * d centroids (the launch's smem bytes)
    for (int64_t t = threadIdx.x; t < k * d; t += blockDim.x) cs[t] = cb[t];
    __syncthreads();
    cb = cs;
  }
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, nwarps = blockDim.x / kWarp;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * ppb;
  const int64_t i1 = i0 + ppb < X.n ? i0 + ppb : X.n;
  for (int64_t i = i0 + warp; i < i1; i += nwarps) {
    AccT best = AccT(0);
    int64_t best_j = -1;
    for (int64_t j0 = 0; j0 < k; j0 += KC) {
      const int kc = (k - j0) < KC ? static_cast<int>(k - j0) : KC;
      AccT acc[KC];
#pragma unroll
      for (int q = 0; q < KC; ++q) acc[q] = AccT(0);
      for (int64_t t = lane; t < d; t += kWarp) {
        const AccT xv = X.at(b, i, t);
#pragma unroll
        for (int q = 0; q < KC; ++q) {
          if (q < kc) {
            const AccT df = xv - cb[(j0 + q) * d + t];
            acc[q] += df * df;
          }
        }
      }
#pragma unroll
      for (int q = 0; q < KC; ++q) {
        const AccT v = warp_sum_to_all(acc[q]);
        if (q < kc && (best_j < 0 || v < best)) {
          best = v;
          best_j = j0 + q;
        }
      }
    }
    if (lane == 0) assign[b * X.n + i] = best_j;
  }
}

// Update: block (column chunk, cluster j, image b): lane l owns column 32 * chunk + l; warp w
// takes the points of every kUpdateWarps-th chunk of 32 (a ballot finds the members of j
// among them) and sums their rows in index order; the warps' partial sums are then added
// in warp order. Deterministic, no atomics, and no block loops over all members alone:
// the loads of a large cluster are spread over kUpdateWarps warps and d / 32 blocks.
template <typename InT, typename AccT>
__global__ void __launch_bounds__(kUpdateThreads) update_kernel(Rows<InT, AccT> X, AccT* __restrict__ c, int64_t k,
                                                                const int64_t* __restrict__ assign) {
  constexpr int kUpdateWarps = kUpdateThreads / kWarp;
  LVTP_SHARED_ARRAY(AccT, part, [kUpdateWarps][kWarp]);
  LVTP_SHARED_ARRAY(int64_t, cnts, [kUpdateWarps]);
  const int64_t j = blockIdx.y, b = blockIdx.z;
  const int64_t n = X.n, d = X.d;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarp + lane;
  const bool col = t < d;
  const int64_t* ab = assign + b * n;
  AccT s = AccT(0);
  int64_t cnt = 0;
  for (int64_t base = static_cast<int64_t>(warp) * kWarp; base < n; base += static_cast<int64_t>(kUpdateWarps) * kWarp) {
    const int64_t i = base + lane;
    unsigned m = __ballot_sync(0xffffffffu, i < n && ab[i] == j);
    cnt += __popc(m);
    while (m != 0u) {  // warp-uniform: every lane walks the same members
      const int bit = __ffs(m) - 1;
      m &= m - 1u;
      if (col) s += X.at(b, base + bit, t);
    }
  }
  part[warp][lane] = s;
  if (lane == 0) cnts[warp] = cnt;
  __syncthreads();
  if (warp != 0) return;
  int64_t total = 0;
#pragma unroll
  for (int w = 0; w < kUpdateWarps; ++w) total += cnts[w];
  if (total == 0 || !col) return;  // an empty cluster keeps its centroid
  AccT sum = part[0][lane];
#pragma unroll
  for (int w = 1; w < kUpdateWarps; ++w) sum += part[w][lane];
  c[(b * k + j) * d + t] = sum / static_cast<AccT>(total);
}

template <typename InT, typename AccT>
cudaError_t run_kmeans(Rows<InT, AccT> X, int64_t B, AccT* c, int64_t k, int64_t iters, int64_t* assign,
                       int32_t* members, cudaStream_t stream) {
  if (B < 1 || X.n < 1 || X.d < 1 || k < 1 || k > X.n || iters < 0 || B > 65535 || k > 65535)
    return cudaErrorInvalidValue;
  if (X.n > INT32_MAX || (X.d + kWarp - 1) / kWarp > INT32_MAX) return cudaErrorInvalidValue;
  (void)members;  // kept in the interface; the update no longer lists members
  const size_t smem = static_cast<size_t>(k * X.d) * sizeof(AccT);
  // Centroids in shared memory up to the device's opt-in limit (227 KB on Hopper): past 48 KB
  // the kernel must be told. Reading them from L1/L2 instead (one warp per point rereads all
  // k*d of them) made the assignment the top cost of select at d=768 in fp64.
  bool use_smem = smem <= kSmemLimit;
  if (!use_smem) {
    int dev = 0, optin = 0;
    const bool ok = cudaGetDevice(&dev) == cudaSuccess &&
                    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) == cudaSuccess;
    if (ok && smem <= static_cast<size_t>(optin)) {
      if (cudaFuncSetAttribute(assign_kernel<InT, AccT, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem)) == cudaSuccess)
        use_smem = true;
      else
        (void)cudaGetLastError();  // a refused opt-in leaves the global-memory path, not an error
    }
  }
  // Points per block: 64, or fewer (down to one per warp) when B * n / 64 blocks would leave
  // SMs idle -- a batch-1 image of 1025 tokens is 17 blocks at 64 but 129 at 8.
  int64_t ppb = kPointsPerBlock;
  const int64_t warps = kAssignThreads / kWarp;
  while (ppb > warps && B * ((X.n + ppb - 1) / ppb) < kTargetBlocks) ppb /= 2;
  if (ppb < warps) ppb = warps;
  const dim3 agrid(static_cast<unsigned>((X.n + ppb - 1) / ppb), static_cast<unsigned>(B));
  const dim3 ugrid(static_cast<unsigned>((X.d + kWarp - 1) / kWarp), static_cast<unsigned>(k), static_cast<unsigned>(B));
  auto assign_step = [&]() -> cudaError_t {
    if (use_smem)
      LVTP_LAUNCH((assign_kernel<InT, AccT, true>), agrid, kAssignThreads, smem, stream)(X, c, k, ppb, assign);
    else
      LVTP_LAUNCH((assign_kernel<InT, AccT, false>), agrid, kAssignThreads, 0, stream)(X, c, k, ppb, assign);
    return cudaGetLastError();
  };
  for (int64_t it = 0; it < iters; ++it) {
    cudaError_t e = assign_step();
    if (e != cudaSuccess) return e;
    LVTP_LAUNCH((update_kernel<InT, AccT>), ugrid, kUpdateThreads, 0, stream)(X, c, k, assign);
    e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  return assign_step();
}

}  // namespace

cudaError_t kmeans_f32(const float* x, int64_t x_bstride, int64_t B, int64_t n, int64_t d, float* c, int64_t k,
                       int64_t iters, int64_t* assign, int32_t* members, cudaStream_t stream) {
  return run_kmeans<float, float>({x, x_bstride, n, d, nullptr}, B, c, k, iters, assign, members, stream);
}

cudaError_t kmeans_f64(const double* x, int64_t x_bstride, int64_t B, int64_t n, int64_t d, double* c, int64_t k,
                       int64_t iters, int64_t* assign, int32_t* members, cudaStream_t stream) {
  return run_kmeans<double, double>({x, x_bstride, n, d, nullptr}, B, c, k, iters, assign, members, stream);
}

cudaError_t kmeans_rows_f32_f64(const float* x, int64_t x_bstride, const double* rownorm, int64_t B, int64_t n,
                                int64_t d, double* c, int64_t k, int64_t iters, int64_t* assign, int32_t* members,
                                cudaStream_t stream) {
  if (rownorm == nullptr) return cudaErrorInvalidValue;
  return run_kmeans<float, double>({x, x_bstride, n, d, rownorm}, B, c, k, iters, assign, members, stream);
}

cudaError_t kmeans_rows_f64_f64(const double* x, int64_t x_bstride, const double* rownorm, int64_t B, int64_t n,
                                int64_t d, double* c, int64_t k, int64_t iters, int64_t* assign, int32_t* members,
                                cudaStream_t stream) {
  if (rownorm == nullptr) return cudaErrorInvalidValue;
  return run_kmeans<double, double>({x, x_bstride, n, d, rownorm}, B, c, k, iters, assign, members, stream);
}

}  // namespace cuda
}  // namespace lvtp
