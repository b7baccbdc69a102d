// lvtp_kernels._C.gather_tokens and lvtp_kernels._C.reconstruct_nearest: the CPU kernels that
// move tokens (the "cpp" backends of torch.ops.lvtp.gather_tokens and of
// torch.ops.lvtp.reconstruct_stage with mode "nearest" on CPU tensors).
//
//   gather_tokens(x, idx) -> out
//     x (B, N, C) of any dtype (any strides), idx (B, K) of any integer dtype, every index in
//     [0, N) (checked: RuntimeError otherwise). out (B, K, C), out[b, j] = x[b, idx[b, j]]:
//     a row copy (memcpy), exact.
//   reconstruct_nearest(full, x_stage, keep_idx, prune_idx, cluster_id) -> out
//     Step 7, mode "nearest", for one stage (python_ref.pipeline.reconstruct_stage, bit for
//     bit). full (B, K, C) floating (fp16 / bf16 / fp32 / fp64): the final features of the
//     tokens kept at the stage, in keep_idx order; x_stage (B, N, C) floating; keep_idx
//     (B, K), prune_idx (B, N - K) and cluster_id (B, N) integer (cluster_id < 0: protected,
//     never a source). out (B, N, C) in full's dtype: kept positions get full; pruned token
//     i gets x_stage[i] + (full[j] - x_stage[keep_idx[j]]), j the kept non-protected token of
//     highest cosine similarity at the stage (ties: the earlier j; NaN counts as highest,
//     as torch.argmax). Needs K >= 1 when tokens are pruned.
//     Precision: similarities in float32 (float64 for fp64 x_stage) from the reference's own
//     ATen ops (norm, clamp_min(1e-12), one batched matmul); the residual arithmetic rounds
//     each operation to full's dtype, as the reference does.
//
// Determinism: gathers, the argmax and the output assembly are one pass each, split over
// images / rows only; no reductions across threads. Results do not depend on the thread
// count. Limits: none beyond memory. Messages start with "lvtp.gather_tokens" /
// "lvtp.reconstruct_nearest".

#include "lvtp_cpu_kernel.h"  // first: light ATen headers

#include <ATen/ops/empty.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/promote_types.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace lvtp {

using at::Tensor;

// gather_tokens: out[b, j] = x[b, idx[b, j]], rows copied in parallel (exact).
Tensor gather_tokens_cpu(const Tensor& x_in, const Tensor& idx_in) {
  TORCH_CHECK(x_in.dim() == 3 && idx_in.dim() == 2 && idx_in.size(0) == x_in.size(0),
              "lvtp.gather_tokens: x (B, N, C) and idx (B, K) expected");
  const Tensor x = x_in.contiguous();
  const Tensor idx = idx_in.to(at::kLong).contiguous();
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2), K = idx.size(1);
  Tensor out = at::empty({B, K, C}, x.options());
  const int64_t* ip = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < B * K; ++i)
    TORCH_CHECK(ip[i] >= 0 && ip[i] < N, "lvtp.gather_tokens: index out of range [0, N)");
  const int64_t es = x.element_size();
  const char* xp = static_cast<const char*>(x.data_ptr());
  char* op = static_cast<char*>(out.data_ptr());
  at::parallel_for(0, B * K, std::max<int64_t>(1, 16384 / std::max<int64_t>(C * es, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      std::memcpy(op + r * C * es, xp + ((r / K) * N + ip[r]) * C * es, static_cast<size_t>(C * es));
  });
  return out;
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
              "lvtp.reconstruct_nearest: full (B, K, C), x_stage (B, N, C), keep_idx/prune_idx/cluster_id 2-D");
  const int64_t B = full_in.size(0), K = full_in.size(1), C = full_in.size(2), N = x_stage.size(1);
  const int64_t P = prune_idx_in.size(1);
  TORCH_CHECK(x_stage.size(0) == B && x_stage.size(2) == C && keep_idx_in.size(0) == B && keep_idx_in.size(1) == K &&
                  prune_idx_in.size(0) == B && K + P == N && cluster_id_in.size(0) == B && cluster_id_in.size(1) == N,
              "lvtp.reconstruct_nearest: shapes disagree");
  TORCH_CHECK(K > 0 || P == 0, "lvtp.reconstruct_nearest: needs a kept token when tokens are pruned");
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
    AT_DISPATCH_FLOATING_TYPES(acc, "lvtp.reconstruct_nearest", [&] {
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, full.scalar_type(), "lvtp.reconstruct_nearest", [&] {
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

}  // namespace lvtp
