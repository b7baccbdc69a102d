// lvtp_kernels._C.select_fast: the CPU kernel of the fast selection (spec steps 2, 4, 5 with
// float32 features), the algorithm of python_ref/fast.py.
//
//   select_fast(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters,
//               iters, allocation, trace) -> [keep_idx, prune_idx, cluster_id] (+ trace)
//     tokens (B, N, C) fp16 / bf16 / fp32 / fp64 (any strides), ent (B, N, Q) floating,
//     edge (B, N) floating or None. keep_idx (B, P+K) int64 and prune_idx (B, N-P-K) int64,
//     ascending; cluster_id (B, N) int32, -1 for the P protected tokens.
//     trace=True appends python_ref.fast.FastTrace's fields: u (B, n) f32, init_idx (B, k)
//     int64, centroids (B, iters+1, k, C) f32, assign (B, iters+1, n) int64, split (B, k)
//     int64, rep (B, k) int64 (n = N - P, k = min(clusters, n)).
// Precision: float32 importance, normalised rows, dots (x . c - |c|^2 / 2, 16 lane
// accumulators and a fixed tree) and centroid means (members in index order); the 2-means
// split in float64 prefix sums of the float32 u with python_ref's tie tolerance. Outputs
// equal python_ref.fast.select_fast except at near-ties (tests/test_op_select_fast.py
// certifies every difference against float64).
// Determinism: fixed summation orders; at::parallel_for splits images (or, for fewer images
// than threads, the points of an assignment), never a sum: same result for any thread count.
// Limits: none beyond memory (a float32 copy of the normalised rows, B * n * C values).

#include "lvtp_cpu_kernel.h"  // first: light ATen headers

#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "lvtp_common.h"

namespace lvtp {

using at::Tensor;

namespace {

// sum_d a[d] * b[d], 16 lanes and a fixed pairwise tree (vectorisable, deterministic). The
// lanes are one GCC vector (one zmm, two ymm or four xmm registers, per clone): an array
// of 16 floats was kept on the stack, one store and reload per step.
// (Passing one by value between always-inline helpers never reaches an ABI boundary.)
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float v16f __attribute__((vector_size(64)));

LVTP_ALWAYS_INLINE inline v16f load16(const float* p) {
  v16f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

LVTP_ALWAYS_INLINE inline float tree16(v16f v) {
  float acc[16];
  std::memcpy(acc, &v, sizeof acc);
  for (int w = 8; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

LVTP_ALWAYS_INLINE inline float dot16_body(const float* __restrict a, const float* __restrict b, int64_t d) {
  v16f acc = {};
  int64_t i = 0;
  for (; i + 16 <= d; i += 16) acc += load16(a + i) * load16(b + i);
  float s = tree16(acc);
  for (; i < d; ++i) s += a[i] * b[i];
  return s;
}

LVTP_CLONES float dot16(const float* __restrict a, const float* __restrict b, int64_t d) { return dot16_body(a, b, d); }

// dot16(x, c_j) for J consecutive centroids at once: x is loaded once per 16 lanes, and each
// of the J dots runs exactly dot16's operations (the same lanes, tree and tail), so the
// result is bitwise dot16's.
template <int J>
LVTP_ALWAYS_INLINE inline void dots16(const float* __restrict x, const float* __restrict c, int64_t d, float* out) {
  v16f acc[J] = {};
  int64_t i = 0;
  for (; i + 16 <= d; i += 16) {
    const v16f xv = load16(x + i);
    for (int j = 0; j < J; ++j) acc[j] += xv * load16(c + j * d + i);
  }
  for (int j = 0; j < J; ++j) {
    float s = tree16(acc[j]);
    for (int64_t t = i; t < d; ++t) s += x[t] * c[j * d + t];
    out[j] = s;
  }
}

// assignment of points [i0, i1): argmax_j x . c_j - |c_j|^2 / 2, ties to the lower j
LVTP_CLONES void assign_range(const float* __restrict x, const float* __restrict c, const float* __restrict half_cc,
                              int64_t k, int64_t C, int64_t i0, int64_t i1, int64_t* __restrict out) {
  constexpr int J = 4;
  float sc[J];
  for (int64_t i = i0; i < i1; ++i) {
    const float* xi = x + i * C;
    int64_t best = 0;
    float bs = 0.f;
    int64_t j = 0;
    for (; j + J <= k; j += J) {
      dots16<J>(xi, c + j * C, C, sc);
      for (int t = 0; t < J; ++t) {
        const float s = sc[t] - half_cc[j + t];
        if (j + t == 0 || s > bs) {  // strict: ties to the lower cluster (torch.argmax's first maximum)
          bs = s;
          best = j + t;
        }
      }
    }
    for (; j < k; ++j) {
      const float s = dot16_body(xi, c + j * C, C) - half_cc[j];
      if (j == 0 || s > bs) {
        bs = s;
        best = j;
      }
    }
    out[i] = best;
  }
}

struct Image {
  const float* x;  // (n, C) normalised rows
  const float* u;  // (n,)
  int64_t n, C, k, iters, K;
  int allocation;
  // outputs
  uint8_t* keep;    // (n,)
  int64_t* assign;  // (n,) final assignment
  // trace (nullptr when not traced)
  int64_t* t_init;    // (k,)
  float* t_cent;      // (iters + 1, k, C)
  int64_t* t_assign;  // (iters + 1, n)
  int64_t* t_split;   // (k,)
  int64_t* t_rep;     // (k,)
};

void assign_points(const Image& im, const float* c, const float* half_cc, int64_t* out, bool par) {
  auto body = [&](int64_t i0, int64_t i1) { assign_range(im.x, c, half_cc, im.k, im.C, i0, i1, out); };
  if (par)
    at::parallel_for(0, im.n, 64, body);
  else
    body(0, im.n);
}

void half_sqnorms(const float* c, int64_t k, int64_t C, float* out) {
  for (int64_t j = 0; j < k; ++j) out[j] = 0.5f * dot16(c + j * C, c + j * C, C);
}

void select_image(const Image& im, bool par) {
  const int64_t n = im.n, C = im.C, k = im.k;
  std::vector<int64_t> desc(n);
  std::iota(desc.begin(), desc.end(), 0);
  std::stable_sort(desc.begin(), desc.end(), [&](int64_t a, int64_t b) { return u_greater(im.u[a], im.u[b]); });
  std::vector<float> c(k * C), sums(k * C), half_cc(k);
  std::vector<int64_t> cnt(k), cur(n);
  for (int64_t r = 0; r < k; ++r) {
    const int64_t i = desc[(r * n) / k];
    if (im.t_init) im.t_init[r] = i;
    std::copy(im.x + i * C, im.x + (i + 1) * C, c.begin() + r * C);
  }
  if (im.t_cent) std::copy(c.begin(), c.end(), im.t_cent);
  for (int64_t t = 0; t <= im.iters; ++t) {
    half_sqnorms(c.data(), k, C, half_cc.data());
    int64_t* a = t == im.iters ? im.assign : cur.data();
    assign_points(im, c.data(), half_cc.data(), a, par);
    if (im.t_assign) std::copy(a, a + n, im.t_assign + t * n);
    if (t == im.iters) break;
    std::fill(sums.begin(), sums.end(), 0.f);
    std::fill(cnt.begin(), cnt.end(), 0);
    for (int64_t i = 0; i < n; ++i) {  // members in index order
      float* s = sums.data() + a[i] * C;
      const float* xi = im.x + i * C;
      for (int64_t d = 0; d < C; ++d) s[d] += xi[d];
      ++cnt[a[i]];
    }
    for (int64_t j = 0; j < k; ++j) {
      if (cnt[j] == 0) continue;  // an emptied cluster keeps its centroid
      const float m = static_cast<float>(cnt[j]);
      for (int64_t d = 0; d < C; ++d) c[j * C + d] = sums[j * C + d] / m;
    }
    if (im.t_cent) std::copy(c.begin(), c.end(), im.t_cent + (t + 1) * k * C);
  }
  const int64_t* as = im.assign;
  // 5.2: members of each cluster by ascending u (ties by lower index), 2-means, representative
  std::vector<int64_t> asc(n);
  std::iota(asc.begin(), asc.end(), 0);
  std::stable_sort(asc.begin(), asc.end(), [&](int64_t a, int64_t b) { return u_greater(im.u[b], im.u[a]); });
  std::stable_sort(asc.begin(), asc.end(), [&](int64_t a, int64_t b) { return as[a] < as[b]; });
  std::vector<int64_t> size(k, 0), start(k, 0);
  for (int64_t i = 0; i < n; ++i) ++size[as[i]];
  for (int64_t j = 1; j < k; ++j) start[j] = start[j - 1] + size[j - 1];
  std::vector<int> cls(n, kClassPlain);
  std::vector<double> s1, s2;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t m = size[j], st = start[j];
    int64_t split = 0, rep = -1;
    if (m >= 2) {
      s1.assign(m + 1, 0.0);
      s2.assign(m + 1, 0.0);
      for (int64_t r = 0; r < m; ++r) {
        const double v = static_cast<double>(im.u[asc[st + r]]);
        s1[r + 1] = s1[r] + v;
        s2[r + 1] = s2[r] + v * v;
      }
      double best = INFINITY;
      std::vector<double> cost(m, INFINITY);
      for (int64_t s = 1; s < m; ++s) {
        const double lo1 = s1[s], lo2 = s2[s], hi1 = s1[m] - lo1, hi2 = s2[m] - lo2;
        cost[s] = (lo2 - lo1 * lo1 / static_cast<double>(s)) + (hi2 - hi1 * hi1 / static_cast<double>(m - s));
        best = std::min(best, cost[s]);
      }
      const double tol = kTieRtol * static_cast<double>(m) * s2[m];
      for (int64_t s = 1; s < m; ++s)
        if (cost[s] <= best + tol) {
          split = s;
          break;
        }
    }
    for (int64_t r = split; r < m; ++r) cls[asc[st + r]] = kClassSalient;
    if (m >= 1) {  // best u, ties by lower index
      rep = asc[st + m - 1];
      for (int64_t r = m - 2; r >= 0 && u_tied(im.u[asc[st + r]], im.u[rep]); --r) rep = asc[st + r];
      cls[rep] = kClassRep;
    }
    if (im.t_split) im.t_split[j] = split;
    if (im.t_rep) im.t_rep[j] = rep;
  }
  // 5.3: order by (class, u descending, index), then the allocation
  std::vector<int64_t> order(desc);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cls[a] < cls[b]; });
  std::fill(im.keep, im.keep + n, uint8_t(0));
  if (im.allocation == kAllocProportional) {
    std::vector<int64_t> taken(k, 0), quota(k);
    for (int64_t j = 0; j < k; ++j) quota[j] = proportional_quota(size.data(), k, n, im.K, j);
    for (int64_t i : order)
      if (taken[as[i]] < quota[as[i]]) {
        im.keep[i] = 1;
        ++taken[as[i]];
      }
  } else {
    for (int64_t r = 0; r < im.K; ++r) im.keep[order[r]] = 1;
  }
}

}  // namespace

std::vector<Tensor> select_fast_cpu(const Tensor& tokens, const Tensor& ent, const std::optional<Tensor>& edge,
                                    double keep_ratio, int64_t num_protected, double alpha,
                                    const std::string& entropy_mode, int64_t clusters, int64_t iters,
                                    const std::string& allocation_name, bool trace) {
  TORCH_CHECK(tokens.dim() == 3, lvtp::fmt("lvtp.select: tokens must be (B, N, C), got ", tokens.sizes()));
  TORCH_CHECK(ent.dim() == 3 && ent.size(0) == tokens.size(0) && ent.size(1) == tokens.size(1) && ent.size(2) >= 1,
              lvtp::fmt("lvtp.select: ent must be (B, N, Q) like tokens, got ", ent.sizes()));
  if (edge.has_value())
    TORCH_CHECK(edge->dim() == 2 && edge->size(0) == tokens.size(0) && edge->size(1) == tokens.size(1),
                lvtp::fmt("lvtp.select: edge must be (B, N), got ", edge->sizes()));
  TORCH_CHECK(keep_ratio > 0.0 && keep_ratio <= 1.0, "lvtp.select: keep_ratio must be in (0, 1]");
  TORCH_CHECK(num_protected >= 0 && num_protected < tokens.size(1), "lvtp.select: num_protected must be in [0, N-1]");
  TORCH_CHECK(entropy_mode == "low" || entropy_mode == "high", "lvtp.select: entropy_mode must be 'low' or 'high'");
  TORCH_CHECK(clusters >= 1 && iters >= 1, "lvtp.select: clusters and iters must be >= 1");
  const int allocation = allocation_from_name(allocation_name);
  TORCH_CHECK(allocation >= 0,
              lvtp::fmt("lvtp.select: allocation must be 'ranked' or 'proportional', got '", allocation_name, "'"));
  const int64_t B = tokens.size(0), N = tokens.size(1), C = tokens.size(2), P = num_protected, n = N - P;
  const int64_t k = std::min(clusters, n), Q = ent.size(2), K = budget(N, P, keep_ratio);
  const auto f32 = tokens.options().dtype(at::kFloat);
  const auto i64 = tokens.options().dtype(at::kLong);

  // steps 2, 4 in float32 (python_ref.fast.importance)
  const Tensor e32 = ent.to(at::kFloat).contiguous();
  Tensor edge32;
  if (edge.has_value()) edge32 = edge->to(at::kFloat).contiguous();
  Tensor u = at::empty({B, n}, f32);
  {
    const float* ep = e32.data_ptr<float>();
    const float* gp = edge.has_value() ? edge32.data_ptr<float>() : nullptr;
    float* up = u.data_ptr<float>();
    const float a = static_cast<float>(alpha), b1 = static_cast<float>(1.0 - alpha);
    const bool low = entropy_mode == "low";
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1_) {
      std::vector<float> w(Q);
      for (int64_t b = b0; b < b1_; ++b) {
        const float* eb = ep + (b * N + P) * Q;
        float total = 0.f;
        for (int64_t q = 0; q < Q; ++q) {
          float s = 0.f;
          for (int64_t i = 0; i < n; ++i) s += eb[i * Q + q];
          const float mean = s / static_cast<float>(n);
          float v = 0.f;
          for (int64_t i = 0; i < n; ++i) {
            const float d = eb[i * Q + q] - mean;
            v += d * d;
          }
          w[q] = std::sqrt(v / static_cast<float>(n));
          total += w[q];
        }
        for (int64_t q = 0; q < Q; ++q) w[q] = total > 0.f ? w[q] / total : 1.0f / static_cast<float>(Q);
        for (int64_t i = 0; i < n; ++i) {
          float e = 0.f;
          for (int64_t q = 0; q < Q; ++q) e = e + w[q] * eb[i * Q + q];
          const float h = low ? 1.0f - e : e;
          up[b * n + i] = gp ? a * h + b1 * gp[b * N + P + i] : h;
        }
      }
    });
  }
  // normalised float32 rows
  std::vector<float> xs(static_cast<size_t>(B * n * C));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tokens.scalar_type(), "lvtp.select_fast", [&] {
    const scalar_t* tp = tokens.data_ptr<scalar_t>();
    const int64_t s0 = tokens.stride(0), s1 = tokens.stride(1), s2 = tokens.stride(2);
    float* xw = xs.data();
    at::parallel_for(0, B * n, std::max<int64_t>(1, 4096 / C), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = tp + (r / n) * s0 + (P + r % n) * s1;
        float* out = xw + r * C;
        for (int64_t t = 0; t < C; ++t) out[t] = static_cast<float>(row[t * s2]);
        const float nrm = std::max(std::sqrt(dot16(out, out, C)), static_cast<float>(kNormEps));
        for (int64_t t = 0; t < C; ++t) out[t] = out[t] / nrm;
      }
    });
  });

  Tensor keep = at::empty({B, n}, tokens.options().dtype(at::kByte));
  Tensor assign = at::empty({B, n}, i64);
  Tensor t_init, t_cent, t_assign, t_split, t_rep;
  if (trace) {
    t_init = at::empty({B, k}, i64);
    t_cent = at::empty({B, iters + 1, k, C}, f32);
    t_assign = at::empty({B, iters + 1, n}, i64);
    t_split = at::empty({B, k}, i64);
    t_rep = at::empty({B, k}, i64);
  }
  auto image = [&](int64_t b) {
    Image im{xs.data() + b * n * C, u.data_ptr<float>() + b * n, n, C, k, iters, K, allocation,
             keep.data_ptr<uint8_t>() + b * n, assign.data_ptr<int64_t>() + b * n,
             nullptr, nullptr, nullptr, nullptr, nullptr};
    if (trace) {
      im.t_init = t_init.data_ptr<int64_t>() + b * k;
      im.t_cent = t_cent.data_ptr<float>() + b * (iters + 1) * k * C;
      im.t_assign = t_assign.data_ptr<int64_t>() + b * (iters + 1) * n;
      im.t_split = t_split.data_ptr<int64_t>() + b * k;
      im.t_rep = t_rep.data_ptr<int64_t>() + b * k;
    }
    return im;
  };
  if (B >= at::get_num_threads()) {
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) select_image(image(b), false);
    });
  } else {
    for (int64_t b = 0; b < B; ++b) select_image(image(b), true);
  }

  Tensor keep_idx = at::empty({B, P + K}, i64);
  Tensor prune_idx = at::empty({B, n - K}, i64);
  Tensor cluster_id = at::empty({B, N}, tokens.options().dtype(at::kInt));
  const uint8_t* kp = keep.data_ptr<uint8_t>();
  const int64_t* ap = assign.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    int64_t* krow = keep_idx.data_ptr<int64_t>() + b * (P + K);
    int64_t* prow = prune_idx.data_ptr<int64_t>() + b * (n - K);
    int32_t* crow = cluster_id.data_ptr<int32_t>() + b * N;
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
                lvtp::fmt("lvtp.select_fast: internal error: kept ", nk - P, " tokens, budget ", K));
  }
  if (!trace) return {keep_idx, prune_idx, cluster_id};
  return {keep_idx, prune_idx, cluster_id, u, t_init, t_cent, t_assign, t_split, t_rep};
}

}  // namespace lvtp
