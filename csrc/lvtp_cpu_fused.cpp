// CPU kernels of the scoring ops (spec steps 1 and 3), registered as lvtp_cpp::* beside the
// clustering ops of lvtp_cpu.cpp and used as the "cpp" backend of the public ops:
//
//   lvtp_cpp::attention_entropy == python_ref.attention_entropy (floats, to rounding)
//   lvtp_cpp::patch_edge_energy == python_ref.patch_edge_energy (floats, to rounding)
//
// attention_entropy: the two matrix products go to ATen (BLAS), the softmax too; one fused
// pass per attention row then accumulates every order at once, reading the row twice
// from L1: max of the logits s and of p, then sum p (s - m), sum sqrt p, sum p^2, sum p^3
// (other orders through exp(q ln p)). Shannon needs no log of p: with ln p = s - lse and
// lse = m - ln max(p), -sum p ln p = -ln max(p) - sum p (s - m), two non-negative terms.
// Unlike the GPU kernel, this one holds the N x N maps (B, H, N, N) in memory: on a CPU the
// map of a ViT layer is small next to its weights (B=8, H=3, N=301: 8.7 MB in fp32).
//
// patch_edge_energy: luma, replicate-padded Sobel, hypot, patch mean and the per-image
// normalisation in one pass per image row band, no intermediate image.

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/torch.h>

#include "lvtp_fmt.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace lvtp {
namespace {

using at::Tensor;

constexpr double kNearOne = 0.25;  // python_ref.ops.NEAR_ONE

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(LVTP_NO_CLONES)
#define LVTP_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LVTP_CLONES
#endif
#if defined(__GNUC__)
#define LVTP_ALWAYS_INLINE __attribute__((always_inline))
#else
#define LVTP_ALWAYS_INLINE
#endif

// The moments of one attention row in L independent lanes, one 64-byte vector's worth
// (16 floats, 8 doubles: vectorisable without reassociation flags), combined in lane
// order: res = {max s, max p, sum p (s - max s), sum sqrt p, sum p^2, sum p^3}.
// Always inlined: the target_clones wrappers below must compile their own copy (as plain
// inline templates GCC emitted one SSE body that each clone only jumped to). With lanes
// of the vector width and the two maxima in separate passes, GCC emits clean AVX-512:
// 127 -> 35 us per 301 x 301 attention map on this project's CPU.
template <typename T>
LVTP_ALWAYS_INLINE inline T lane_max(const T* __restrict__ a, int64_t n) {
  constexpr int L = 64 / sizeof(T);
  T mx[L];
  for (int l = 0; l < L; ++l) mx[l] = -std::numeric_limits<T>::infinity();
  int64_t j = 0;
  for (; j + L <= n; j += L)
    for (int l = 0; l < L; ++l) mx[l] = a[j + l] > mx[l] ? a[j + l] : mx[l];
  for (int l = 0; j < n; ++j, ++l) mx[l] = a[j] > mx[l] ? a[j] : mx[l];
  T m = mx[0];
  for (int l = 1; l < L; ++l) m = mx[l] > m ? mx[l] : m;
  return m;
}

template <typename T>
LVTP_ALWAYS_INLINE inline void row_moments(const T* __restrict__ p, const T* __restrict__ s, int64_t n, T* res) {
  constexpr int L = 64 / sizeof(T);
  const T m = lane_max(s, n), pm = lane_max(p, n);
  T a_sh[L] = {}, a_h[L] = {}, a_2[L] = {}, a_3[L] = {};
  int64_t j = 0;
  for (; j + L <= n; j += L)
    for (int l = 0; l < L; ++l) {
      const T pj = p[j + l];
      const T p2 = pj * pj;
      a_sh[l] += pj * (s[j + l] - m);
      a_h[l] += std::sqrt(pj);
      a_2[l] += p2;
      a_3[l] += p2 * pj;
    }
  for (int l = 0; j < n; ++j, ++l) {
    const T pj = p[j];
    const T p2 = pj * pj;
    a_sh[l] += pj * (s[j] - m);
    a_h[l] += std::sqrt(pj);
    a_2[l] += p2;
    a_3[l] += p2 * pj;
  }
  T sh = 0, h = 0, q2 = 0, q3 = 0;
  for (int l = 0; l < L; ++l) {
    sh += a_sh[l];
    h += a_h[l];
    q2 += a_2[l];
    q3 += a_3[l];
  }
  res[0] = m;
  res[1] = pm;
  res[2] = sh;
  res[3] = h;
  res[4] = q2;
  res[5] = q3;
}

LVTP_CLONES void row_moments_f32(const float* p, const float* s, int64_t n, float* res) {
  row_moments<float>(p, s, n, res);
}
LVTP_CLONES void row_moments_f64(const double* p, const double* s, int64_t n, double* res) {
  row_moments<double>(p, s, n, res);
}
inline void row_moments_any(const float* p, const float* s, int64_t n, float* res) { row_moments_f32(p, s, n, res); }
inline void row_moments_any(const double* p, const double* s, int64_t n, double* res) {
  row_moments_f64(p, s, n, res);
}

// One attention row: p (normalised), s (logits) -> per-order normalised entropy added to out.
template <typename T>
void row_entropies(const T* p, const T* s, int64_t n, const std::vector<double>& qs, const std::vector<double>& smax,
                   T* out) {
  T mom[6];
  row_moments_any(p, s, n, mom);
  const T m = mom[0], pm = mom[1], sh = mom[2], h = mom[3], q2 = mom[4], q3 = mom[5];
  const T log_pm = std::log(pm);
  for (size_t k = 0; k < qs.size(); ++k) {
    const double q = qs[k];
    double ent;
    if (q == 1.0) {
      ent = -static_cast<double>(log_pm) - static_cast<double>(sh);
    } else if (q == 0.5) {
      ent = 1.0 - static_cast<double>(h);
    } else if (q == 2.0) {
      ent = 1.0 - static_cast<double>(q2);
    } else if (q == 3.0) {
      ent = 1.0 - static_cast<double>(q3);
    } else if (std::abs(q - 1.0) >= kNearOne) {  // p^q = exp(q ln p), ln p = s - m + ln max(p)
      T acc = 0;
      for (int64_t i = 0; i < n; ++i)
        if (p[i] > T(0)) acc += std::exp(static_cast<T>(q) * (s[i] - m + log_pm));
      ent = 1.0 - static_cast<double>(acc);
    } else {  // 1 - sum p^q = (1 - sum p) - sum p expm1((q - 1) ln p): no cancellation near 1.
      // A softmax row sums to 1 exactly, so the first term is 0 -- taken from the rounded p
      // instead, its ~1e-7 would be divided by S_q_max ~ |q - 1| ln N (9e-5 at N = 2, q = 1.001).
      double t = 0.0;
      for (int64_t i = 0; i < n; ++i)
        if (p[i] > T(0))
          t += static_cast<double>(p[i]) * std::expm1((q - 1.0) * static_cast<double>(s[i] - m + log_pm));
      ent = -t;
    }
    out[k] += static_cast<T>(smax[k] != 0.0 ? ent / smax[k] : 0.0);
  }
}

std::tuple<Tensor, Tensor> attention_entropy_cpu(const Tensor& q, const Tensor& k, const Tensor& v,
                                                 at::ArrayRef<double> qs, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "lvtp_cpp.attention_entropy: q, k, v must be 4-D");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(2) == k.size(2) && q.size(3) == k.size(3) &&
                  v.size(0) == q.size(0) && v.size(1) == q.size(1) && v.size(2) == q.size(2),
              "lvtp_cpp.attention_entropy: q, k, v shapes disagree");
  TORCH_CHECK(!qs.empty(), "lvtp_cpp.attention_entropy: qs is empty");
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), Q = static_cast<int64_t>(qs.size()), Dv = v.size(3);
  const Tensor qa = q.to(acc), ka = k.to(acc), va = v.to(acc);
  std::vector<double> qv(qs.begin(), qs.end()), smax(Q);
  const double logn = std::log(static_cast<double>(N));
  for (int64_t i = 0; i < Q; ++i) smax[i] = qv[i] == 1.0 ? logn : -std::expm1((1.0 - qv[i]) * logn);
  // Tasks: (b, h, block of R query rows), R chosen so a block's logits and probabilities
  // (2 R N values) stay in L2; each task runs its matrix products single-threaded. Entropies
  // go per head into ent_h, summed over heads in order afterwards (thread-count independent).
  // At least kMinTasks tasks (batch 1 has only H): row blocks are split further. R depends on
  // the shapes only, never on the thread count, so results do not depend on it either.
  constexpr int64_t kMinTasks = 8;
  int64_t R = std::max<int64_t>(1, std::min<int64_t>(N, (int64_t(1) << 17) / std::max<int64_t>(N, 1)));
  const int64_t want_blk = (kMinTasks + B * H - 1) / (B * H);
  if ((N + R - 1) / R < want_blk) R = std::max<int64_t>(16, (N + want_blk - 1) / want_blk);
  const int64_t nblk = (N + R - 1) / R;
  Tensor out = at::empty({B, H, N, Dv}, qa.options());
  Tensor ent_h = at::zeros({B, H, N, Q}, qa.options());
  AT_DISPATCH_FLOATING_TYPES(qa.scalar_type(), "lvtp_cpp.attention_entropy", [&] {
    at::parallel_for(0, B * H * nblk, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / (H * nblk), h = (t / nblk) % H, r0 = (t % nblk) * R, r1 = std::min(N, r0 + R);
        const Tensor qb = qa.select(0, b).select(0, h).slice(0, r0, r1);  // (rows, D)
        const Tensor kb = ka.select(0, b).select(0, h);                    // (N, D)
        const Tensor vb = va.select(0, b).select(0, h);                    // (N, Dv)
        // Per-thread workspaces reused across tasks and calls (a fresh allocation per task
        // costs page faults); plain from_blob tensors, so the ATen writes into them are legal
        // in a worker thread, which runs outside the caller's inference mode.
        thread_local std::vector<scalar_t> ws;
        const int64_t rows = r1 - r0;
        const size_t need = static_cast<size_t>(rows * (2 * N + Dv));
        if (ws.size() < need) ws.resize(need);
        const auto opt = qa.options();
        Tensor sb = at::from_blob(ws.data(), {rows, N}, opt);
        Tensor pb = at::from_blob(ws.data() + rows * N, {rows, N}, opt);
        Tensor ob = at::from_blob(ws.data() + 2 * rows * N, {rows, Dv}, opt);
        at::mm_out(sb, qb, kb.t());
        sb.mul_(scale);
        at::_softmax_out(pb, sb, -1, false);
        at::mm_out(ob, pb, vb);
        std::copy_n(ob.data_ptr<scalar_t>(), rows * Dv, out.data_ptr<scalar_t>() + ((b * H + h) * N + r0) * Dv);
        const scalar_t* pp = pb.data_ptr<scalar_t>();
        const scalar_t* sp = sb.data_ptr<scalar_t>();
        scalar_t* ep = ent_h.data_ptr<scalar_t>() + ((b * H + h) * N + r0) * Q;
        for (int64_t i = 0; i < r1 - r0; ++i) row_entropies<scalar_t>(pp + i * N, sp + i * N, N, qv, smax, ep + i * Q);
      }
    });
  });
  Tensor ent = ent_h.select(1, 0).clone(at::MemoryFormat::Contiguous);
  for (int64_t h = 1; h < H; ++h) ent.add_(ent_h.select(1, h));
  ent.div_(static_cast<double>(H));
  return {out.to(q.scalar_type()), ent.to(at::kFloat)};
}

Tensor patch_edge_energy_cpu(const Tensor& image_in, int64_t patch) {
  TORCH_CHECK(image_in.dim() == 4 && image_in.size(1) == 3, "lvtp_cpp.patch_edge_energy: image must be (B, 3, H, W)");
  TORCH_CHECK(patch >= 1 && patch <= image_in.size(2) && patch <= image_in.size(3),
              "lvtp_cpp.patch_edge_energy: patch must be in [1, min(H, W)]");
  const auto acc = image_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor img = image_in.to(acc).contiguous();
  const int64_t B = img.size(0), Hh = img.size(2), W = img.size(3);
  const int64_t h = Hh / patch, w = W / patch;
  Tensor e = at::empty({B, h * w}, img.options());
  AT_DISPATCH_FLOATING_TYPES(img.scalar_type(), "lvtp_cpp.patch_edge_energy", [&] {
    using T = scalar_t;
    const T l0 = static_cast<T>(0.299), l1 = static_cast<T>(0.587), l2 = static_cast<T>(0.114);
    const T* ip = img.data_ptr<T>();
    T* ep = e.data_ptr<T>();
    const int64_t plane = Hh * W;
    // (image, patch row) in parallel: luma of the patch rows plus one halo row each side
    at::parallel_for(0, B * h, 1, [&](int64_t t0, int64_t t1) {
      std::vector<T> y(static_cast<size_t>((patch + 2) * W));
      std::vector<T> rowsum(static_cast<size_t>(w));
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / h, pr = t % h;
        const T* r = ip + b * 3 * plane;
        const T* g = r + plane;
        const T* bl = g + plane;
        const int64_t y0 = pr * patch;
        for (int64_t yy = 0; yy < patch + 2; ++yy) {  // rows y0 - 1 .. y0 + patch, clamped (replicate)
          const int64_t src = std::min(std::max(y0 - 1 + yy, int64_t(0)), Hh - 1);
          T* dst = y.data() + yy * W;
          for (int64_t x = 0; x < W; ++x) {
            const int64_t o = src * W + x;
            dst[x] = l0 * r[o] + l1 * g[o] + l2 * bl[o];
          }
        }
        std::fill(rowsum.begin(), rowsum.end(), T(0));
        for (int64_t yy = 1; yy <= patch; ++yy) {
          const T* up = y.data() + (yy - 1) * W;
          const T* mid = y.data() + yy * W;
          const T* dn = y.data() + (yy + 1) * W;
          for (int64_t pc = 0; pc < w; ++pc) {
            T acc_ = 0;
            for (int64_t x = pc * patch; x < (pc + 1) * patch; ++x) {
              const int64_t xl = x > 0 ? x - 1 : 0, xr = x + 1 < W ? x + 1 : W - 1;
              // Gx = [-1 0 1; -2 0 2; -1 0 1] and Gy = Gx^T as cross-correlations
              const T gx = (up[xr] - up[xl]) + T(2) * (mid[xr] - mid[xl]) + (dn[xr] - dn[xl]);
              const T gy = (dn[xl] - up[xl]) + T(2) * (dn[x] - up[x]) + (dn[xr] - up[xr]);
              // |g| <= 4 max|pixel|: sqrt of the sum of squares cannot overflow for any image
              // whose pixels are below 1e18 (fp32) -- hypot's care costs 2x here for nothing
              acc_ += std::sqrt(gx * gx + gy * gy);
            }
            rowsum[pc] += acc_;
          }
        }
        const T cnt = static_cast<T>(patch * patch);
        for (int64_t pc = 0; pc < w; ++pc) ep[b * h * w + pr * w + pc] = rowsum[pc] / cnt;
      }
    });
    for (int64_t b = 0; b < B; ++b) {  // normalise per image: e / (max + 1e-6)
      T* eb = ep + b * h * w;
      T mx = eb[0];
      for (int64_t i = 1; i < h * w; ++i) mx = eb[i] > mx ? eb[i] : mx;
      const T den = mx + static_cast<T>(1e-6);
      for (int64_t i = 0; i < h * w; ++i) eb[i] = eb[i] / den;
    }
  });
  return e.to(at::kFloat);
}

// Step 7, mode "nearest", for one stage (python_ref.pipeline.reconstruct_stage, bit for bit):
// each pruned token i gets x_stage[i] + (full[j] - x_stage[keep_idx[j]]), j the kept
// non-protected token of highest cosine similarity at the stage (ties: the earlier j).
// The similarities come from the reference's own ATen ops on the same values (norm, one
// batched product); the gathers, the argmax and the output assembly are one pass each.
Tensor reconstruct_nearest_cpu(const Tensor& full_in, const Tensor& x_stage, const Tensor& keep_idx_in,
                               const Tensor& prune_idx_in, const Tensor& cluster_id_in) {
  TORCH_CHECK(full_in.dim() == 3 && x_stage.dim() == 3 && keep_idx_in.dim() == 2 && prune_idx_in.dim() == 2 &&
                  cluster_id_in.dim() == 2,
              "lvtp_cpp.reconstruct_nearest: full (B, K, C), x_stage (B, N, C), keep_idx/prune_idx/cluster_id 2-D");
  const int64_t B = full_in.size(0), K = full_in.size(1), C = full_in.size(2), N = x_stage.size(1);
  const int64_t P = prune_idx_in.size(1);
  TORCH_CHECK(x_stage.size(0) == B && x_stage.size(2) == C && keep_idx_in.size(0) == B && keep_idx_in.size(1) == K &&
                  prune_idx_in.size(0) == B && K + P == N && cluster_id_in.size(0) == B && cluster_id_in.size(1) == N,
              "lvtp_cpp.reconstruct_nearest: shapes disagree");
  TORCH_CHECK(K > 0 || P == 0, "lvtp_cpp.reconstruct_nearest: needs a kept token when tokens are pruned");
  const Tensor keep = keep_idx_in.to(at::kLong).contiguous(), prune = prune_idx_in.to(at::kLong).contiguous();
  const Tensor cid = cluster_id_in.to(at::kLong).contiguous();
  const Tensor full = full_in.contiguous();
  const Tensor xf = x_stage.to(full.scalar_type()).contiguous();  // the reference's x_stage.to(full.dtype)
  Tensor out = at::empty({B, N, C}, full.options());
  Tensor near = at::zeros({B, std::max<int64_t>(P, 1)}, keep.options());
  const int64_t* kp = keep.data_ptr<int64_t>();
  const int64_t* pp = prune.data_ptr<int64_t>();
  const int64_t* cp = cid.data_ptr<int64_t>();
  int64_t* np_ = near.data_ptr<int64_t>();
  if (P > 0) {
    const auto acc = at::promote_types(x_stage.scalar_type(), at::kFloat);
    const Tensor xa = x_stage.to(acc);
    const Tensor xn = (xa / at::linalg_vector_norm(xa, 2, at::IntArrayRef{-1}, true, c10::nullopt).clamp_min(1e-12))
                          .contiguous();
    Tensor kept = at::empty({B, K, C}, xn.options()), pruned = at::empty({B, P, C}, xn.options());
    AT_DISPATCH_FLOATING_TYPES(acc, "lvtp_cpp.reconstruct_nearest", [&] {
      const scalar_t* x = xn.data_ptr<scalar_t>();
      scalar_t* kd = kept.data_ptr<scalar_t>();
      scalar_t* pd = pruned.data_ptr<scalar_t>();
      at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          for (int64_t j = 0; j < K; ++j)
            std::copy_n(x + (b * N + kp[b * K + j]) * C, C, kd + (b * K + j) * C);
          for (int64_t i = 0; i < P; ++i)
            std::copy_n(x + (b * N + pp[b * P + i]) * C, C, pd + (b * P + i) * C);
        }
      });
      const Tensor sim = at::matmul(pruned, kept.transpose(1, 2)).contiguous();  // (B, P, K)
      const scalar_t* sp = sim.data_ptr<scalar_t>();
      at::parallel_for(0, B * P, 64, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t b = r / P;
          const scalar_t* row = sp + r * K;
          scalar_t best = -std::numeric_limits<scalar_t>::infinity();
          int64_t arg = 0;
          for (int64_t j = 0; j < K; ++j) {
            if (cp[b * N + kp[b * K + j]] < 0) continue;  // protected: never a source
            if (row[j] > best || (std::isnan(row[j]) && !std::isnan(best))) {
              best = row[j];
              arg = j;
            }
          }
          np_[r] = arg;
        }
      });
    });
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, full.scalar_type(), "lvtp_cpp.reconstruct_nearest", [&] {
    const scalar_t* f = full.data_ptr<scalar_t>();
    const scalar_t* x = xf.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t j = 0; j < K; ++j) std::copy_n(f + (b * K + j) * C, C, o + (b * N + kp[b * K + j]) * C);
        for (int64_t i = 0; i < P; ++i) {
          const int64_t j = np_[b * P + i];
          const scalar_t* xi = x + (b * N + pp[b * P + i]) * C;
          const scalar_t* fj = f + (b * K + j) * C;
          const scalar_t* xj = x + (b * N + kp[b * K + j]) * C;
          scalar_t* oi = o + (b * N + pp[b * P + i]) * C;
          for (int64_t t = 0; t < C; ++t) {
            const scalar_t r = fj[t] - xj[t];  // each op rounded to full's dtype, as the reference
            oi[t] = xi[t] + r;
          }
        }
      }
    });
  });
  return out;
}

// gather_tokens: out[b, j] = x[b, idx[b, j]], rows copied in parallel (exact).
Tensor gather_tokens_cpu(const Tensor& x_in, const Tensor& idx_in) {
  TORCH_CHECK(x_in.dim() == 3 && idx_in.dim() == 2 && idx_in.size(0) == x_in.size(0),
              "lvtp_cpp.gather_tokens: x (B, N, C) and idx (B, K) expected");
  const Tensor x = x_in.contiguous();
  const Tensor idx = idx_in.to(at::kLong).contiguous();
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2), K = idx.size(1);
  Tensor out = at::empty({B, K, C}, x.options());
  const int64_t* ip = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < B * K; ++i)
    TORCH_CHECK(ip[i] >= 0 && ip[i] < N, "lvtp_cpp.gather_tokens: index out of range [0, N)");
  const int64_t es = x.element_size();
  const char* xp = static_cast<const char*>(x.data_ptr());
  char* op = static_cast<char*>(out.data_ptr());
  at::parallel_for(0, B * K, std::max<int64_t>(1, 16384 / std::max<int64_t>(C * es, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      std::memcpy(op + r * C * es, xp + ((r / K) * N + ip[r]) * C * es, static_cast<size_t>(C * es));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lvtp_cpp, m) {
  m.def("attention_entropy(Tensor q, Tensor k, Tensor v, float[] qs, float scale) -> (Tensor out, Tensor ent)");
  m.def("patch_edge_energy(Tensor image, int patch) -> Tensor");
  m.def("gather_tokens(Tensor x, Tensor idx) -> Tensor");
  m.def("reconstruct_nearest(Tensor full, Tensor x_stage, Tensor keep_idx, Tensor prune_idx, Tensor cluster_id) -> Tensor");
}

TORCH_LIBRARY_IMPL(lvtp_cpp, CPU, m) {
  m.impl("attention_entropy", &attention_entropy_cpu);
  m.impl("patch_edge_energy", &patch_edge_energy_cpu);
  m.impl("reconstruct_nearest", &reconstruct_nearest_cpu);
  m.impl("gather_tokens", &gather_tokens_cpu);
}

}  // namespace lvtp
