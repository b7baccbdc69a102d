// lvtp_kernels._C.attention_entropy: the CPU kernel of spec step 1 (the "cpp" backend of
// torch.ops.lvtp.attention_entropy on CPU tensors).
//
//   attention_entropy(q, k, v, qs, scale) -> (out, ent)
//     q, k (B, H, N, D), v (B, H, N, Dv); fp16 / bf16 / fp32 / fp64 (converted to the
//     accumulation dtype: fp64 for fp64 q, else fp32); qs: a non-empty list of Tsallis orders
//     (1.0 = Shannon). out (B, H, N, Dv) = softmax(scale q k^T) v in q's dtype; ent
//     (B, N, len(qs)) float32, the head mean of each order's entropy normalised by its
//     maximum (the uniform row). == python_ref.attention_entropy to rounding (not bit for
//     bit: BLAS products and lane-split sums).
//
// The two matrix products go to ATen (BLAS), the softmax too; one fused pass per attention
// row then accumulates every order at once, reading the row twice from L1: max of the
// logits s and of p, then sum p (s - m), sum sqrt p, sum p^2, sum p^3 (other orders through
// exp(q ln p)). Shannon needs no log of p: with ln p = s - lse and lse = m - ln max(p),
// -sum p ln p = -ln max(p) - sum p (s - m), two non-negative terms. Orders within 0.25 of 1
// use the expm1 form, summed in fp64 (no cancellation near q = 1).
// Precision: accumulation in the compute dtype over 64-byte lanes combined in lane order.
// Determinism: tasks are (image, head, block of R query rows) with R a function of the
// shapes only (never of the thread count); per-head entropies are summed over heads in
// order afterwards. Results do not depend on the number of threads.
// Memory: a per-thread workspace of R x (2 N + Dv) values (R ~ 2^17 / N rows: the block's
// logits and probabilities stay in L2); the N x N maps are never held whole.
// Autograd: the tasks run below autograd (no graph; inputs may require grad).
// Limits: none beyond memory. Checks (raw-function misuse only): 4-D inputs, agreeing
// shapes, qs non-empty; messages start with "lvtp.attention_entropy".

#include "lvtp_cpu_kernel.h"  // first: light ATen headers

#include <ATen/core/LegacyTypeDispatch.h>

#include <ATen/ops/_softmax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace lvtp {

using at::Tensor;

namespace {

constexpr double kNearOne = 0.25;  // python_ref.ops.NEAR_ONE

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

}  // namespace

std::tuple<Tensor, Tensor> attention_entropy_cpu(const Tensor& q, const Tensor& k, const Tensor& v,
                                                 const std::vector<double>& qs, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "lvtp.attention_entropy: q, k, v must be 4-D");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(2) == k.size(2) && q.size(3) == k.size(3) &&
                  v.size(0) == q.size(0) && v.size(1) == q.size(1) && v.size(2) == q.size(2),
              "lvtp.attention_entropy: q, k, v shapes disagree");
  TORCH_CHECK(!qs.empty(), "lvtp.attention_entropy: qs is empty");
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
  AT_DISPATCH_FLOATING_TYPES(qa.scalar_type(), "lvtp.attention_entropy", [&] {
    at::parallel_for(0, B * H * nblk, 1, [&](int64_t t0, int64_t t1) {
      // Below autograd in every worker too (thread-local state does not follow the task):
      // the out= products into the workspaces would refuse an input that requires grad.
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
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

}  // namespace lvtp
