// CUDA kernels and launchers of the LVTP selection (spec steps 2, 4, 5.2, 5.3) around the
// k-means of kmeans_cuda.cu: lvtp_kernels._C_cuda.select. Interface (raw device pointers, a
// stream, a cudaError_t back; CUDA runtime only, no ATen): lvtp_cuda.h.
//
//   importance_f32 / _f64   ent (B, N, Q) and edge (B, N) or nullptr (fp32 or fp64) -> u
//                           (B, N - P) fp64 (dynamic weights, entropy, edge blend)
//   row_norms_f32 / _f64    rows (B, n, d) fp32 / fp64 -> max(||row||_2, 1e-12) fp64
//   rank_init_f32 / _f64    ranks of u (desc and asc, ties by index, NaN above every
//                           number) -> int32 orders; initial centroids (fp64)
//   select_finish           2-means splits, representatives, the "ranked" or
//                           "proportional" allocation -> keep_idx (B, P+K) int64, prune_idx
//                           (B, N-P-K) int64 (ascending), cluster_id (B, N) int32
//   select_tokens           the whole launch sequence (tokens fp32 / fp64 x ent fp32 / fp64)
//
// Precision: float64 throughout, with explicitly rounded operations (__dmul_rn, __dadd_rn,
// ...) where python_ref does separate tensor ops, so no fused multiply-add changes a
// rounding; sequential prefix sums like torch.cumsum on CPU. Outputs equal
// python_ref.select_tokens (tests/test_cuda_simt.py, under the simt emulator).
// Determinism: fixed reduction trees and orders, no atomics: the same indices on every run
// and whatever order a block's threads run in.
// Layout: one block per image for the small steps (256 threads); in select_finish one warp
// per cluster for step 5.2 (and the proportional quotas), warp 0 for the ranked order.
// Limits: 1 <= Q <= 64 orders; n = N - P <= INT32_MAX; B <= 65535 and k <= 65535 (grid
// dims of the rank / init kernels), else cudaErrorInvalidValue.
// Shared memory (static): importance 256 + 64 doubles (2.5 KB), ranks a 1024-double tile
// (8 KB). Launches and shared arrays go through lvtp_cuda_launch.cuh (the simt emulator
// compiles this file unchanged for the host).

#include <cuda_runtime.h>

#include <cstdint>

#include "lvtp_common.h"
#include "lvtp_cuda.h"
#include "lvtp_cuda_launch.cuh"

namespace lvtp {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;
constexpr int kMaxQ = 64;
constexpr int kTile = 1024;

// Deterministic block sum (fixed per-thread order, fixed tree). All threads get it.
__device__ double block_sum(double v, double* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) red[threadIdx.x] = __dadd_rn(red[threadIdx.x], red[threadIdx.x + w]);
    __syncthreads();
  }
  const double s = red[0];
  __syncthreads();
  return s;
}

// ----------------------------------------------------------------------------- steps 2, 4
template <typename T>
__global__ void __launch_bounds__(kThreads) importance_kernel(const T* __restrict__ ent, const T* __restrict__ edge,
                                                              int64_t N, int64_t Q, int64_t P, double alpha,
                                                              bool low, double* __restrict__ u) {
  LVTP_SHARED_ARRAY(double, red, [kThreads]);
  LVTP_SHARED_ARRAY(double, w, [kMaxQ]);
  const int64_t b = blockIdx.x, m = N - P;
  const T* eb = ent + b * N * Q;
  const double md = static_cast<double>(m);
  for (int64_t q = 0; q < Q; ++q) {  // population std of each order over the tokens
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < m; i += blockDim.x) s = __dadd_rn(s, static_cast<double>(eb[(P + i) * Q + q]));
    const double mean = __ddiv_rn(block_sum(s, red), md);
    double v = 0.0;
    for (int64_t i = threadIdx.x; i < m; i += blockDim.x) {
      const double dv = __dsub_rn(static_cast<double>(eb[(P + i) * Q + q]), mean);
      v = __dadd_rn(v, __dmul_rn(dv, dv));
    }
    const double var = __ddiv_rn(block_sum(v, red), md);
    if (threadIdx.x == 0) w[q] = __dsqrt_rn(var);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int64_t q = 0; q < Q; ++q) total = __dadd_rn(total, w[q]);
    for (int64_t q = 0; q < Q; ++q) w[q] = total > 0.0 ? __ddiv_rn(w[q], total) : __ddiv_rn(1.0, static_cast<double>(Q));
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < m; i += blockDim.x) {
    const T* row = eb + (P + i) * Q;
    double e = 0.0;
    for (int64_t q = 0; q < Q; ++q) e = __dadd_rn(e, __dmul_rn(w[q], static_cast<double>(row[q])));
    const double h = low ? __dsub_rn(1.0, e) : e;
    double r = h;
    if (edge != nullptr)
      r = __dadd_rn(__dmul_rn(alpha, h), __dmul_rn(__dsub_rn(1.0, alpha), static_cast<double>(edge[b * N + P + i])));
    u[b * m + i] = r;
  }
}

// ----------------------------------------------------------------------------- norms
template <typename T>
__global__ void __launch_bounds__(kThreads) row_norms_kernel(const T* __restrict__ x, int64_t bstride, int64_t B,
                                                             int64_t n, int64_t d, double* __restrict__ rownorm) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  if (row >= B * n) return;  // whole warps leave together
  const int64_t b = row / n, i = row % n;
  const T* xr = x + b * bstride + i * d;
  double s = 0.0;
  for (int64_t t = lane; t < d; t += kWarp) {
    const double v = static_cast<double>(xr[t]);
    s = __dadd_rn(s, __dmul_rn(v, v));
  }
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) s = __dadd_rn(s, __shfl_down_sync(0xffffffffu, s, off));
  if (lane == 0) rownorm[row] = fmax(__dsqrt_rn(s), kNormEps);
}

// ----------------------------------------------------------------------------- ranks + init
// Ranks: block (token chunk, image); thread t counts the tokens before it in descending
// and ascending order of u (u_greater: NaN above every number; ties by index), streaming u
// through shared memory. Every token gets a distinct rank, so the orders are permutations.
__global__ void __launch_bounds__(kThreads) rank_kernel(const double* __restrict__ u, int64_t n,
                                                        int32_t* __restrict__ desc_order,
                                                        int32_t* __restrict__ asc_order) {
  LVTP_SHARED_ARRAY(double, tile, [kTile]);
  const int64_t b = blockIdx.y;
  const double* ub = u + b * n;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const double ut = t < n ? ub[t] : 0.0;
  int64_t above = 0, below = 0;  // tokens before t in desc / asc order
  for (int64_t s0 = 0; s0 < n; s0 += kTile) {
    const int64_t len = n - s0 < kTile ? n - s0 : kTile;
    __syncthreads();
    for (int64_t s = threadIdx.x; s < len; s += blockDim.x) tile[s] = ub[s0 + s];
    __syncthreads();
    if (t < n) {
      for (int64_t s = 0; s < len; ++s) {
        const double us = tile[s];
        const bool before = (s0 + s) < t;
        const bool tie_before = before && u_tied(us, ut);
        above += u_greater(us, ut) || tie_before;
        below += u_greater(ut, us) || tie_before;
      }
    }
  }
  if (t < n) {
    desc_order[b * n + above] = static_cast<int32_t>(t);
    asc_order[b * n + below] = static_cast<int32_t>(t);
  }
}

// Initial centroids: block (r, image): c[b, r] = x_b[desc_order[floor(r n / k)]] / norm.
template <typename T>
__global__ void __launch_bounds__(kThreads) init_kernel(const T* __restrict__ x, int64_t bstride,
                                                        const double* __restrict__ rownorm, int64_t n, int64_t d,
                                                        int64_t k, const int32_t* __restrict__ desc_order,
                                                        double* __restrict__ c) {
  const int64_t r = blockIdx.x, b = blockIdx.y;
  const int64_t tok = desc_order[b * n + (r * n) / k];
  const T* xr = x + b * bstride + tok * d;
  const double nr = rownorm[b * n + tok];
  for (int64_t t = threadIdx.x; t < d; t += blockDim.x)
    c[(b * k + r) * d + t] = __ddiv_rn(static_cast<double>(xr[t]), nr);
}

// ----------------------------------------------------------------------------- steps 5.2, 5.3
// One block per image; one warp per cluster for 5.2 (and, with the proportional
// allocation, for that cluster's quota and its kept tokens); ranked: warp 0 ranks all.
__global__ void __launch_bounds__(kThreads) finish_kernel(const double* __restrict__ u_all,
                                                          const int64_t* __restrict__ assign_all,
                                                          const int32_t* __restrict__ desc_all,
                                                          const int32_t* __restrict__ asc_all, int64_t n, int64_t k,
                                                          int64_t P, int64_t K, int allocation,
                                                          int32_t* __restrict__ seg_all,
                                                          int32_t* __restrict__ starts_all, uint8_t* __restrict__ cls_all,
                                                          uint8_t* __restrict__ keep_all, double* __restrict__ s1_all,
                                                          double* __restrict__ s2_all, int64_t* __restrict__ keep_idx,
                                                          int64_t* __restrict__ prune_idx,
                                                          int32_t* __restrict__ cluster_id) {
  const int64_t b = blockIdx.x;
  const double* u = u_all + b * n;
  const int64_t* assign = assign_all + b * n;
  const int32_t* desc = desc_all + b * n;
  const int32_t* asc = asc_all + b * n;
  int32_t* seg = seg_all + b * n;
  int32_t* starts = starts_all + b * (k + 1);
  uint8_t* cls = cls_all + b * n;
  uint8_t* keep = keep_all + b * n;
  double* s1 = s1_all + b * n;
  double* s2 = s2_all + b * n;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, nwarps = blockDim.x / kWarp;
  const unsigned lt = (1u << lane) - 1u;

  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    keep[i] = 0;
    cls[i] = kClassPlain;
  }
  // cluster sizes -> segment starts
  for (int64_t j = warp; j < k; j += nwarps) {
    int64_t cnt = 0;
    for (int64_t base = 0; base < n; base += kWarp) {
      const int64_t i = base + lane;
      cnt += __popc(__ballot_sync(0xffffffffu, i < n && assign[i] == j));
    }
    if (lane == 0) starts[j + 1] = static_cast<int32_t>(cnt);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    starts[0] = 0;
    for (int64_t j = 0; j < k; ++j) starts[j + 1] += starts[j];
  }
  __syncthreads();
  // per cluster (one warp each): members by u ascending, the 2-means split, the representative
  for (int64_t j = warp; j < k; j += nwarps) {
    const int64_t b0 = starts[j], m = starts[j + 1] - b0;
    if (m == 0) continue;
    int64_t fill = b0;
    for (int64_t base = 0; base < n; base += kWarp) {
      const int64_t i = base + lane;
      const int32_t t = i < n ? asc[i] : 0;
      const bool f = i < n && assign[t] == j;
      const unsigned msk = __ballot_sync(0xffffffffu, f);
      if (f) seg[fill + __popc(msk & lt)] = t;
      fill += __popc(msk);
    }
    __syncwarp();
    int64_t split = 0;
    if (m > 1) {
      if (lane == 0) {  // sequential prefix sums, as torch.cumsum on CPU
        double a = 0.0, q = 0.0;
        for (int64_t i = 0; i < m; ++i) {
          const double v = u[seg[b0 + i]];
          a = __dadd_rn(a, v);
          q = __dadd_rn(q, __dmul_rn(v, v));
          s1[b0 + i] = a;
          s2[b0 + i] = q;
        }
      }
      __syncwarp();
      const double t1 = s1[b0 + m - 1], t2 = s2[b0 + m - 1], md = static_cast<double>(m);
      auto cost = [&](int64_t s) {
        const double nlo = static_cast<double>(s);
        const double lo1 = s1[b0 + s - 1], lo2 = s2[b0 + s - 1];
        const double hi1 = __dsub_rn(t1, lo1), hi2 = __dsub_rn(t2, lo2);
        const double ca = __dsub_rn(lo2, __ddiv_rn(__dmul_rn(lo1, lo1), nlo));
        const double cb = __dsub_rn(hi2, __ddiv_rn(__dmul_rn(hi1, hi1), __dsub_rn(md, nlo)));
        return __dadd_rn(ca, cb);
      };
      double cmin = __longlong_as_double(0x7ff0000000000000LL);  // +inf
      for (int64_t s = 1 + lane; s < m; s += kWarp) cmin = fmin(cmin, cost(s));
#pragma unroll
      for (int off = kWarp / 2; off > 0; off >>= 1) cmin = fmin(cmin, __shfl_xor_sync(0xffffffffu, cmin, off));
      const double thr = __dadd_rn(cmin, __dmul_rn(__dmul_rn(kTieRtol, md), t2));
      split = m;  // sentinel
      for (int64_t base = 1; base < m; base += kWarp) {
        const int64_t s = base + lane;
        const unsigned msk = __ballot_sync(0xffffffffu, s < m && cost(s) <= thr);
        if (msk != 0u) {
          split = base + __ffs(msk) - 1;
          break;
        }
      }
      if (split == m) split = 1;  // unreachable for finite values
    }
    for (int64_t i = split + lane; i < m; i += kWarp) cls[seg[b0 + i]] = kClassSalient;
    __syncwarp();
    // representative: the first member of j in desc order (best u, lowest index)
    for (int64_t base = 0; base < n; base += kWarp) {
      const int64_t i = base + lane;
      const int32_t t = i < n ? desc[i] : 0;
      const unsigned msk = __ballot_sync(0xffffffffu, i < n && assign[t] == j);
      if (msk != 0u) {
        if (lane == __ffs(msk) - 1) cls[t] = kClassRep;
        break;
      }
    }
    __syncwarp();
    if (allocation == kAllocProportional) {
      // python_ref.proportional_quotas, integer arithmetic: q_j = floor(K m_j / n), plus one
      // when j is among the (K - sum_c floor(K m_c / n)) clusters of largest remainder
      // (K m_c) mod n, ties to the lower index. Lanes stride over the clusters c.
      const int64_t mj = K * m;
      const int64_t rj = mj % n;
      int64_t floors = 0, rank = 0;
      for (int64_t c = lane; c < k; c += kWarp) {
        const int64_t mc = K * static_cast<int64_t>(starts[c + 1] - starts[c]);
        const int64_t rc = mc % n;
        floors += mc / n;
        rank += (rc > rj) || (rc == rj && c < j);
      }
#pragma unroll
      for (int off = kWarp / 2; off > 0; off >>= 1) {
        floors += __shfl_xor_sync(0xffffffffu, floors, off);
        rank += __shfl_xor_sync(0xffffffffu, rank, off);
      }
      const int64_t quota = mj / n + (rank < K - floors ? 1 : 0);
      // cluster j keeps its first `quota` members in the order reps, salient, plain, each
      // by desc u (ties by lower index). All of j's classes were set by this warp.
      int64_t taken = 0;
      for (int cl = kClassRep; cl <= kClassPlain && taken < quota; ++cl) {
        for (int64_t base = 0; base < n && taken < quota; base += kWarp) {
          const int64_t i = base + lane;
          const int32_t t = i < n ? desc[i] : 0;
          const bool f = i < n && assign[t] == j && cls[t] == cl;
          const unsigned msk = __ballot_sync(0xffffffffu, f);
          if (f && taken + __popc(msk & lt) < quota) keep[t] = 1;
          taken += __popc(msk);
        }
      }
      __syncwarp();
    }
  }
  __syncthreads();
  // ranked: selection order reps, salient, plain, each by desc u; the first K are kept
  if (allocation == kAllocRanked && warp == 0) {
    int64_t taken = 0;
    for (int cl = kClassRep; cl <= kClassPlain && taken < K; ++cl) {
      for (int64_t base = 0; base < n && taken < K; base += kWarp) {
        const int64_t i = base + lane;
        const int32_t t = i < n ? desc[i] : 0;
        const bool f = i < n && cls[t] == cl;
        const unsigned msk = __ballot_sync(0xffffffffu, f);
        if (f && taken + __popc(msk & lt) < K) keep[t] = 1;
        taken += __popc(msk);
      }
    }
  }
  __syncthreads();
  const int64_t N = P + n;
  int64_t* krow = keep_idx + b * (P + K);
  int64_t* prow = prune_idx + b * (n - K);
  int32_t* crow = cluster_id + b * N;
  for (int64_t t = threadIdx.x; t < N; t += blockDim.x) {
    if (t < P) {
      krow[t] = t;
      crow[t] = -1;
    } else {
      crow[t] = static_cast<int32_t>(assign[t - P]);
    }
  }
  if (warp == 0) {
    int64_t nk = 0, np = 0;
    for (int64_t base = 0; base < n; base += kWarp) {
      const int64_t i = base + lane;
      const bool in = i < n;
      const bool kf = in && keep[i] != 0;
      const unsigned mk = __ballot_sync(0xffffffffu, kf);
      const unsigned mp = __ballot_sync(0xffffffffu, in && !kf);
      if (kf) krow[P + nk + __popc(mk & lt)] = P + i;
      if (in && !kf) prow[np + __popc(mp & lt)] = P + i;
      nk += __popc(mk);
      np += __popc(mp);
    }
  }
}

template <typename T>
cudaError_t launch_importance(const T* ent, const T* edge, int64_t B, int64_t N, int64_t Q, int64_t P, double alpha,
                              bool low, double* u, cudaStream_t stream) {
  if (B < 1 || N < 1 || P < 0 || P >= N || Q < 1 || Q > kMaxQ || B > INT32_MAX) return cudaErrorInvalidValue;
  LVTP_LAUNCH(importance_kernel<T>, static_cast<unsigned>(B), kThreads, 0, stream)(ent, edge, N, Q, P, alpha, low, u);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_row_norms(const T* x, int64_t bstride, int64_t B, int64_t n, int64_t d, double* rownorm,
                             cudaStream_t stream) {
  if (B < 1 || n < 1 || d < 1) return cudaErrorInvalidValue;
  const int64_t rows_per_block = kThreads / kWarp;
  const int64_t blocks = (B * n + rows_per_block - 1) / rows_per_block;
  if (blocks > INT32_MAX) return cudaErrorInvalidValue;
  LVTP_LAUNCH(row_norms_kernel<T>, static_cast<unsigned>(blocks), kThreads, 0, stream)(x, bstride, B, n, d, rownorm);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_rank_init(const double* u, const T* x, int64_t bstride, const double* rownorm, int64_t B,
                             int64_t n, int64_t d, int64_t k, int32_t* desc_order, int32_t* asc_order, double* c,
                             cudaStream_t stream) {
  if (B < 1 || n < 1 || n > INT32_MAX || d < 1 || k < 1 || k > n || B > 65535 || k > 65535)
    return cudaErrorInvalidValue;
  const dim3 rgrid(static_cast<unsigned>((n + kThreads - 1) / kThreads), static_cast<unsigned>(B));
  LVTP_LAUNCH(rank_kernel, rgrid, kThreads, 0, stream)(u, n, desc_order, asc_order);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  const dim3 igrid(static_cast<unsigned>(k), static_cast<unsigned>(B));
  LVTP_LAUNCH(init_kernel<T>, igrid, kThreads, 0, stream)(x, bstride, rownorm, n, d, k, desc_order, c);
  return cudaGetLastError();
}

}  // namespace

cudaError_t importance_f32(const float* ent, const float* edge, int64_t B, int64_t N, int64_t Q, int64_t P,
                           double alpha, bool low, double* u, cudaStream_t stream) {
  return launch_importance<float>(ent, edge, B, N, Q, P, alpha, low, u, stream);
}
cudaError_t importance_f64(const double* ent, const double* edge, int64_t B, int64_t N, int64_t Q, int64_t P,
                           double alpha, bool low, double* u, cudaStream_t stream) {
  return launch_importance<double>(ent, edge, B, N, Q, P, alpha, low, u, stream);
}

cudaError_t row_norms_f32(const float* x, int64_t x_bstride, int64_t B, int64_t n, int64_t d, double* rownorm,
                          cudaStream_t stream) {
  return launch_row_norms<float>(x, x_bstride, B, n, d, rownorm, stream);
}
cudaError_t row_norms_f64(const double* x, int64_t x_bstride, int64_t B, int64_t n, int64_t d, double* rownorm,
                          cudaStream_t stream) {
  return launch_row_norms<double>(x, x_bstride, B, n, d, rownorm, stream);
}

cudaError_t rank_init_f32(const double* u, const float* x, int64_t x_bstride, const double* rownorm, int64_t B,
                          int64_t n, int64_t d, int64_t k, int32_t* desc_order, int32_t* asc_order, double* c,
                          cudaStream_t stream) {
  return launch_rank_init<float>(u, x, x_bstride, rownorm, B, n, d, k, desc_order, asc_order, c, stream);
}
cudaError_t rank_init_f64(const double* u, const double* x, int64_t x_bstride, const double* rownorm, int64_t B,
                          int64_t n, int64_t d, int64_t k, int32_t* desc_order, int32_t* asc_order, double* c,
                          cudaStream_t stream) {
  return launch_rank_init<double>(u, x, x_bstride, rownorm, B, n, d, k, desc_order, asc_order, c, stream);
}

cudaError_t select_finish(const double* u, const int64_t* assign, const int32_t* desc_order,
                          const int32_t* asc_order, int64_t B, int64_t n, int64_t k, int64_t P, int64_t K,
                          int allocation, int32_t* seg, int32_t* starts, uint8_t* cls, uint8_t* keep, double* s1,
                          double* s2, int64_t* keep_idx, int64_t* prune_idx, int32_t* cluster_id,
                          cudaStream_t stream) {
  if (B < 1 || n < 1 || k < 1 || k > n || P < 0 || K < 1 || K > n || B > INT32_MAX) return cudaErrorInvalidValue;
  if (allocation != kAllocRanked && allocation != kAllocProportional) return cudaErrorInvalidValue;
  LVTP_LAUNCH(finish_kernel, static_cast<unsigned>(B), kThreads, 0, stream)(u, assign, desc_order, asc_order, n, k, P,
                                                                             K, allocation, seg, starts, cls, keep, s1,
                                                                             s2, keep_idx, prune_idx, cluster_id);
  return cudaGetLastError();
}

namespace {

cudaError_t kmeans_rows(const float* x, int64_t bstride, const double* rownorm, int64_t B, int64_t n, int64_t d,
                        double* c, int64_t k, int64_t iters, int64_t* assign, int32_t* members, cudaStream_t stream) {
  return kmeans_rows_f32_f64(x, bstride, rownorm, B, n, d, c, k, iters, assign, members, stream);
}
cudaError_t kmeans_rows(const double* x, int64_t bstride, const double* rownorm, int64_t B, int64_t n, int64_t d,
                        double* c, int64_t k, int64_t iters, int64_t* assign, int32_t* members, cudaStream_t stream) {
  return kmeans_rows_f64_f64(x, bstride, rownorm, B, n, d, c, k, iters, assign, members, stream);
}

template <typename XT, typename ET>
cudaError_t run_select(const XT* tokens, const ET* ent, const ET* edge, int64_t B, int64_t N, int64_t C, int64_t Q,
                       int64_t P, int64_t K, int64_t k, int64_t iters, double alpha, bool low, int allocation,
                       const SelectScratch& s, int64_t* keep_idx, int64_t* prune_idx, int32_t* cluster_id,
                       cudaStream_t stream) {
  if (B < 1 || N < 1 || C < 1 || P < 0 || P >= N || iters < 1) return cudaErrorInvalidValue;
  const int64_t n = N - P, bstride = N * C;
  const XT* x = tokens + P * C;
  cudaError_t e = launch_importance<ET>(ent, edge, B, N, Q, P, alpha, low, s.u, stream);
  if (e == cudaSuccess) e = launch_row_norms<XT>(x, bstride, B, n, C, s.rownorm, stream);
  if (e == cudaSuccess)
    e = launch_rank_init<XT>(s.u, x, bstride, s.rownorm, B, n, C, k, s.desc, s.asc, s.centroids, stream);
  if (e == cudaSuccess) e = kmeans_rows(x, bstride, s.rownorm, B, n, C, s.centroids, k, iters, s.assign, s.members, stream);
  if (e == cudaSuccess)
    e = select_finish(s.u, s.assign, s.desc, s.asc, B, n, k, P, K, allocation, s.seg, s.starts, s.cls, s.keep, s.s1,
                      s.s2, keep_idx, prune_idx, cluster_id, stream);
  return e;
}

}  // namespace

#define LVTP_SELECT_TOKENS(XT, ET)                                                                                 \
  cudaError_t select_tokens(const XT* tokens, const ET* ent, const ET* edge, int64_t B, int64_t N, int64_t C,       \
                            int64_t Q, int64_t P, int64_t K, int64_t k, int64_t iters, double alpha, bool low,      \
                            int allocation, const SelectScratch& s, int64_t* keep_idx, int64_t* prune_idx,          \
                            int32_t* cluster_id, cudaStream_t stream) {                                             \
    return run_select<XT, ET>(tokens, ent, edge, B, N, C, Q, P, K, k, iters, alpha, low, allocation, s, keep_idx,   \
                              prune_idx, cluster_id, stream);                                                       \
  }
LVTP_SELECT_TOKENS(float, float)
LVTP_SELECT_TOKENS(float, double)
LVTP_SELECT_TOKENS(double, float)
LVTP_SELECT_TOKENS(double, double)
#undef LVTP_SELECT_TOKENS

}  // namespace cuda
}  // namespace lvtp
