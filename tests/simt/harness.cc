// C entry points for tests/test_cuda_simt.py: the CUDA launchers of csrc/*.cu, run under
// the simt emulator on host memory. Each returns the cudaError_t of the launcher (0: ok);
// simt_message() explains an emulator error. Scratch buffers are allocated here with guard
// zones on both sides; a guard that changed is reported as error 1000 + the buffer's index.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "lvtp_cuda.h"
#include "simt.h"

namespace {

constexpr size_t kGuardBytes = 256;
std::string g_guard_message;

struct Guarded {
  std::vector<unsigned char> mem;
  size_t bytes;
  Guarded(size_t b) : mem(b + 2 * kGuardBytes, 0xA5), bytes(b) {
    std::memset(mem.data() + kGuardBytes, 0xFF, b);  // like fresh device memory: garbage
  }
  template <typename T>
  T* ptr() {
    return reinterpret_cast<T*>(mem.data() + kGuardBytes);
  }
  bool intact() const {
    for (size_t i = 0; i < kGuardBytes; ++i)
      if (mem[i] != 0xA5 || mem[kGuardBytes + bytes + i] != 0xA5) return false;
    return true;
  }
};

}  // namespace

extern "C" {

const char* simt_guard_message() { return g_guard_message.c_str(); }

int simt_kmeans(int f64, const void* x, int64_t bstride, const double* rownorm, int64_t B, int64_t n, int64_t d,
                void* c, int64_t k, int64_t iters, int64_t* assign) {
  std::vector<int32_t> members(static_cast<size_t>(B * k * n));
  if (rownorm != nullptr) {
    if (f64)
      return lvtp::cuda::kmeans_rows_f64_f64(static_cast<const double*>(x), bstride, rownorm, B, n, d,
                                             static_cast<double*>(c), k, iters, assign, members.data(), nullptr);
    return lvtp::cuda::kmeans_rows_f32_f64(static_cast<const float*>(x), bstride, rownorm, B, n, d,
                                           static_cast<double*>(c), k, iters, assign, members.data(), nullptr);
  }
  if (f64)
    return lvtp::cuda::kmeans_f64(static_cast<const double*>(x), bstride, B, n, d, static_cast<double*>(c), k, iters,
                                  assign, members.data(), nullptr);
  return lvtp::cuda::kmeans_f32(static_cast<const float*>(x), bstride, B, n, d, static_cast<float*>(c), k, iters,
                                assign, members.data(), nullptr);
}

int simt_select_tokens(int x64, const void* tokens, int e64, const void* ent, const void* edge, int64_t B, int64_t N,
                       int64_t C, int64_t Q, int64_t P, int64_t K, int64_t k, int64_t iters, double alpha, int low,
                       int allocation, int64_t* keep_idx, int64_t* prune_idx, int32_t* cluster_id) {
  const int64_t n = N - P;
  const size_t bn = static_cast<size_t>(B * n);
  std::vector<Guarded> g;
  g.reserve(13);
  const size_t sizes[13] = {bn * 8, bn * 8, static_cast<size_t>(B * k * C) * 8, bn * 8, bn * 8, bn * 4, bn * 4,
                            bn * 4, static_cast<size_t>(B * (k + 1)) * 4, static_cast<size_t>(B * k * n) * 4, bn,
                            bn, bn * 8};
  static const char* names[13] = {"u", "rownorm", "centroids", "s1", "s2", "desc", "asc", "seg", "starts",
                                  "members", "cls", "keep", "assign"};
  for (size_t s : sizes) g.emplace_back(s);
  const lvtp::cuda::SelectScratch s{g[0].ptr<double>(),   g[1].ptr<double>(),   g[2].ptr<double>(),
                                    g[3].ptr<double>(),   g[4].ptr<double>(),   g[5].ptr<int32_t>(),
                                    g[6].ptr<int32_t>(),  g[7].ptr<int32_t>(),  g[8].ptr<int32_t>(),
                                    g[9].ptr<int32_t>(),  g[10].ptr<uint8_t>(), g[11].ptr<uint8_t>(),
                                    g[12].ptr<int64_t>()};
  cudaError_t e;
  auto run = [&](const auto* x, const auto* en, const auto* ed) {
    return lvtp::cuda::select_tokens(x, en, ed, B, N, C, Q, P, K, k, iters, alpha, low != 0, allocation, s, keep_idx,
                                     prune_idx, cluster_id, nullptr);
  };
  if (x64 && e64)
    e = run(static_cast<const double*>(tokens), static_cast<const double*>(ent), static_cast<const double*>(edge));
  else if (x64)
    e = run(static_cast<const double*>(tokens), static_cast<const float*>(ent), static_cast<const float*>(edge));
  else if (e64)
    e = run(static_cast<const float*>(tokens), static_cast<const double*>(ent), static_cast<const double*>(edge));
  else
    e = run(static_cast<const float*>(tokens), static_cast<const float*>(ent), static_cast<const float*>(edge));
  for (int i = 0; i < 13; ++i)
    if (!g[i].intact()) {
      g_guard_message = std::string("scratch buffer '") + names[i] + "' written out of bounds";
      return 1000 + i;
    }
  return e;
}

bool simt_select_fast_fits(int64_t n, int64_t C, int64_t k, int optin) {
  return lvtp::cuda::select_fast_fits(n, C, k, optin);
}

int simt_select_fast(int kind, const void* tokens, int64_t s0, int64_t s1, int64_t s2, const float* ent,
                     const float* edge, int64_t B, int64_t N, int64_t C, int64_t Q, int64_t P, int64_t K, int64_t k,
                     int64_t iters, double alpha, int low, int allocation, float* t_u, int64_t* t_init,
                     float* t_cent, int64_t* t_assign, int64_t* t_split, int64_t* t_rep, int64_t* keep_idx,
                     int64_t* prune_idx, int32_t* cluster_id) {
  Guarded scratch(lvtp::cuda::select_fast_scratch_bytes(B, N - P, k, C));
  lvtp::cuda::FastTrace tr;
  tr.u = t_u;
  tr.init_idx = t_init;
  tr.centroids = t_cent;
  tr.assign = t_assign;
  tr.split = t_split;
  tr.rep = t_rep;
  const cudaError_t e = lvtp::cuda::select_fast(tokens, kind, s0, s1, s2, ent, edge, B, N, C, Q, P, K, k, iters, alpha,
                                                low != 0, allocation, scratch.ptr<void>(), tr, keep_idx, prune_idx,
                                                cluster_id, nullptr);
  if (!scratch.intact()) {
    g_guard_message = "select_fast's scratch written out of bounds";
    return 1000;
  }
  return e;
}

}  // extern "C"
