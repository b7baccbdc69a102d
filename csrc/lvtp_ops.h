// The CPU kernels of lvtp_kernels._C, as plain C++ functions (bound by csrc/bind_cpu.cpp).
//
// Ops and where they live (one .cpp per op family):
//   kmeans_cpu, select_cpu       csrc/select_cpu.cpp     spec steps 2, 4, 5 (+ the k-means of 5.1)
//   select_fast_cpu              csrc/select_fast_cpu.cpp  the same in float32 (python_ref/fast.py)
//   attention_entropy_cpu        csrc/attention_cpu.cpp  spec step 1
//   patch_edge_energy_cpu        csrc/edge_cpu.cpp       spec step 3
//   gather_tokens_cpu,
//   reconstruct_nearest_cpu      csrc/tokens_cpu.cpp     the gather of step 6, step 7 "nearest"
//
// Shapes, dtypes and limits are in each function's comment below and each file's header.
// These functions are NOT torch ops: the only op namespace is torch.ops.lvtp, defined in
// Python (lvtp_kernels/registry.py); its dispatch policy validates the inputs and then calls
// these kernels through lvtp_kernels/_ext.py. The TORCH_CHECKs inside only guard the raw
// functions against misuse (wrong ranks / shapes) and raise RuntimeError("lvtp.<op>: ...").
// Every kernel is deterministic: results do not depend on the thread count.
//
// Only light headers here (ATen/core/Tensor.h), so that the kernel TUs stay cheap to compile.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace lvtp {

// x (B, n, d), init (B, k, d), 1 <= k <= n, iters >= 1, any floating dtypes.
// -> centroids (B, k, d) float32 (float64 if x is float64), assign (B, n) int64.
// == python_ref.kmeans (assignments equal up to near-ties of the distances).
std::tuple<at::Tensor, at::Tensor> kmeans_cpu(const at::Tensor& x, const at::Tensor& init, int64_t iters);

// tokens (B, N, C) fp16/bf16/fp32/fp64, ent (B, N, Q) floating, edge (B, N) or nullopt;
// keep_ratio in (0, 1], num_protected P in [0, N-1], entropy_mode "low" | "high",
// clusters, iters >= 1, allocation "ranked" (spec step 5.3) | "proportional".
// -> keep_idx (B, P+K) int64, prune_idx (B, N-P-K) int64 (both ascending),
//    cluster_id (B, N) int32 (-1 for protected tokens); K = budget(N, P, keep_ratio).
// == python_ref.select_tokens bit for bit (all selection arithmetic in float64).
std::tuple<at::Tensor, at::Tensor, at::Tensor> select_cpu(const at::Tensor& tokens, const at::Tensor& ent,
                                                          const std::optional<at::Tensor>& edge, double keep_ratio,
                                                          int64_t num_protected, double alpha,
                                                          const std::string& entropy_mode, int64_t clusters,
                                                          int64_t iters, const std::string& allocation);

// The fast selection (python_ref.fast.select_fast): the arguments of select_cpu and trace.
// -> [keep_idx, prune_idx, cluster_id] as select_cpu, and with trace the FastTrace fields
//    [u, init_idx, centroids, assign, split, rep]. Float32 features; equal to
//    python_ref.fast.select_fast except at near-ties.
std::vector<at::Tensor> select_fast_cpu(const at::Tensor& tokens, const at::Tensor& ent,
                                        const std::optional<at::Tensor>& edge, double keep_ratio,
                                        int64_t num_protected, double alpha, const std::string& entropy_mode,
                                        int64_t clusters, int64_t iters, const std::string& allocation, bool trace);

// q, k (B, H, N, D), v (B, H, N, Dv), floating; qs non-empty Tsallis orders (1 = Shannon).
// -> out (B, H, N, Dv) in q's dtype, ent (B, N, len(qs)) float32 (head-mean normalised).
// == python_ref.attention_entropy to rounding.
std::tuple<at::Tensor, at::Tensor> attention_entropy_cpu(const at::Tensor& q, const at::Tensor& k,
                                                         const at::Tensor& v, const std::vector<double>& qs,
                                                         double scale);

// image (B, 3, H, W) floating, patch in [1, min(H, W)] -> (B, (H/patch)*(W/patch)) float32.
// == python_ref.patch_edge_energy to rounding.
at::Tensor patch_edge_energy_cpu(const at::Tensor& image, int64_t patch);

// x (B, N, C) any dtype, idx (B, K) integer in [0, N) -> (B, K, C), out[b, j] = x[b, idx[b, j]].
at::Tensor gather_tokens_cpu(const at::Tensor& x, const at::Tensor& idx);

// full (B, K, C) floating, x_stage (B, N, C), keep_idx (B, K), prune_idx (B, N-K),
// cluster_id (B, N) -> (B, N, C) in full's dtype.
// == python_ref.reconstruct_stage(..., mode="nearest") bit for bit.
at::Tensor reconstruct_nearest_cpu(const at::Tensor& full, const at::Tensor& x_stage, const at::Tensor& keep_idx,
                                   const at::Tensor& prune_idx, const at::Tensor& cluster_id);

}  // namespace lvtp
