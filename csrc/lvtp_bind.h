// What the two binding files (bind_cpu.cpp -> lvtp_kernels._C, bind_cuda.cpp ->
// lvtp_kernels._C_cuda) share: kernels run below autograd, without the GIL, and the
// clustering entry points (kmeans, select) bound with the same names and arguments on
// both devices. Include after <torch/extension.h>.
#pragma once

#include <utility>

namespace lvtp_bind {

// Fn run below autograd: a plain function pointer whose signature pybind11 can read.
template <auto Fn>
struct BelowAutograd;

template <typename R, typename... A, R (*Fn)(A...)>
struct BelowAutograd<Fn> {
  static R call(A... a) {
    const at::AutoDispatchBelowADInplaceOrView guard;
    return Fn(std::forward<A>(a)...);
  }
};

// kmeans(x, init, iters) and select(tokens, ent, edge, keep_ratio, num_protected, alpha,
// entropy_mode, clusters, iters, allocation): the arguments of the lvtp ops, schema order.
template <auto Kmeans, auto Select>
void def_clustering(pybind11::module_& m, const char* device) {
  namespace py = pybind11;
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  const std::string on = std::string(" (") + device + ")";
  m.def("kmeans", &BelowAutograd<Kmeans>::call, py::arg("x"), py::arg("init"), py::arg("iters"), nogil,
        ("Batched Lloyd k-means: x (B, n, d), init (B, k, d) -> (centroids (B, k, d), assign (B, n) int64)" + on)
            .c_str());
  m.def("select", &BelowAutograd<Select>::call, py::arg("tokens"), py::arg("ent"), py::arg("edge"),
        py::arg("keep_ratio"), py::arg("num_protected"), py::arg("alpha"), py::arg("entropy_mode"),
        py::arg("clusters"), py::arg("iters"), py::arg("allocation"), nogil,
        ("Steps 2, 4, 5 -> (keep_idx (B, P+K) int64, prune_idx (B, N-P-K) int64, cluster_id (B, N) int32); "
         "allocation 'ranked' | 'proportional'" + on).c_str());
}

}  // namespace lvtp_bind
