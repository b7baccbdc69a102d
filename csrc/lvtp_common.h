// Shared constants and helpers of the compiled lvtp clustering kernels (C++ select_cpu.cpp,
// CUDA select_cuda.cu / bind_cuda.cpp, the simt harness).
//
// Ops: none; the pieces both backends must compute identically: the tie tolerance of the
// 2-means split, the norm epsilon, the token classes and budget allocations of step 5.3,
// proportional_quota (int64 integer arithmetic), budget (K from keep_ratio in fp64, then
// floor) and u's total order (u_greater / u_tied on float64: NaN above every number,
// equal values tied, so ranks are a permutation even for non-finite input).
// Deterministic, no state. Every number here mirrors python_ref/ops.py; keep them in sync.
#pragma once

#include <cstdint>

namespace lvtp {

// python_ref.ops.TIE_RTOL: two_means_split counts split costs within
// TIE_RTOL * m * sum(u^2) of the least one as tied (ties go to the smaller split).
constexpr double kTieRtol = 1e-12;

// python_ref select: L2 normalisation divides by max(norm, kNormEps).
constexpr double kNormEps = 1e-12;

// Token classes of the selection order (step 5.3): representatives, salient, plain.
constexpr int kClassRep = 0;
constexpr int kClassSalient = 1;
constexpr int kClassPlain = 2;

// Budget allocations of select_tokens (python_ref.ops.ALLOCATIONS): "ranked" is the
// spec's step 5.3 (one ranking over all clusters, select's behaviour); "proportional"
// gives cluster c the quota python_ref.ops.proportional_quotas (size-proportional,
// largest remainders) and fills it in the step 5.3 order within the cluster.
constexpr int kAllocRanked = 0;
constexpr int kAllocProportional = 1;

// The allocation code of a name ("ranked" / "proportional"), or -1 for any other.
// A template so that the .cu files (which never call it) need no string type.
template <typename Str>
inline int allocation_from_name(const Str& name) {
  if (name == "ranked") return kAllocRanked;
  if (name == "proportional") return kAllocProportional;
  return -1;
}

// python_ref.ops.proportional_quotas for cluster j of sizes[0..k), m = sum sizes >= 1:
// floor(K m_j / m), plus one when j is among the (K - sum floor) clusters with the
// largest remainders (K m_j) mod m, ties to the lower index. Integer arithmetic.
// Host-only helper (the CUDA kernel computes the same per warp).
inline int64_t proportional_quota(const int64_t* sizes, int64_t k, int64_t m, int64_t K, int64_t j) {
  int64_t left = K;
  for (int64_t c = 0; c < k; ++c) left -= (K * sizes[c]) / m;
  const int64_t rj = (K * sizes[j]) % m;
  int64_t rank = 0;  // clusters before j in (-remainder, index) order
  for (int64_t c = 0; c < k; ++c) {
    const int64_t rc = (K * sizes[c]) % m;
    rank += (rc > rj) || (rc == rj && c < j);
  }
  return (K * sizes[j]) / m + (rank < left ? 1 : 0);
}

#if defined(__CUDACC__)
#define LVTP_HOST_DEVICE __host__ __device__
#else
#define LVTP_HOST_DEVICE
#endif

// The order in which u is ranked (step 5.1's initial centroids, 5.2, 5.3): torch.sort's,
// where NaN sorts above every number. Equal values, NaNs included, are tied (callers break
// ties by index). A total order even with NaN: the public ops refuse NaN, but inside a
// patched model's forward (no value checks) a NaN entropy must still give a permutation of
// ranks -- `a > b` alone is not an order on NaN, and ranks that collide leave slots unset
// that later steps follow out of bounds.
LVTP_HOST_DEVICE inline bool u_greater(double a, double b) { return (a != a && b == b) || a > b; }
LVTP_HOST_DEVICE inline bool u_tied(double a, double b) { return !u_greater(a, b) && !u_greater(b, a); }

// python_ref.ops.budget: K = max(1, floor(keep_ratio * (N - P) + 0.5)).
inline int64_t budget(int64_t n_tokens, int64_t num_protected, double keep_ratio) {
  const double v = keep_ratio * static_cast<double>(n_tokens - num_protected) + 0.5;
  int64_t k = static_cast<int64_t>(v);  // v > 0: truncation is floor
  if (static_cast<double>(k) > v) --k;
  return k < 1 ? 1 : k;
}

}  // namespace lvtp
