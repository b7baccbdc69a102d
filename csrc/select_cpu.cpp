// lvtp_kernels._C.kmeans and lvtp_kernels._C.select: the CPU kernels of spec steps 2, 4 and
// 5 (k-means clustering of the tokens, then the choice of the kept ones). kmeans and select
// share the k-means internals, hence one file.
//
//   kmeans(x, init, iters) -> (centroids, assign)
//     x (B, n, d), init (B, k, d), 1 <= k <= n, iters >= 1; any floating dtypes.
//     centroids (B, k, d) float32 (float64 when x is float64), assign (B, n) int64.
//     Accumulation in the centroid dtype (fp32, or fp64 for fp64 x); == python_ref.kmeans,
//     assignments equal up to near-ties of the distances. Direct distances sum_d (x - c)^2
//     (LVTP_KMEANS_FORM=expanded: the BLAS |x|^2 - 2 x.c + |c|^2 form with an exact
//     re-check of near-ties, a measurement knob only).
//   select(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters,
//          iters, allocation) -> (keep_idx, prune_idx, cluster_id)
//     tokens (B, N, C) fp16 / bf16 / fp32 / fp64 (any strides), ent (B, N, Q) floating,
//     edge (B, N) floating or None; allocation "ranked" (spec step 5.3, python_ref.select)
//     or "proportional" (python_ref.proportional_quotas). keep_idx (B, P+K) int64 and
//     prune_idx (B, N-P-K) int64, ascending; cluster_id (B, N) int32, -1 for the P
//     protected tokens; K = budget(N, P, keep_ratio) (lvtp_common.h).
//     Precision: everything in float64 -- importance u from the same ATen ops in the same
//     order as python_ref.fused_importance, L2-normalised features (an exact conversion,
//     one batched ATen norm, IEEE division), k-means on them in fp64, the 2-means split with
//     sequential fp64 prefix sums and the reference's tie tolerance. Outputs are
//     bit-identical to python_ref.select_tokens on CPU.
//
// Determinism: every sum has a fixed order (per point: a fixed lane split over d; per
// cluster: points in index order), whatever the thread count (at::parallel_for splits
// images, points or column chunks, never a sum). u is ranked in torch.sort's total order
// (NaN above every number), so non-finite inputs still give a permutation.
// Limits: clusters is capped at n = N - P (k = min(clusters, n)); no other size limit
// beyond memory (a per-thread fp64 workspace of 2 * B * (N - P) * C values for select).
// The TORCH_CHECKs guard the raw functions only (the Python policy validates first);
// messages start with "lvtp.kmeans" / "lvtp.select".

#include "lvtp_cpu_kernel.h"  // first: light ATen headers

#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/rsub.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "lvtp_common.h"

namespace lvtp {

using at::Tensor;

namespace {

// ----------------------------------------------------------------------------- distances
// sum_d (a - b)^2 with L independent lane accumulators (one 64-byte vector's worth),
// combined by a fixed pairwise tree: vectorisable without -ffast-math, deterministic.
template <typename T>
inline T sqdist(const T* __restrict a, const T* __restrict b, int64_t d) {
  constexpr int L = 64 / sizeof(T);
  T acc[L];
  for (int l = 0; l < L; ++l) acc[l] = T(0);
  int64_t i = 0;
  for (; i + L <= d; i += L) {
    for (int l = 0; l < L; ++l) {
      const T t = a[i + l] - b[i + l];
      acc[l] += t * t;
    }
  }
  for (int w = L / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  T s = acc[0];
  for (; i < d; ++i) {
    const T t = a[i] - b[i];
    s += t * t;
  }
  return s;
}

template <typename T>
inline T sqnorm(const T* __restrict a, int64_t d) {
  constexpr int L = 64 / sizeof(T);
  T acc[L];
  for (int l = 0; l < L; ++l) acc[l] = T(0);
  int64_t i = 0;
  for (; i + L <= d; i += L)
    for (int l = 0; l < L; ++l) acc[l] += a[i + l] * a[i + l];
  for (int w = L / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  T s = acc[0];
  for (; i < d; ++i) s += a[i] * a[i];
  return s;
}

// Direct form: assign points [i0, i1) of one image (x: n x d, c: k x d) to the nearest
// centroid; ties to the lower index (strict <), like argmin. (A 4-centroid register
// blocked variant measured slower here: GCC did not vectorise it as well.)
template <typename T>
inline void assign_direct_impl(const T* x, int64_t i0, int64_t i1, const T* c, int64_t k, int64_t d,
                               int64_t* out) {
  for (int64_t i = i0; i < i1; ++i) {
    const T* xi = x + i * d;
    int64_t best = 0;
    T bd = sqdist(xi, c, d);
    for (int64_t j = 1; j < k; ++j) {
      const T dj = sqdist(xi, c + j * d, d);
      if (dj < bd) {
        bd = dj;
        best = j;
      }
    }
    out[i] = best;
  }
}

LVTP_CLONES void assign_direct_f32(const float* x, int64_t i0, int64_t i1, const float* c, int64_t k, int64_t d,
                                   int64_t* out) {
  assign_direct_impl<float>(x, i0, i1, c, k, d, out);
}
LVTP_CLONES void assign_direct_f64(const double* x, int64_t i0, int64_t i1, const double* c, int64_t k, int64_t d,
                                   int64_t* out) {
  assign_direct_impl<double>(x, i0, i1, c, k, d, out);
}
inline void assign_direct(const float* x, int64_t i0, int64_t i1, const float* c, int64_t k, int64_t d,
                          int64_t* out) {
  assign_direct_f32(x, i0, i1, c, k, d, out);
}
inline void assign_direct(const double* x, int64_t i0, int64_t i1, const double* c, int64_t k, int64_t d,
                          int64_t* out) {
  assign_direct_f64(x, i0, i1, c, k, d, out);
}

LVTP_CLONES void sqnorms_f32(const float* x, int64_t i0, int64_t i1, int64_t d, float* out) {
  for (int64_t i = i0; i < i1; ++i) out[i] = sqnorm(x + i * d, d);
}
LVTP_CLONES void sqnorms_f64(const double* x, int64_t i0, int64_t i1, int64_t d, double* out) {
  for (int64_t i = i0; i < i1; ++i) out[i] = sqnorm(x + i * d, d);
}
inline void sqnorms(const float* x, int64_t i0, int64_t i1, int64_t d, float* out) { sqnorms_f32(x, i0, i1, d, out); }
inline void sqnorms(const double* x, int64_t i0, int64_t i1, int64_t d, double* out) {
  sqnorms_f64(x, i0, i1, d, out);
}

// Expanded form with exact refinement: dist_j = |x|^2 - 2 x.c_j + |c_j|^2 from a BLAS
// product `dot` (n x k), then every centroid whose distance is within a rounding bound of
// the best one is re-measured in the direct form, so the decision is the direct form's
// (up to its own rounding). The bound (d + 8) * eps * (|x|^2 + |c_j|^2) covers the error
// of any summation order of the dot product.
template <typename T>
void assign_expanded(const T* x, int64_t i0, int64_t i1, const T* c, int64_t k, int64_t d, const T* dot,
                     const T* xx, const T* cc, int64_t* out, std::vector<T>& dist) {
  const T eps = std::numeric_limits<T>::epsilon() * static_cast<T>(d + 8);
  dist.resize(static_cast<size_t>(k));
  for (int64_t i = i0; i < i1; ++i) {
    const T* di = dot + i * k;
    int64_t best = 0;
    T bhi = std::numeric_limits<T>::infinity();  // least upper bound over j
    for (int64_t j = 0; j < k; ++j) {
      dist[j] = xx[i] - T(2) * di[j] + cc[j];
      const T hi = dist[j] + eps * (xx[i] + cc[j]);
      if (hi < bhi) {
        bhi = hi;
        best = j;
      }
    }
    int64_t n_cand = 0;
    for (int64_t j = 0; j < k && n_cand < 2; ++j)
      if (dist[j] - eps * (xx[i] + cc[j]) <= bhi) ++n_cand;
    if (n_cand > 1) {  // a near-tie: decide with the direct form among the candidates
      const T* xi = x + i * d;
      T bd = std::numeric_limits<T>::infinity();
      best = -1;
      for (int64_t j = 0; j < k; ++j) {
        if (dist[j] - eps * (xx[i] + cc[j]) > bhi) continue;
        const T dj = sqdist(xi, c + j * d, d);
        if (best < 0 || dj < bd) {
          bd = dj;
          best = j;
        }
      }
    }
    out[i] = best;
  }
}

// Centroid update of one image for dims [d0, d1): mean of the members, summed in point
// index order; an empty cluster keeps its centroid.
template <typename T>
void update_centroids(const T* x, int64_t n, int64_t d, const int64_t* assign, T* c, int64_t k, int64_t d0,
                      int64_t d1, std::vector<T>& sums, std::vector<int64_t>& counts) {
  const int64_t w = d1 - d0;
  sums.assign(static_cast<size_t>(k * w), T(0));
  counts.assign(static_cast<size_t>(k), 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = assign[i];
    ++counts[j];
    T* __restrict s = sums.data() + j * w;
    const T* __restrict xi = x + i * d + d0;
    for (int64_t t = 0; t < w; ++t) s[t] += xi[t];
  }
  for (int64_t j = 0; j < k; ++j) {
    if (counts[j] == 0) continue;
    const T cnt = static_cast<T>(counts[j]);
    T* cj = c + j * d + d0;
    const T* s = sums.data() + j * w;
    for (int64_t t = 0; t < w; ++t) cj[t] = s[t] / cnt;
  }
}

// Serial k-means of one image, direct distances, the centroid sums fused into the
// assignment pass (one sweep over x per iteration while the image is cache-resident).
// Sums run in point index order per cluster: the same order as update_centroids, so the
// result does not depend on which path (or how many threads) ran it.
template <typename T>
void kmeans_image_direct(const T* x, int64_t n, int64_t d, T* c, int64_t k, int64_t iters, int64_t* assign) {
  std::vector<T> sums(static_cast<size_t>(k * d));
  std::vector<int64_t> counts(static_cast<size_t>(k));
  std::vector<int64_t> prev(static_cast<size_t>(n), -1);
  for (int64_t it = 0; it < iters; ++it) {
    std::fill(sums.begin(), sums.end(), T(0));
    std::fill(counts.begin(), counts.end(), 0);
    for (int64_t i = 0; i < n; ++i) {
      assign_direct(x, i, i + 1, c, k, d, assign);
      const int64_t j = assign[i];
      ++counts[j];
      T* __restrict s = sums.data() + j * d;
      const T* __restrict xi = x + i * d;
      for (int64_t t = 0; t < d; ++t) s[t] += xi[t];
    }
    // Converged: the same assignment as the last iteration means this update would
    // recompute the same centroids (same members, same order), so every later iteration
    // is a fixed point. Stopping here returns exactly what all `iters` iterations return.
    if (it > 0 && std::equal(prev.begin(), prev.end(), assign)) return;
    std::copy_n(assign, n, prev.begin());
    for (int64_t j = 0; j < k; ++j) {
      if (counts[j] == 0) continue;
      const T cnt = static_cast<T>(counts[j]);
      for (int64_t t = 0; t < d; ++t) c[j * d + t] = sums[j * d + t] / cnt;
    }
  }
  assign_direct(x, 0, n, c, k, d, assign);
}

// Lloyd iterations with a fixed-point exit (see kmeans_image_direct), around a caller's
// assignment and update steps over `pts` points: the one loop of every parallel path.
template <typename AssignStep, typename UpdateStep>
void lloyd_iterations(int64_t pts, int64_t iters, const int64_t* assign, AssignStep&& assign_step,
                      UpdateStep&& update_step) {
  std::vector<int64_t> prev(static_cast<size_t>(pts), -1);
  for (int64_t it = 0; it < iters; ++it) {
    assign_step();
    if (it > 0 && std::equal(prev.begin(), prev.end(), assign)) return;
    std::copy_n(assign, pts, prev.begin());
    update_step();
  }
  assign_step();
}

// Centroid update of B images over (image, column chunk) tasks; each column is summed over
// its cluster's members in point index order (update_centroids), whatever the chunking.
template <typename T>
void parallel_update(const T* x, int64_t B, int64_t n, int64_t d, T* c, int64_t k, const int64_t* assign,
                     int64_t dchunk) {
  const int64_t nd = (d + dchunk - 1) / dchunk;
  at::parallel_for(0, B * nd, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> sums;
    std::vector<int64_t> counts;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / nd, d0 = (t % nd) * dchunk, d1 = std::min(d, d0 + dchunk);
      update_centroids(x + b * n * d, n, d, assign + b * n, c + b * k * d, k, d0, d1, sums, counts);
    }
  });
}

// Direct-form k-means of B images (rows (B*n) x d, centroids (B*k) x d) with the work spread
// over threads: the assignment over point ranges, the update over (image, column range)
// tasks (each column summed over the members in point index order, as kmeans_image_direct
// does). Every point and column computes what the serial version computes, so the result
// is the same for any thread count. Used when there are fewer images than threads.
template <typename T>
void kmeans_points_parallel(const T* x, int64_t B, int64_t n, int64_t d, T* c, int64_t k, int64_t iters,
                            int64_t* assign) {
  const int64_t pts = B * n;
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, k * d));
  const int64_t dchunk = std::max<int64_t>(16, std::min<int64_t>(d, 64));
  auto assign_step = [&]() {
    at::parallel_for(0, pts, grain, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1;) {
        const int64_t b = p / n, i0 = p % n, i1 = std::min(n, i0 + (p1 - p));
        assign_direct(x + b * n * d, i0, i1, c + b * k * d, k, d, assign + b * n);
        p += i1 - i0;
      }
    });
  };
  auto update_step = [&]() { parallel_update(x, B, n, d, c, k, assign, dchunk); };
  lloyd_iterations(pts, iters, assign, assign_step, update_step);
}

// ----------------------------------------------------------------------------- kmeans op
enum class DistForm { Direct, Expanded };

DistForm dist_form_from_env() {
  // LVTP_KMEANS_FORM=direct|expanded: a measurement knob. Direct is the default: it was
  // as fast or faster at every measured size (k=8 makes the BLAS product skinny) and it
  // rounds like the reference.
  const char* v = std::getenv("LVTP_KMEANS_FORM");
  if (v != nullptr && std::string(v) == "expanded") return DistForm::Expanded;
  return DistForm::Direct;
}

template <typename T>
void kmeans_batch(const Tensor& xt, Tensor& ct, int64_t iters, Tensor& at_, DistForm form) {
  const int64_t B = xt.size(0), n = xt.size(1), d = xt.size(2), k = ct.size(1);
  const T* x = xt.data_ptr<T>();
  T* c = ct.data_ptr<T>();
  int64_t* assign = at_.data_ptr<int64_t>();
  const int64_t pts = B * n;

  Tensor xx_t, cc_t;
  if (form == DistForm::Expanded) {
    xx_t = at::empty({B, n}, xt.options());
    cc_t = at::empty({B, k}, xt.options());
    T* xx = xx_t.data_ptr<T>();
    at::parallel_for(0, pts, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, d)), [&](int64_t p0, int64_t p1) {
      sqnorms(x, p0, p1, d, xx);  // rows of all images are contiguous: (B*n) x d
    });
  }

  if (form == DistForm::Direct) {
    if (B >= at::get_num_threads()) {
      // image-major: each image runs all its iterations while it is cache-resident
      at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b)
          kmeans_image_direct(x + b * n * d, n, d, c + b * k * d, k, iters, assign + b * n);
      });
    } else {  // iteration-major: few images, parallel over points then over (image, dims)
      kmeans_points_parallel(x, B, n, d, c, k, iters, assign);
    }
    return;
  }
  // expanded form (a measurement knob): BLAS products for the dot terms
  auto assign_step = [&]() {
    T* cc = cc_t.data_ptr<T>();
    sqnorms(c, 0, B * k, d, cc);
    const Tensor dot = at::bmm(xt, ct.transpose(1, 2)).contiguous();  // (B, n, k), BLAS
    const T* dp = dot.data_ptr<T>();
    const T* xx = xx_t.data_ptr<T>();
    at::parallel_for(0, pts, std::max<int64_t>(1, 4096 / k), [&](int64_t p0, int64_t p1) {
      std::vector<T> dist;
      for (int64_t p = p0; p < p1;) {
        const int64_t b = p / n, i0 = p % n, i1 = std::min(n, i0 + (p1 - p));
        assign_expanded(x + b * n * d, i0, i1, c + b * k * d, k, d, dp + b * n * k, xx + b * n, cc + b * k,
                        assign + b * n, dist);
        p += i1 - i0;
      }
    });
  };
  // Update: tasks are (image, chunk of dims); each sums its cluster members in index order.
  const int64_t dchunk = std::max<int64_t>(16, std::min<int64_t>(d, 256));
  auto update_step = [&]() { parallel_update(x, B, n, d, c, k, assign, dchunk); };
  lloyd_iterations(pts, iters, assign, assign_step, update_step);
}

void check_kmeans_args(const Tensor& x, const Tensor& init, int64_t iters) {
  TORCH_CHECK(x.dim() == 3, lvtp::fmt("lvtp.kmeans: x must be (B, n, d), got ", x.sizes()));
  TORCH_CHECK(init.dim() == 3, lvtp::fmt("lvtp.kmeans: init must be (B, k, d), got ", init.sizes()));
  TORCH_CHECK(x.size(0) == init.size(0) && x.size(2) == init.size(2),
              lvtp::fmt("lvtp.kmeans: x ", x.sizes(), " and init ", init.sizes(), " disagree on B or d"));
  TORCH_CHECK(x.size(1) >= 1 && init.size(1) >= 1 && init.size(1) <= x.size(1),
              lvtp::fmt("lvtp.kmeans: need 1 <= k <= n, got n=", x.size(1), " k=", init.size(1)));
  TORCH_CHECK(iters >= 1, lvtp::fmt("lvtp.kmeans: iters must be >= 1, got ", iters));
  TORCH_CHECK(at::isFloatingType(x.scalar_type()) && at::isFloatingType(init.scalar_type()),
              "lvtp.kmeans: x and init must be floating point");
}

}  // namespace

std::tuple<Tensor, Tensor> kmeans_cpu(const Tensor& x_in, const Tensor& init, int64_t iters) {
  check_kmeans_args(x_in, init, iters);
  const auto acc = x_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor x = x_in.to(acc).contiguous();
  Tensor c = init.to(acc).clone(at::MemoryFormat::Contiguous);
  Tensor assign = at::empty({x.size(0), x.size(1)}, x.options().dtype(at::kLong));
  const DistForm form = dist_form_from_env();
  if (acc == at::kDouble)
    kmeans_batch<double>(x, c, iters, assign, form);
  else
    kmeans_batch<float>(x, c, iters, assign, form);
  return {c, assign};
}

// ----------------------------------------------------------------------------- select
namespace {

// Steps 2 and 4 (python_ref.fused_importance) with the same ATen ops in the same order,
// so u is bit-identical to the reference.
Tensor fused_importance_aten(const Tensor& ent, const std::optional<Tensor>& edge, int64_t p, double alpha,
                             const std::string& mode) {
  const Tensor s = ent.slice(1, p).to(at::kDouble);
  const Tensor mean = s.mean({1}, /*keepdim=*/true);
  const Tensor sigma = (s - mean).pow(2).mean({1}).sqrt();
  const Tensor total = sigma.sum({1}, /*keepdim=*/true);
  const Tensor uniform = at::full_like(sigma, 1.0 / static_cast<double>(sigma.size(1)));
  const Tensor pos = total > 0;
  const Tensor w = at::where(pos, sigma / at::where(pos, total, at::Scalar(1.0)), uniform);
  const Tensor e64 = ent.to(at::kDouble);
  Tensor e = at::zeros_like(e64.select(-1, 0));
  for (int64_t j = 0; j < e64.size(-1); ++j) e = e + w.slice(1, j, j + 1) * e64.select(-1, j);
  const Tensor h = (mode == "low") ? at::rsub(e, 1.0) : e;
  if (!edge.has_value()) return h;
  return at::mul(h, alpha) + at::mul(edge->to(at::kDouble), 1.0 - alpha);
}

// Exact replica of python_ref.two_means_split on values sorted ascending: sequential
// float64 prefix sums (torch's CPU cumsum is sequential), the same operation order per
// cost, the same tie tolerance.
int64_t two_means_split(const double* u, int64_t m, std::vector<double>& s1, std::vector<double>& s2) {
  if (m == 1) return 0;
  s1.resize(m);
  s2.resize(m);
  double a = 0.0, b = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    a += u[i];
    b += u[i] * u[i];
    s1[i] = a;
    s2[i] = b;
  }
  const double t1 = s1[m - 1], t2 = s2[m - 1], md = static_cast<double>(m);
  auto cost = [&](int64_t s) {
    const double nlo = static_cast<double>(s);
    const double lo1 = s1[s - 1], lo2 = s2[s - 1];
    const double hi1 = t1 - lo1, hi2 = t2 - lo2;
    const double a_ = lo2 - (lo1 * lo1) / nlo;
    const double b_ = hi2 - (hi1 * hi1) / (md - nlo);
    return a_ + b_;
  };
  double cmin = std::numeric_limits<double>::infinity();
  for (int64_t s = 1; s < m; ++s) cmin = std::min(cmin, cost(s));
  const double thr = cmin + (kTieRtol * md) * t2;
  for (int64_t s = 1; s < m; ++s)
    if (cost(s) <= thr) return s;
  return 1;  // unreachable for finite values (the minimum itself is tied)
}

// Step 5 for one image: x (n x C, L2-normalised, float64), u (n) -> keep (n) and assign (n).
// allocation: kAllocRanked (step 5.3) or kAllocProportional (per-cluster quotas).
void select_one(const double* x, const double* u, int64_t n, int64_t C, int64_t clusters, int64_t iters,
                int64_t budget_k, int allocation, uint8_t* keep, int64_t* assign, bool parallel_kmeans = false) {
  const int64_t k = std::min(clusters, n);
  // desc order of u, ties by lower index (torch.sort(descending=True, stable=True))
  std::vector<int64_t> desc(n);
  std::iota(desc.begin(), desc.end(), 0);
  std::stable_sort(desc.begin(), desc.end(), [&](int64_t a, int64_t b) { return u_greater(u[a], u[b]); });
  std::vector<double> c(static_cast<size_t>(k * C));
  for (int64_t r = 0; r < k; ++r) {
    const int64_t t = desc[(r * n) / k];
    std::memcpy(c.data() + r * C, x + t * C, sizeof(double) * C);
  }
  if (parallel_kmeans)
    kmeans_points_parallel<double>(x, 1, n, C, c.data(), k, iters, assign);
  else
    kmeans_image_direct<double>(x, n, C, c.data(), k, iters, assign);

  // 5.2 per cluster: members by u ascending (ties by lower index) -> 2-means split.
  std::vector<int64_t> asc(n);
  std::iota(asc.begin(), asc.end(), 0);
  std::stable_sort(asc.begin(), asc.end(), [&](int64_t a, int64_t b) { return u_greater(u[b], u[a]); });
  std::vector<int64_t> count(k + 1, 0);
  for (int64_t i = 0; i < n; ++i) ++count[assign[i] + 1];
  for (int64_t j = 0; j < k; ++j) count[j + 1] += count[j];  // segment starts
  std::vector<int64_t> seg(n), fill(count.begin(), count.end() - 1);
  for (int64_t t : asc) seg[fill[assign[t]]++] = t;  // stable: asc order within a cluster
  std::vector<int8_t> cls(n, kClassPlain);
  std::vector<double> uv, s1, s2;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t b0 = count[j], m = count[j + 1] - b0;
    if (m == 0) continue;
    uv.resize(m);
    for (int64_t i = 0; i < m; ++i) uv[i] = u[seg[b0 + i]];
    const int64_t split = two_means_split(uv.data(), m, s1, s2);
    for (int64_t i = split; i < m; ++i) cls[seg[b0 + i]] = kClassSalient;
  }
  // representative: the first member of each cluster in desc order (best u, lowest index)
  std::vector<uint8_t> seen(k, 0);
  for (int64_t t : desc) {
    const int64_t j = assign[t];
    if (!seen[j]) {
      seen[j] = 1;
      cls[t] = kClassRep;
    }
  }
  std::memset(keep, 0, static_cast<size_t>(n));
  if (allocation == kAllocProportional) {
    // Cluster j keeps its first quota[j] tokens in the order reps, salient, plain, each by
    // desc u (ties by lower index): one pass per class over desc, a counter per cluster.
    std::vector<int64_t> sizes(k), left(k);
    for (int64_t j = 0; j < k; ++j) sizes[j] = count[j + 1] - count[j];
    for (int64_t j = 0; j < k; ++j) left[j] = proportional_quota(sizes.data(), k, n, budget_k, j);
    for (int cl = kClassRep; cl <= kClassPlain; ++cl)
      for (int64_t i = 0; i < n; ++i) {
        const int64_t t = desc[i], j = assign[t];
        if (cls[t] == cl && left[j] > 0) {
          keep[t] = 1;
          --left[j];
        }
      }
    return;
  }
  // 5.3 order: reps, salient, plain; each by desc u (ties by lower index); keep the first K.
  int64_t taken = 0;
  for (int cl = kClassRep; cl <= kClassPlain && taken < budget_k; ++cl)
    for (int64_t i = 0; i < n && taken < budget_k; ++i)
      if (cls[desc[i]] == cl) {
        keep[desc[i]] = 1;
        ++taken;
      }
}

void check_select_args(const Tensor& tokens, const Tensor& ent, const std::optional<Tensor>& edge, double keep_ratio,
                       int64_t num_protected, const std::string& mode, int64_t clusters, int64_t iters) {
  TORCH_CHECK(tokens.dim() == 3, lvtp::fmt("lvtp.select: tokens must be (B, N, C), got ", tokens.sizes()));
  TORCH_CHECK(ent.dim() == 3 && ent.size(0) == tokens.size(0) && ent.size(1) == tokens.size(1),
              lvtp::fmt("lvtp.select: ent must be (B, N, Q) like tokens, got ", ent.sizes()));
  TORCH_CHECK(ent.size(2) >= 1 && tokens.size(2) >= 1, "lvtp.select: empty Q or C");
  if (edge.has_value())
    TORCH_CHECK(edge->dim() == 2 && edge->size(0) == tokens.size(0) && edge->size(1) == tokens.size(1),
                lvtp::fmt("lvtp.select: edge must be (B, N), got ", edge->sizes()));
  TORCH_CHECK(keep_ratio > 0.0 && keep_ratio <= 1.0, "lvtp.select: keep_ratio must be in (0, 1]");
  TORCH_CHECK(num_protected >= 0 && num_protected < tokens.size(1),
              "lvtp.select: num_protected must be in [0, N-1]");
  TORCH_CHECK(mode == "low" || mode == "high", "lvtp.select: entropy_mode must be 'low' or 'high'");
  TORCH_CHECK(clusters >= 1 && iters >= 1, "lvtp.select: clusters and iters must be >= 1");
}

int check_allocation(const std::string& allocation) {
  const int a = allocation_from_name(allocation);
  TORCH_CHECK(a >= 0, lvtp::fmt("lvtp.select: allocation must be 'ranked' or 'proportional', got '",
              allocation, "'"));
  return a;
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> select_cpu(const Tensor& tokens, const Tensor& ent,
                                              const std::optional<Tensor>& edge, double keep_ratio,
                                              int64_t num_protected, double alpha, const std::string& entropy_mode,
                                              int64_t clusters, int64_t iters, const std::string& allocation_name) {
  check_select_args(tokens, ent, edge, keep_ratio, num_protected, entropy_mode, clusters, iters);
  const int allocation = check_allocation(allocation_name);
  const int64_t B = tokens.size(0), N = tokens.size(1), C = tokens.size(2), P = num_protected, n = N - P;
  const int64_t K = budget(N, P, keep_ratio);
  const Tensor u = fused_importance_aten(ent, edge, P, alpha, entropy_mode).slice(1, P).contiguous();
  // Features: the reference's ops on the same views (per image, outside any parallel
  // region), so the normalised features are bit-identical.
  // Features in float64 and their row norms, exactly as the reference computes them
  // (an exact conversion, then one batched ATen norm: each row reduced as the reference
  // reduces it; the division is IEEE). Both buffers are per-thread workspaces reused across
  // calls: fresh multi-MB allocations each call cost more in page faults than the math.
  thread_local std::vector<double> ws_feats, ws_x;
  const size_t total = static_cast<size_t>(B * n * C);
  if (ws_feats.size() < total) ws_feats.resize(total);
  if (ws_x.size() < total) ws_x.resize(total);
  const int64_t row_grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(C, 1));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tokens.scalar_type(), "lvtp.select", [&] {
    const scalar_t* tp = tokens.data_ptr<scalar_t>();
    const int64_t s0 = tokens.stride(0), s1 = tokens.stride(1), s2 = tokens.stride(2);
    double* fw = ws_feats.data();
    at::parallel_for(0, B * n, row_grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = tp + (r / n) * s0 + (P + r % n) * s1;
        for (int64_t t = 0; t < C; ++t) fw[r * C + t] = static_cast<double>(row[t * s2]);
      }
    });
  });
  const Tensor feats = at::from_blob(ws_feats.data(), {B, n, C}, tokens.options().dtype(at::kDouble));
  const Tensor nrm = at::linalg_vector_norm(feats, 2, at::IntArrayRef{-1}, /*keepdim=*/true).clamp_min(kNormEps)
                         .contiguous();
  {
    const double* fp = ws_feats.data();
    const double* np_ = nrm.data_ptr<double>();
    double* xw = ws_x.data();
    at::parallel_for(0, B * n, row_grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const double d = np_[r];
        for (int64_t t = 0; t < C; ++t) xw[r * C + t] = fp[r * C + t] / d;
      }
    });
  }
  Tensor keep = at::empty({B, n}, tokens.options().dtype(at::kByte));
  Tensor assign = at::empty({B, n}, tokens.options().dtype(at::kLong));
  const double* xp = ws_x.data();
  const double* up = u.data_ptr<double>();
  uint8_t* kp = keep.data_ptr<uint8_t>();
  int64_t* ap = assign.data_ptr<int64_t>();
  if (B >= at::get_num_threads()) {  // one task per image, each cache-resident for all its iterations
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        select_one(xp + b * n * C, up + b * n, n, C, clusters, iters, K, allocation, kp + b * n, ap + b * n);
    });
  } else {  // fewer images than threads: images in turn, each one's k-means spread over the threads
    for (int64_t b = 0; b < B; ++b)
      select_one(xp + b * n * C, up + b * n, n, C, clusters, iters, K, allocation, kp + b * n, ap + b * n, true);
  }

  Tensor keep_idx = at::empty({B, P + K}, tokens.options().dtype(at::kLong));
  Tensor prune_idx = at::empty({B, n - K}, tokens.options().dtype(at::kLong));
  Tensor cluster_id = at::empty({B, N}, tokens.options().dtype(at::kInt));
  int64_t* ki = keep_idx.data_ptr<int64_t>();
  int64_t* pi = prune_idx.data_ptr<int64_t>();
  int32_t* ci = cluster_id.data_ptr<int32_t>();
  for (int64_t b = 0; b < B; ++b) {
    int64_t* krow = ki + b * (P + K);
    int64_t* prow = pi + b * (n - K);
    int32_t* crow = ci + b * N;
    for (int64_t t = 0; t < P; ++t) {
      krow[t] = t;
      crow[t] = -1;
    }
    int64_t nk = P, np = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (kp[b * n + i])
        krow[nk++] = P + i;
      else
        prow[np++] = P + i;
      crow[P + i] = static_cast<int32_t>(ap[b * n + i]);
    }
    TORCH_CHECK(nk == P + K && np == n - K,
                lvtp::fmt("lvtp.select: internal error: kept ", nk - P, " tokens, budget ", K));
  }
  return {keep_idx, prune_idx, cluster_id};
}

}  // namespace lvtp
