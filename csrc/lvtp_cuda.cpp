// ATen glue of the CUDA clustering ops: CUDA impls of lvtp_cpp::kmeans / select / select_tokens
// (schemas defined in lvtp_cpu.cpp, module lvtp_kernels._C, which must load first).
//
// Inputs are converted once (fp16/bf16 -> fp32, contiguous); kernels run on the current
// stream; every launcher's cudaError_t is checked.

#include <Python.h>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>

#include "lvtp_common.h"
#include "lvtp_fmt.h"
#include "lvtp_cuda.h"

extern "C" PyObject* PyInit__C_cuda(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_cuda", "lvtp compiled ops (CUDA)", -1, nullptr};
  return PyModule_Create(&module_def);
}

namespace lvtp {
namespace {

using at::Tensor;

#define LVTP_CUDA_CHECK(expr, what)                                                                   \
  do {                                                                                                \
    const cudaError_t err_ = (expr);                                                                  \
    TORCH_CHECK(err_ == cudaSuccess, lvtp::fmt("lvtp_cpp.", what, ": CUDA error: ", cudaGetErrorString(err_))); \
  } while (0)

std::tuple<Tensor, Tensor> kmeans_cuda(const Tensor& x_in, const Tensor& init, int64_t iters) {
  TORCH_CHECK(x_in.dim() == 3 && init.dim() == 3, "lvtp_cpp.kmeans: x (B, n, d) and init (B, k, d) expected");
  TORCH_CHECK(x_in.size(0) == init.size(0) && x_in.size(2) == init.size(2),
              lvtp::fmt("lvtp_cpp.kmeans: x ", x_in.sizes(), " and init ", init.sizes(), " disagree on B or d"));
  TORCH_CHECK(init.size(1) >= 1 && init.size(1) <= x_in.size(1), "lvtp_cpp.kmeans: need 1 <= k <= n");
  TORCH_CHECK(iters >= 1, "lvtp_cpp.kmeans: iters must be >= 1");
  TORCH_CHECK(x_in.is_cuda() && init.device() == x_in.device(), "lvtp_cpp.kmeans: x and init on one CUDA device");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto acc = x_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor x = x_in.to(acc).contiguous();
  Tensor c = init.to(acc).clone(at::MemoryFormat::Contiguous);
  const int64_t B = x.size(0), n = x.size(1), d = x.size(2), k = c.size(1);
  Tensor assign = at::empty({B, n}, x.options().dtype(at::kLong));
  Tensor members = at::empty({B * k * n}, x.options().dtype(at::kInt));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  if (acc == at::kDouble)
    LVTP_CUDA_CHECK(cuda::kmeans_f64(x.data_ptr<double>(), n * d, B, n, d, c.data_ptr<double>(), k, iters,
                                     assign.data_ptr<int64_t>(), members.data_ptr<int32_t>(), stream),
                    "kmeans");
  else
    LVTP_CUDA_CHECK(cuda::kmeans_f32(x.data_ptr<float>(), n * d, B, n, d, c.data_ptr<float>(), k, iters,
                                     assign.data_ptr<int64_t>(), members.data_ptr<int32_t>(), stream),
                    "kmeans");
  return {c, assign};
}

std::tuple<Tensor, Tensor, Tensor> select_tokens_cuda(const Tensor& tokens_in, const Tensor& ent_in,
                                                      const std::optional<Tensor>& edge_in, double keep_ratio,
                                                      int64_t num_protected, double alpha,
                                                      c10::string_view entropy_mode, int64_t clusters, int64_t iters,
                                                      c10::string_view allocation_name) {
  const int allocation = allocation_from_name(allocation_name);
  TORCH_CHECK(allocation >= 0, lvtp::fmt("lvtp_cpp.select_tokens: allocation must be 'ranked' or 'proportional', got '",
              std::string(allocation_name.data(), allocation_name.size()), "'"));
  TORCH_CHECK(tokens_in.dim() == 3, "lvtp_cpp.select: tokens must be (B, N, C)");
  TORCH_CHECK(ent_in.dim() == 3 && ent_in.size(0) == tokens_in.size(0) && ent_in.size(1) == tokens_in.size(1),
              "lvtp_cpp.select: ent must be (B, N, Q) like tokens");
  TORCH_CHECK(ent_in.size(2) >= 1 && ent_in.size(2) <= 64, "lvtp_cpp.select (CUDA): 1 <= Q <= 64 orders");
  TORCH_CHECK(tokens_in.is_cuda() && ent_in.device() == tokens_in.device(), "lvtp_cpp.select: one CUDA device");
  if (edge_in.has_value())
    TORCH_CHECK(edge_in->dim() == 2 && edge_in->size(0) == tokens_in.size(0) &&
                    edge_in->size(1) == tokens_in.size(1) && edge_in->device() == tokens_in.device(),
                "lvtp_cpp.select: edge must be (B, N) on the tokens' device");
  TORCH_CHECK(keep_ratio > 0.0 && keep_ratio <= 1.0, "lvtp_cpp.select: keep_ratio must be in (0, 1]");
  TORCH_CHECK(num_protected >= 0 && num_protected < tokens_in.size(1), "lvtp_cpp.select: num_protected in [0, N-1]");
  TORCH_CHECK(entropy_mode == "low" || entropy_mode == "high", "lvtp_cpp.select: entropy_mode 'low' or 'high'");
  TORCH_CHECK(clusters >= 1 && iters >= 1, "lvtp_cpp.select: clusters and iters must be >= 1");
  const c10::cuda::CUDAGuard guard(tokens_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(tokens_in.device().index()).stream();

  const int64_t B = tokens_in.size(0), N = tokens_in.size(1), C = tokens_in.size(2), Q = ent_in.size(2);
  const int64_t P = num_protected, n = N - P, K = budget(N, P, keep_ratio), k = std::min(clusters, n);
  // fp16 / bf16 / fp32 -> fp32 (exact), fp64 stays: the kernels widen to fp64 themselves.
  const bool f64 = tokens_in.scalar_type() == at::kDouble;
  const Tensor tokens = tokens_in.to(f64 ? at::kDouble : at::kFloat).contiguous();
  // ent / edge: float64 if either is (fp32 -> fp64 is exact), else fp32
  const bool e64 = ent_in.scalar_type() == at::kDouble ||
                   (edge_in.has_value() && edge_in->scalar_type() == at::kDouble);
  const auto et = e64 ? at::kDouble : at::kFloat;
  const Tensor ent = ent_in.to(et).contiguous();
  Tensor edge;
  if (edge_in.has_value()) edge = edge_in->to(et).contiguous();

  const auto dopt = tokens.options().dtype(at::kDouble);
  const auto iopt = tokens.options().dtype(at::kInt);
  const auto bopt = tokens.options().dtype(at::kByte);
  Tensor u = at::empty({B, n}, dopt), rownorm = at::empty({B, n}, dopt), cent = at::empty({B, k, C}, dopt);
  Tensor s1 = at::empty({B, n}, dopt), s2 = at::empty({B, n}, dopt);
  Tensor desc = at::empty({B, n}, iopt), asc = at::empty({B, n}, iopt), seg = at::empty({B, n}, iopt);
  Tensor starts = at::empty({B, k + 1}, iopt), members = at::empty({B * k * n}, iopt);
  Tensor cls = at::empty({B, n}, bopt), keep = at::empty({B, n}, bopt);
  Tensor assign = at::empty({B, n}, tokens.options().dtype(at::kLong));
  Tensor keep_idx = at::empty({B, P + K}, tokens.options().dtype(at::kLong));
  Tensor prune_idx = at::empty({B, n - K}, tokens.options().dtype(at::kLong));
  Tensor cluster_id = at::empty({B, N}, iopt);

  const bool low = entropy_mode == "low";
  const cuda::SelectScratch scratch{u.data_ptr<double>(),      rownorm.data_ptr<double>(), cent.data_ptr<double>(),
                                    s1.data_ptr<double>(),     s2.data_ptr<double>(),      desc.data_ptr<int32_t>(),
                                    asc.data_ptr<int32_t>(),   seg.data_ptr<int32_t>(),    starts.data_ptr<int32_t>(),
                                    members.data_ptr<int32_t>(), cls.data_ptr<uint8_t>(),  keep.data_ptr<uint8_t>(),
                                    assign.data_ptr<int64_t>()};
  int64_t* ki = keep_idx.data_ptr<int64_t>();
  int64_t* pi = prune_idx.data_ptr<int64_t>();
  int32_t* ci = cluster_id.data_ptr<int32_t>();
  auto run = [&](const auto* x, const auto* e, const auto* ed) {
    LVTP_CUDA_CHECK(cuda::select_tokens(x, e, ed, B, N, C, Q, P, K, k, iters, alpha, low, allocation, scratch, ki, pi,
                                        ci, stream),
                    "select");
  };
  if (f64 && e64)
    run(tokens.data_ptr<double>(), ent.data_ptr<double>(), edge.defined() ? edge.data_ptr<double>() : nullptr);
  else if (f64)
    run(tokens.data_ptr<double>(), ent.data_ptr<float>(), edge.defined() ? edge.data_ptr<float>() : nullptr);
  else if (e64)
    run(tokens.data_ptr<float>(), ent.data_ptr<double>(), edge.defined() ? edge.data_ptr<double>() : nullptr);
  else
    run(tokens.data_ptr<float>(), ent.data_ptr<float>(), edge.defined() ? edge.data_ptr<float>() : nullptr);
  return {keep_idx, prune_idx, cluster_id};
}

// select == select_tokens with the spec's "ranked" allocation.
std::tuple<Tensor, Tensor, Tensor> select_cuda(const Tensor& tokens_in, const Tensor& ent_in,
                                               const std::optional<Tensor>& edge_in, double keep_ratio,
                                               int64_t num_protected, double alpha, c10::string_view entropy_mode,
                                               int64_t clusters, int64_t iters) {
  return select_tokens_cuda(tokens_in, ent_in, edge_in, keep_ratio, num_protected, alpha, entropy_mode, clusters,
                            iters, "ranked");
}

}  // namespace
}  // namespace lvtp

TORCH_LIBRARY_IMPL(lvtp_cpp, CUDA, m) {
  m.impl("kmeans", &lvtp::kmeans_cuda);
  m.impl("select", &lvtp::select_cuda);
  m.impl("select_tokens", &lvtp::select_tokens_cuda);
}
