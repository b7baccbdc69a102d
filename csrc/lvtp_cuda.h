// Launchers of the lvtp CUDA kernels (csrc/kmeans_cuda.cu, csrc/select_cuda.cu,
// csrc/select_fast_cuda.cu), called by
// the ATen glue of lvtp_kernels._C_cuda (csrc/bind_cuda.cpp) and, for the host, by the simt
// emulator's harness (tests/simt/harness.cc).
//
// Ops: the batched k-means (kmeans_*) and the selection steps 2, 4, 5 (importance_*,
// row_norms_*, rank_init_*, select_finish, select_tokens). Shapes and dtypes per function
// below (fp32 / fp64 inputs; fp16 / bf16 are converted to fp32 by the glue).
// Precision: k-means accumulates in the centroid dtype (fp32, or fp64 for fp64 rows and for
// select's normalised rows); the selection is float64 throughout with explicitly rounded
// operations. Determinism: no atomics, fixed reduction orders; same outputs on every run.
// Limits: Q <= 64 orders; B, k <= 65535; n <= INT32_MAX; dynamic shared memory for the
// centroids up to the device's opt-in limit (else global memory) -- see each .cu file.
//
// Plain CUDA runtime interface: raw device pointers, a stream, a cudaError_t back
// (cudaSuccess, or the first launch / argument error). No ATen or torch headers, so the
// .cu files compile with nvcc alone (scripts/check_cuda_compile.sh). Every pointer is
// to contiguous device memory; shapes are in elements.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace lvtp {
namespace cuda {

// ----------------------------------------------------------------------------- kmeans
// Batched Lloyd k-means (spec step 5.1) on rows
//   x_b[i, :] = x[b * x_bstride + i * d + (0..d-1)]            (rownorm == nullptr)
//   x_b[i, :] = x[...] / rownorm[b * n + i]  (in the accumulation type, for select)
// c (B, k, d): initial centroids in, final centroids out. assign (B, n) int64 out.
// members: scratch of B * k * n int32. Deterministic: no float atomics; each centroid
// is summed by one block over its members in index order.
cudaError_t kmeans_f32(const float* x, int64_t x_bstride, int64_t B, int64_t n, int64_t d, float* c, int64_t k,
                       int64_t iters, int64_t* assign, int32_t* members, cudaStream_t stream);
cudaError_t kmeans_f64(const double* x, int64_t x_bstride, int64_t B, int64_t n, int64_t d, double* c, int64_t k,
                       int64_t iters, int64_t* assign, int32_t* members, cudaStream_t stream);
// float rows divided by a float64 row norm, accumulated in float64 (select's features)
cudaError_t kmeans_rows_f32_f64(const float* x, int64_t x_bstride, const double* rownorm, int64_t B, int64_t n,
                                int64_t d, double* c, int64_t k, int64_t iters, int64_t* assign, int32_t* members,
                                cudaStream_t stream);
cudaError_t kmeans_rows_f64_f64(const double* x, int64_t x_bstride, const double* rownorm, int64_t B, int64_t n,
                                int64_t d, double* c, int64_t k, int64_t iters, int64_t* assign, int32_t* members,
                                cudaStream_t stream);

// ----------------------------------------------------------------------------- select
// Steps 2 and 4: u (B, N - P) float64 of the non-protected tokens from ent (B, N, Q) and
// the optional edge (B, N) (nullptr: none). Q <= 64.
cudaError_t importance_f32(const float* ent, const float* edge, int64_t B, int64_t N, int64_t Q, int64_t P,
                           double alpha, bool low, double* u, cudaStream_t stream);
cudaError_t importance_f64(const double* ent, const double* edge, int64_t B, int64_t N, int64_t Q, int64_t P,
                           double alpha, bool low, double* u, cudaStream_t stream);

// rownorm[b, i] = max(||x_b[i, :]||_2, 1e-12) in float64, rows as in kmeans above.
cudaError_t row_norms_f32(const float* x, int64_t x_bstride, int64_t B, int64_t n, int64_t d, double* rownorm,
                          cudaStream_t stream);
cudaError_t row_norms_f64(const double* x, int64_t x_bstride, int64_t B, int64_t n, int64_t d, double* rownorm,
                          cudaStream_t stream);

// Ranks of u (B, n): desc_order / asc_order (B, n) int32 = token indices sorted by u
// descending / ascending, ties by lower index; then the initial centroids
// c[b, r, :] = x_b[desc_order[b, floor(r * n / k)], :] (k = min(clusters, n)).
cudaError_t rank_init_f32(const double* u, const float* x, int64_t x_bstride, const double* rownorm, int64_t B,
                          int64_t n, int64_t d, int64_t k, int32_t* desc_order, int32_t* asc_order, double* c,
                          cudaStream_t stream);
cudaError_t rank_init_f64(const double* u, const double* x, int64_t x_bstride, const double* rownorm, int64_t B,
                          int64_t n, int64_t d, int64_t k, int32_t* desc_order, int32_t* asc_order, double* c,
                          cudaStream_t stream);

// Steps 5.2 and 5.3 from u, the cluster assignment and the two orders: keep_idx
// (B, P + K), prune_idx (B, n - K) int64 ascending, cluster_id (B, P + n) int32.
// allocation: kAllocRanked (step 5.3, select) or kAllocProportional (per-cluster quotas
// of python_ref.proportional_quotas, lvtp_common.h); any other -> cudaErrorInvalidValue.
// Scratch: seg (B*n) int32, starts (B*(k+1)) int32, cls and keep (B*n) uint8,
// s1 and s2 (B*n) float64.
cudaError_t select_finish(const double* u, const int64_t* assign, const int32_t* desc_order,
                          const int32_t* asc_order, int64_t B, int64_t n, int64_t k, int64_t P, int64_t K,
                          int allocation, int32_t* seg, int32_t* starts, uint8_t* cls, uint8_t* keep, double* s1,
                          double* s2, int64_t* keep_idx, int64_t* prune_idx, int32_t* cluster_id,
                          cudaStream_t stream);

// ----------------------------------------------------------------------------- select, whole
// Steps 2, 4, 5 end to end (the launch sequence of lvtp_kernels._C_cuda.select):
// importance, row norms, ranks and initial centroids, k-means on the normalised rows, then
// select_finish. tokens (B, N, C), ent (B, N, Q) and edge (B, N) (nullptr: none) contiguous;
// k = min(clusters, N - P), K = budget(N, P, keep_ratio). Outputs as select_finish.
struct SelectScratch {  // device buffers, n = N - P; sizes in elements
  double* u;          // B * n
  double* rownorm;    // B * n
  double* centroids;  // B * k * C
  double* s1;         // B * n
  double* s2;         // B * n
  int32_t* desc;      // B * n
  int32_t* asc;       // B * n
  int32_t* seg;       // B * n
  int32_t* starts;    // B * (k + 1)
  int32_t* members;   // B * k * n
  uint8_t* cls;       // B * n
  uint8_t* keep;      // B * n
  int64_t* assign;    // B * n
};
cudaError_t select_tokens(const float* tokens, const float* ent, const float* edge, int64_t B, int64_t N, int64_t C,
                          int64_t Q, int64_t P, int64_t K, int64_t k, int64_t iters, double alpha, bool low,
                          int allocation, const SelectScratch& s, int64_t* keep_idx, int64_t* prune_idx,
                          int32_t* cluster_id, cudaStream_t stream);
cudaError_t select_tokens(const float* tokens, const double* ent, const double* edge, int64_t B, int64_t N, int64_t C,
                          int64_t Q, int64_t P, int64_t K, int64_t k, int64_t iters, double alpha, bool low,
                          int allocation, const SelectScratch& s, int64_t* keep_idx, int64_t* prune_idx,
                          int32_t* cluster_id, cudaStream_t stream);
cudaError_t select_tokens(const double* tokens, const float* ent, const float* edge, int64_t B, int64_t N, int64_t C,
                          int64_t Q, int64_t P, int64_t K, int64_t k, int64_t iters, double alpha, bool low,
                          int allocation, const SelectScratch& s, int64_t* keep_idx, int64_t* prune_idx,
                          int32_t* cluster_id, cudaStream_t stream);
cudaError_t select_tokens(const double* tokens, const double* ent, const double* edge, int64_t B, int64_t N,
                          int64_t C, int64_t Q, int64_t P, int64_t K, int64_t k, int64_t iters, double alpha, bool low,
                          int allocation, const SelectScratch& s, int64_t* keep_idx, int64_t* prune_idx,
                          int32_t* cluster_id, cudaStream_t stream);

// ----------------------------------------------------------------------------- select, fast
// select(..., precision="fast") as one launch (csrc/select_fast_cuda.cu): python_ref.fast's
// algorithm. tokens (B, N, C) of the given kind, strides s0, s1, s2 in elements (read in
// place); ent (B, N, Q) and edge (B, N) (nullptr: none) float32 contiguous; k = min(clusters,
// N - P), K = budget(N, P, keep_ratio). Outputs as select_finish. scratch: device memory of
// select_fast_scratch_bytes(B, N - P, k, C) bytes (16-byte aligned). trace: all six pointers
// or none (python_ref.fast.FastTrace: u (B, n) f32, init_idx (B, k) i64, centroids
// (B, iters + 1, k, C) f32, assign (B, iters + 1, n) i64, split (B, k) i64, rep (B, k) i64).
// select_fast_fits: whether the kernel takes n, C, k under a shared-memory opt-in limit
// (bytes); select_fast returns cudaErrorInvalidValue where it does not.
enum TokenKind { kTokF32 = 0, kTokF16 = 1, kTokBF16 = 2, kTokF64 = 3 };
struct FastTrace {
  float* u = nullptr;
  int64_t* init_idx = nullptr;
  float* centroids = nullptr;
  int64_t* assign = nullptr;
  int64_t* split = nullptr;
  int64_t* rep = nullptr;
};
size_t select_fast_scratch_bytes(int64_t B, int64_t n, int64_t k, int64_t C);
bool select_fast_fits(int64_t n, int64_t C, int64_t k, int smem_optin);
cudaError_t select_fast(const void* tokens, int kind, int64_t s0, int64_t s1, int64_t s2, const float* ent,
                        const float* edge, int64_t B, int64_t N, int64_t C, int64_t Q, int64_t P, int64_t K, int64_t k,
                        int64_t iters, double alpha, bool low, int allocation, void* scratch, const FastTrace& trace,
                        int64_t* keep_idx, int64_t* prune_idx, int32_t* cluster_id, cudaStream_t stream);

}  // namespace cuda
}  // namespace lvtp
