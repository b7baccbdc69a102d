// Batched Lloyd k-means on CUDA (spec step 5.1). See lvtp_cuda.h for the interface.
//
// Assignment: one warp per point, lanes split d, KC centroids per register chunk; the
// batch image's centroids sit in shared memory when k*d fits (global memory otherwise).
// Lane partial sums are combined by a fixed shuffle-down tree: deterministic. Ties go to
// the lower cluster index (strict <), like argmin.
// Update: one block per (image, cluster); warp 0 lists the members in index order with
// ballots, then each thread sums its dims over the members in that order. No atomics.

#include <cuda_runtime.h>

#include <cstdint>

#include "lvtp_cuda.h"

namespace lvtp {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kAssignThreads = 256;
constexpr int kPointsPerBlock = 64;
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
                                                                int64_t k, int64_t* __restrict__ assign) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t b = blockIdx.y;
  const int64_t d = X.d;
  const AccT* cb = c + b * k * d;
  if (kSmem) {
    AccT* cs = reinterpret_cast<AccT*>(smem_raw);
    for (int64_t t = threadIdx.x; t < k * d; t += blockDim.x) cs[t] = cb[t];
    __syncthreads();
    cb = cs;
  }
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, nwarps = blockDim.x / kWarp;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kPointsPerBlock;
  const int64_t i1 = i0 + kPointsPerBlock < X.n ? i0 + kPointsPerBlock : X.n;
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

template <typename InT, typename AccT>
__global__ void __launch_bounds__(kUpdateThreads) update_kernel(Rows<InT, AccT> X, AccT* __restrict__ c, int64_t k,
                                                                const int64_t* __restrict__ assign,
                                                                int32_t* __restrict__ members) {
  const int64_t j = blockIdx.x, b = blockIdx.y;
  const int64_t n = X.n, d = X.d;
  int32_t* mem = members + (b * k + j) * n;
  __shared__ int64_t s_count;
  if (threadIdx.x < kWarp) {
    const int lane = threadIdx.x;
    int64_t cnt = 0;
    for (int64_t base = 0; base < n; base += kWarp) {
      const int64_t i = base + lane;
      const bool f = i < n && assign[b * n + i] == j;
      const unsigned m = __ballot_sync(0xffffffffu, f);
      if (f) mem[cnt + __popc(m & ((1u << lane) - 1u))] = static_cast<int32_t>(i);
      cnt += __popc(m);
    }
    if (lane == 0) s_count = cnt;
  }
  __syncthreads();
  const int64_t cnt = s_count;
  if (cnt == 0) return;  // an empty cluster keeps its centroid
  const AccT denom = static_cast<AccT>(cnt);
  for (int64_t t = threadIdx.x; t < d; t += blockDim.x) {
    AccT s = AccT(0);
#pragma unroll 4
    for (int64_t q = 0; q < cnt; ++q) s += X.at(b, mem[q], t);
    c[(b * k + j) * d + t] = s / denom;
  }
}

template <typename InT, typename AccT>
cudaError_t run_kmeans(Rows<InT, AccT> X, int64_t B, AccT* c, int64_t k, int64_t iters, int64_t* assign,
                       int32_t* members, cudaStream_t stream) {
  if (B < 1 || X.n < 1 || X.d < 1 || k < 1 || k > X.n || iters < 0 || B > 65535 || k > 65535)
    return cudaErrorInvalidValue;
  if (X.n > INT32_MAX) return cudaErrorInvalidValue;
  const size_t smem = static_cast<size_t>(k * X.d) * sizeof(AccT);
  const bool use_smem = smem <= kSmemLimit;
  const dim3 agrid(static_cast<unsigned>((X.n + kPointsPerBlock - 1) / kPointsPerBlock), static_cast<unsigned>(B));
  const dim3 ugrid(static_cast<unsigned>(k), static_cast<unsigned>(B));
  auto assign_step = [&]() -> cudaError_t {
    if (use_smem)
      assign_kernel<InT, AccT, true><<<agrid, kAssignThreads, smem, stream>>>(X, c, k, assign);
    else
      assign_kernel<InT, AccT, false><<<agrid, kAssignThreads, 0, stream>>>(X, c, k, assign);
    return cudaGetLastError();
  };
  for (int64_t it = 0; it < iters; ++it) {
    cudaError_t e = assign_step();
    if (e != cudaSuccess) return e;
    update_kernel<InT, AccT><<<ugrid, kUpdateThreads, 0, stream>>>(X, c, k, assign, members);
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
