// Python bindings of the CPU kernels: the module lvtp_kernels._C (pybind11). No kernel code.
//
// Ops (plain functions, NOT torch ops; argument names and order as below):
//   kmeans(x, init, iters) -> (centroids, assign)                          select_cpu.cpp
//   select(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters,
//          iters, allocation) -> (keep_idx, prune_idx, cluster_id)          select_cpu.cpp
//   select_fast(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode,
//               clusters, iters, allocation, trace) -> [keep_idx, prune_idx, cluster_id, (trace)]
//                                                                           select_fast_cpu.cpp
//   attention_entropy(q, k, v, qs, scale) -> (out, ent)                    attention_cpu.cpp
//   patch_edge_energy(image, patch) -> e                                    edge_cpu.cpp
//   gather_tokens(x, idx) -> out                                            tokens_cpu.cpp
//   reconstruct_nearest(full, x_stage, keep_idx, prune_idx, cluster_id) -> out   tokens_cpu.cpp
// Shapes, dtypes, precision, determinism and limits: csrc/lvtp_ops.h and each kernel file.
//
// The only op namespace is torch.ops.lvtp, defined in Python; its dispatch policy (input
// validation, the LVTP_IMPL backend choice) calls these functions from lvtp_kernels/_ext.py.
// They are deliberately not dispatcher kernels of lvtp::op (CPU / CUDA keys): the dispatcher
// would pick such a kernel ahead of the Python composite that validates and applies LVTP_IMPL
// (and a wrapper at the Autograd key would be skipped under torch.inference_mode).
//
// Each call runs with the GIL released and below autograd (at::AutoDispatchBelowADInplaceOrView,
// what the dispatcher did for the former private ops): the ATen calls inside record no
// graph, and an out= product into a workspace is legal even when an input requires grad.
// A failed TORCH_CHECK raises RuntimeError("lvtp.<op>: ...").
//
// The only TU of the module that includes <torch/extension.h> (pybind11 + the Tensor caster).

#include <torch/extension.h>

#include <utility>

#include "lvtp_bind.h"
#include "lvtp_ops.h"

using lvtp_bind::BelowAutograd;

PYBIND11_MODULE(_C, m) {
  namespace py = pybind11;
  m.doc() = "lvtp compiled kernels (CPU): plain functions called by lvtp_kernels/_ext.py";
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  lvtp_bind::def_clustering<&lvtp::kmeans_cpu, &lvtp::select_cpu>(m, "CPU");
  m.def("select_fast", &BelowAutograd<&lvtp::select_fast_cpu>::call, py::arg("tokens"), py::arg("ent"),
        py::arg("edge"), py::arg("keep_ratio"), py::arg("num_protected"), py::arg("alpha"), py::arg("entropy_mode"),
        py::arg("clusters"), py::arg("iters"), py::arg("allocation"), py::arg("trace") = false, nogil,
        "The fast selection (float32, python_ref.fast) -> [keep_idx, prune_idx, cluster_id] (+ the trace).");
  m.def("attention_entropy", &BelowAutograd<&lvtp::attention_entropy_cpu>::call, py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("qs"), py::arg("scale"), nogil,
        "Softmax attention (B, H, N, Dv) in q's dtype and the (B, N, len(qs)) float32 entropies.");
  m.def("patch_edge_energy", &BelowAutograd<&lvtp::patch_edge_energy_cpu>::call, py::arg("image"),
        py::arg("patch"), nogil, "(B, 3, H, W) image -> (B, h*w) float32 Sobel edge energy per patch.");
  m.def("gather_tokens", &BelowAutograd<&lvtp::gather_tokens_cpu>::call, py::arg("x"), py::arg("idx"), nogil,
        "x (B, N, C), idx (B, K) -> (B, K, C), out[b, j] = x[b, idx[b, j]].");
  m.def("reconstruct_nearest", &BelowAutograd<&lvtp::reconstruct_nearest_cpu>::call, py::arg("full"),
        py::arg("x_stage"), py::arg("keep_idx"), py::arg("prune_idx"), py::arg("cluster_id"), nogil,
        "Step 7, mode 'nearest', for one stage -> (B, N, C) in full's dtype.");
}
