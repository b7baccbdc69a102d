// lvtp_kernels._C_cuda: the ATen glue and the Python bindings (pybind11) of the CUDA
// clustering kernels (csrc/kmeans_cuda.cu, csrc/select_cuda.cu). Standalone: it needs
// neither lvtp_kernels._C nor any registered op.
//
//   kmeans(x, init, iters) -> (centroids, assign)
//     x (B, n, d), init (B, k, d) on one CUDA device, 1 <= k <= n, iters >= 1, any floating
//     dtypes; centroids (B, k, d) float32 (float64 for fp64 x), assign (B, n) int64.
//   select(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters,
//          iters, allocation) -> (keep_idx, prune_idx, cluster_id)
//     tokens (B, N, C) fp16 / bf16 / fp32 / fp64, ent (B, N, Q) floating with 1 <= Q <= 64,
//     edge (B, N) or None, all on one CUDA device; allocation "ranked" | "proportional".
//     keep_idx (B, P+K) int64, prune_idx (B, N-P-K) int64, cluster_id (B, N) int32.
//   select_fast(..., allocation, trace=False) -> [keep_idx, prune_idx, cluster_id] (+ the six
//     trace tensors of python_ref.fast.FastTrace): precision="fast" in one launch
//     (csrc/select_fast_cuda.cu); select_fast_supported(n, C, k) -> bool (its limits).
// Same arguments, outputs and (on finite inputs) the same indices as lvtp_kernels._C's
// kmeans / select; precision, determinism and limits of the kernels: csrc/lvtp_cuda.h.
//
// Glue: inputs are converted once (fp16 / bf16 -> fp32, exact; contiguous); ent and edge go
// to fp64 if either is fp64. Scratch buffers are ATen allocations on the input's device;
// the kernels run on the current stream of that device (no synchronisation here); every
// launcher's cudaError_t is checked (RuntimeError "lvtp.<op>: CUDA error: ...").
// Plain functions, not dispatcher kernels of lvtp::op: see csrc/bind_cpu.cpp. Each
// call runs with the GIL released and below autograd. The only TU of the module that
// includes <torch/extension.h>.

#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "lvtp_bind.h"
#include "lvtp_common.h"
#include "lvtp_cuda.h"
#include "lvtp_fmt.h"

namespace lvtp {
namespace {

using at::Tensor;

#define LVTP_CUDA_CHECK(expr, what)                                                                   \
  do {                                                                                                \
    const cudaError_t err_ = (expr);                                                                  \
    TORCH_CHECK(err_ == cudaSuccess, lvtp::fmt("lvtp.", what, ": CUDA error: ", cudaGetErrorString(err_))); \
  } while (0)

std::tuple<Tensor, Tensor> kmeans_cuda(const Tensor& x_in, const Tensor& init, int64_t iters) {
  TORCH_CHECK(x_in.dim() == 3 && init.dim() == 3, "lvtp.kmeans: x (B, n, d) and init (B, k, d) expected");
  TORCH_CHECK(x_in.size(0) == init.size(0) && x_in.size(2) == init.size(2),
              lvtp::fmt("lvtp.kmeans: x ", x_in.sizes(), " and init ", init.sizes(), " disagree on B or d"));
  TORCH_CHECK(init.size(1) >= 1 && init.size(1) <= x_in.size(1), "lvtp.kmeans: need 1 <= k <= n");
  TORCH_CHECK(iters >= 1, "lvtp.kmeans: iters must be >= 1");
  TORCH_CHECK(x_in.is_cuda() && init.device() == x_in.device(), "lvtp.kmeans: x and init on one CUDA device");
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

// The argument checks both CUDA selections share; returns the allocation code.
int check_select_args(const Tensor& tokens, const Tensor& ent, const std::optional<Tensor>& edge, double keep_ratio,
                      int64_t num_protected, const std::string& entropy_mode, int64_t clusters, int64_t iters,
                      const std::string& allocation_name) {
  const int allocation = allocation_from_name(allocation_name);
  TORCH_CHECK(allocation >= 0, lvtp::fmt("lvtp.select: allocation must be 'ranked' or 'proportional', got '",
              allocation_name, "'"));
  TORCH_CHECK(tokens.dim() == 3, "lvtp.select: tokens must be (B, N, C)");
  TORCH_CHECK(ent.dim() == 3 && ent.size(0) == tokens.size(0) && ent.size(1) == tokens.size(1),
              "lvtp.select: ent must be (B, N, Q) like tokens");
  TORCH_CHECK(ent.size(2) >= 1 && ent.size(2) <= 64, "lvtp.select (CUDA): 1 <= Q <= 64 orders");
  TORCH_CHECK(tokens.is_cuda() && ent.device() == tokens.device(), "lvtp.select: one CUDA device");
  if (edge.has_value())
    TORCH_CHECK(edge->dim() == 2 && edge->size(0) == tokens.size(0) && edge->size(1) == tokens.size(1) &&
                    edge->device() == tokens.device(),
                "lvtp.select: edge must be (B, N) on the tokens' device");
  TORCH_CHECK(keep_ratio > 0.0 && keep_ratio <= 1.0, "lvtp.select: keep_ratio must be in (0, 1]");
  TORCH_CHECK(num_protected >= 0 && num_protected < tokens.size(1), "lvtp.select: num_protected in [0, N-1]");
  TORCH_CHECK(entropy_mode == "low" || entropy_mode == "high", "lvtp.select: entropy_mode 'low' or 'high'");
  TORCH_CHECK(clusters >= 1 && iters >= 1, "lvtp.select: clusters and iters must be >= 1");
  return allocation;
}

std::tuple<Tensor, Tensor, Tensor> select_cuda(const Tensor& tokens_in, const Tensor& ent_in,
                                                const std::optional<Tensor>& edge_in, double keep_ratio,
                                                int64_t num_protected, double alpha, const std::string& entropy_mode,
                                                int64_t clusters, int64_t iters, const std::string& allocation_name) {
  const int allocation = check_select_args(tokens_in, ent_in, edge_in, keep_ratio, num_protected, entropy_mode,
                                           clusters, iters, allocation_name);
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

// select_fast(..., trace): one launch of csrc/select_fast_cuda.cu. Tokens are read in place
// (any strides; fp16 / bf16 / fp32 / fp64), ent / edge converted to fp32 (small); the scratch
// is one byte tensor. No synchronisation: the call captures in a CUDA graph.
bool select_fast_supported_cuda(int64_t n, int64_t C, int64_t k) {
  int dev = 0, optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    optin = 48 * 1024;
  }
  return cuda::select_fast_fits(n, C, k, optin);
}

std::vector<Tensor> select_fast_cuda(const Tensor& tokens, const Tensor& ent_in, const std::optional<Tensor>& edge_in,
                                     double keep_ratio, int64_t num_protected, double alpha,
                                     const std::string& entropy_mode, int64_t clusters, int64_t iters,
                                     const std::string& allocation_name, bool trace) {
  const int allocation = check_select_args(tokens, ent_in, edge_in, keep_ratio, num_protected, entropy_mode,
                                           clusters, iters, allocation_name);
  int kind = -1;
  switch (tokens.scalar_type()) {
    case at::kFloat: kind = cuda::kTokF32; break;
    case at::kHalf: kind = cuda::kTokF16; break;
    case at::kBFloat16: kind = cuda::kTokBF16; break;
    case at::kDouble: kind = cuda::kTokF64; break;
    default: TORCH_CHECK(false, lvtp::fmt("lvtp.select: tokens must be floating, got ", c10::toString(tokens.scalar_type())));
  }
  const c10::cuda::CUDAGuard guard(tokens.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(tokens.device().index()).stream();
  const int64_t B = tokens.size(0), N = tokens.size(1), C = tokens.size(2), Q = ent_in.size(2);
  const int64_t P = num_protected, n = N - P, K = budget(N, P, keep_ratio), k = std::min(clusters, n);
  TORCH_CHECK(select_fast_supported_cuda(n, C, k),
              lvtp::fmt("lvtp.select (fast, CUDA): n = ", n, ", C = ", C, ", k = ", k,
                        " is beyond the fused kernel's limits (select_fast_supported)"));
  const Tensor ent = ent_in.to(at::kFloat).contiguous();
  Tensor edge;
  if (edge_in.has_value()) edge = edge_in->to(at::kFloat).contiguous();
  const auto i64 = tokens.options().dtype(at::kLong), f32 = tokens.options().dtype(at::kFloat);
  Tensor scratch = at::empty({static_cast<int64_t>(cuda::select_fast_scratch_bytes(B, n, k, C))},
                             tokens.options().dtype(at::kByte));
  Tensor keep_idx = at::empty({B, P + K}, i64), prune_idx = at::empty({B, n - K}, i64);
  Tensor cluster_id = at::empty({B, N}, tokens.options().dtype(at::kInt));
  std::vector<Tensor> out{keep_idx, prune_idx, cluster_id};
  cuda::FastTrace tr;
  if (trace) {
    out.push_back(at::empty({B, n}, f32));
    out.push_back(at::empty({B, k}, i64));
    out.push_back(at::empty({B, iters + 1, k, C}, f32));
    out.push_back(at::empty({B, iters + 1, n}, i64));
    out.push_back(at::empty({B, k}, i64));
    out.push_back(at::empty({B, k}, i64));
    tr.u = out[3].data_ptr<float>();
    tr.init_idx = out[4].data_ptr<int64_t>();
    tr.centroids = out[5].data_ptr<float>();
    tr.assign = out[6].data_ptr<int64_t>();
    tr.split = out[7].data_ptr<int64_t>();
    tr.rep = out[8].data_ptr<int64_t>();
  }
  LVTP_CUDA_CHECK(cuda::select_fast(tokens.data_ptr(), kind, tokens.stride(0), tokens.stride(1), tokens.stride(2),
                                    ent.data_ptr<float>(), edge.defined() ? edge.data_ptr<float>() : nullptr, B, N,
                                    C, Q, P, K, k, iters, alpha, entropy_mode == "low", allocation,
                                    scratch.data_ptr(), tr, keep_idx.data_ptr<int64_t>(),
                                    prune_idx.data_ptr<int64_t>(), cluster_id.data_ptr<int32_t>(), stream),
                  "select");
  return out;
}

}  // namespace
}  // namespace lvtp


PYBIND11_MODULE(_C_cuda, m) {
  namespace py = pybind11;
  m.doc() = "lvtp compiled kernels (CUDA): plain functions called by lvtp_kernels/_ext.py";
  lvtp_bind::def_clustering<&lvtp::kmeans_cuda, &lvtp::select_cuda>(m, "CUDA");
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("select_fast", &lvtp_bind::BelowAutograd<&lvtp::select_fast_cuda>::call, py::arg("tokens"), py::arg("ent"),
        py::arg("edge"), py::arg("keep_ratio"), py::arg("num_protected"), py::arg("alpha"), py::arg("entropy_mode"),
        py::arg("clusters"), py::arg("iters"), py::arg("allocation"), py::arg("trace") = false, nogil,
        "The fast selection in one launch (csrc/select_fast_cuda.cu) -> [keep_idx, prune_idx, cluster_id] "
        "(+ the trace).");
  m.def("select_fast_supported", &lvtp::select_fast_supported_cuda, py::arg("n"), py::arg("C"), py::arg("k"),
        "Whether select_fast takes n = N - P tokens of width C in k clusters on the current device.");
}
