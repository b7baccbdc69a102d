// The memcheck build (build.py build_memcheck): the emulated CUDA kernels under AddressSanitizer
// and UndefinedBehaviorSanitizer, on buffers allocated to their exact sizes, so that any read
// or write outside a buffer, and any overflow or misaligned access in the index arithmetic,
// aborts with a report -- compute-sanitizer's memcheck, on the CPU. Results are compared with
// python_ref by tests/test_cuda_simt.py (the plain build); here only the accesses are checked.
//   simt_memcheck          run every case; prints "memcheck OK: <n> cases", exit 0
//   simt_memcheck --oob    a kernel that reads one element past its input (must be reported)
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <algorithm>
#include <random>
#include <vector>

#include "lvtp_common.h"

extern "C" {
int simt_kmeans(int f64, const void* x, int64_t bstride, const double* rownorm, int64_t B, int64_t n, int64_t d,
                void* c, int64_t k, int64_t iters, int64_t* assign);
int simt_select_tokens(int x64, const void* tokens, int e64, const void* ent, const void* edge, int64_t B, int64_t N,
                       int64_t C, int64_t Q, int64_t P, int64_t K, int64_t k, int64_t iters, double alpha, int low,
                       int allocation, int64_t* keep_idx, int64_t* prune_idx, int32_t* cluster_id);
int simt_select_fast(int kind, const void* tokens, int64_t s0, int64_t s1, int64_t s2, const float* ent,
                     const float* edge, int64_t B, int64_t N, int64_t C, int64_t Q, int64_t P, int64_t K, int64_t k,
                     int64_t iters, double alpha, int low, int allocation, float* t_u, int64_t* t_init,
                     float* t_cent, int64_t* t_assign, int64_t* t_split, int64_t* t_rep, int64_t* keep_idx,
                     int64_t* prune_idx, int32_t* cluster_id);
const char* simt_message();
const char* simt_guard_message();
int selftest_oob_read(const float* x, int n, float* out);
}

namespace {

std::mt19937_64 rng(1234);

template <typename T>
std::vector<T> randn(size_t n) {
  std::normal_distribution<double> d;
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(d(rng));
  return v;
}
template <typename T>
std::vector<T> rand01(size_t n, int levels = 0) {
  std::uniform_real_distribution<double> d(0.0, 1.0);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(levels ? static_cast<int>(d(rng) * levels) / static_cast<double>(levels) : d(rng));
  return v;
}

int failures = 0;

void report(const char* what, int rc) {
  std::fprintf(stderr, "memcheck: %s: error %d: %s%s\n", what, rc, simt_message(), simt_guard_message());
  ++failures;
}

template <typename XT, typename ET>
void select_case(int64_t B, int64_t N, int64_t C, int64_t P, int64_t clusters, int64_t iters, double keep, int alloc,
                 bool edge, bool ties, int nan = 0) {
  const int64_t Q = 4, n = N - P, K = lvtp::budget(N, P, keep), k = clusters < n ? clusters : n;
  auto x = randn<XT>(static_cast<size_t>(B * N * C));
  if (ties)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 1; i < N; i += 3) std::memcpy(&x[(b * N + i) * C], &x[b * N * C], sizeof(XT) * C);
  auto ent = rand01<ET>(static_cast<size_t>(B * N * Q), ties ? 4 : 0);
  auto ed = rand01<ET>(static_cast<size_t>(B * N), ties ? 2 : 0);
  if (nan == 1) ent[5] = static_cast<ET>(NAN);                                   // one NaN entropy
  if (nan == 2) std::fill(ent.begin(), ent.end(), static_cast<ET>(NAN));          // every u NaN
  if (nan == 3) x[C + 3] = static_cast<XT>(NAN);                                   // a NaN token
  std::vector<int64_t> ki(static_cast<size_t>(B * (P + K))), pi(static_cast<size_t>(B * (n - K)));
  std::vector<int32_t> ci(static_cast<size_t>(B * N));
  const int rc = simt_select_tokens(sizeof(XT) == 8, x.data(), sizeof(ET) == 8, ent.data(), edge ? ed.data() : nullptr,
                                    B, N, C, Q, P, K, k, iters, 0.5, 1, alloc, ki.data(),
                                    pi.empty() ? nullptr : pi.data(), ci.data());
  char what[128];
  std::snprintf(what, sizeof what, "select B=%lld N=%lld C=%lld P=%lld", (long long)B, (long long)N, (long long)C,
                (long long)P);
  if (rc != 0) return report(what, rc);
  for (int64_t b = 0; b < B; ++b)  // a light sanity check: kept indices ascending and in range
    for (int64_t j = 1; j < P + K; ++j)
      if (ki[b * (P + K) + j] <= ki[b * (P + K) + j - 1] || ki[b * (P + K) + j] >= N) return report(what, -1);
}

// select_fast (csrc/select_fast_cuda.cu): kind 0 fp32, 2 bf16 (raw 16-bit patterns), 3 fp64;
// exact-size buffers for tokens, ent, edge, the outputs and (traced) the six trace arrays.
void fast_case(int kind, int64_t B, int64_t N, int64_t C, int64_t P, int64_t clusters, int64_t iters, double keep,
               int alloc, bool edge, bool trace, int nan = 0) {
  const int64_t Q = 4, n = N - P, K = lvtp::budget(N, P, keep), k = clusters < n ? clusters : n;
  const size_t nx = static_cast<size_t>(B * N * C);
  auto xf = randn<float>(nx);
  if (nan == 3) xf[C + 3] = NAN;
  std::vector<double> xd(kind == 3 ? nx : 0);
  std::vector<uint16_t> xb(kind == 2 ? nx : 0);
  for (size_t i = 0; i < xd.size(); ++i) xd[i] = xf[i];
  for (size_t i = 0; i < xb.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &xf[i], 4);
    xb[i] = static_cast<uint16_t>(bits >> 16);
  }
  const void* x = kind == 3 ? static_cast<const void*>(xd.data())
                            : kind == 2 ? static_cast<const void*>(xb.data()) : static_cast<const void*>(xf.data());
  auto ent = rand01<float>(static_cast<size_t>(B * N * Q));
  auto ed = rand01<float>(static_cast<size_t>(B * N));
  if (nan == 1) ent[5] = NAN;
  if (nan == 2) std::fill(ent.begin(), ent.end(), NAN);
  std::vector<int64_t> ki(static_cast<size_t>(B * (P + K))), pi(static_cast<size_t>(B * (n - K)));
  std::vector<int32_t> ci(static_cast<size_t>(B * N));
  std::vector<float> tu(trace ? B * n : 0), tc(trace ? B * (iters + 1) * k * C : 0);
  std::vector<int64_t> ti(trace ? B * k : 0), ta(trace ? B * (iters + 1) * n : 0), ts(trace ? B * k : 0),
      tr(trace ? B * k : 0);
  const int rc = simt_select_fast(kind, x, N * C, C, 1, ent.data(), edge ? ed.data() : nullptr, B, N, C, Q, P, K, k,
                                  iters, 0.3, 0, alloc, trace ? tu.data() : nullptr, trace ? ti.data() : nullptr,
                                  trace ? tc.data() : nullptr, trace ? ta.data() : nullptr,
                                  trace ? ts.data() : nullptr, trace ? tr.data() : nullptr, ki.data(),
                                  pi.empty() ? nullptr : pi.data(), ci.data());
  char what[128];
  std::snprintf(what, sizeof what, "select_fast kind=%d B=%lld N=%lld C=%lld P=%lld", kind, (long long)B,
                (long long)N, (long long)C, (long long)P);
  if (rc != 0) return report(what, rc);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 1; j < P + K; ++j)
      if (ki[b * (P + K) + j] <= ki[b * (P + K) + j - 1] || ki[b * (P + K) + j] >= N) return report(what, -1);
}

template <typename T>
void kmeans_case(int64_t B, int64_t n, int64_t d, int64_t k, int64_t iters, bool rows) {
  auto x = randn<T>(static_cast<size_t>(B * n * d));
  std::vector<double> norm;
  if (rows) {
    norm.resize(static_cast<size_t>(B * n));
    for (int64_t r = 0; r < B * n; ++r) {
      double s = 0;
      for (int64_t t = 0; t < d; ++t) s += static_cast<double>(x[r * d + t]) * static_cast<double>(x[r * d + t]);
      norm[r] = s > 0 ? std::sqrt(s) : 1e-12;
    }
  }
  const size_t csize = static_cast<size_t>(B * k * d);
  std::vector<T> c(rows ? 0 : csize);
  std::vector<double> c64(rows ? csize : 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < k; ++j)
      for (int64_t t = 0; t < d; ++t) {
        const T v = x[(b * n + j) * d + t];
        if (rows)
          c64[(b * k + j) * d + t] = static_cast<double>(v) / norm[b * n + j];
        else
          c[(b * k + j) * d + t] = v;
      }
  std::vector<int64_t> a(static_cast<size_t>(B * n));
  const int rc = simt_kmeans(sizeof(T) == 8, x.data(), n * d, rows ? norm.data() : nullptr, B, n, d,
                             rows ? static_cast<void*>(c64.data()) : static_cast<void*>(c.data()), k, iters, a.data());
  char what[128];
  std::snprintf(what, sizeof what, "kmeans B=%lld n=%lld d=%lld k=%lld rows=%d", (long long)B, (long long)n,
                (long long)d, (long long)k, rows ? 1 : 0);
  if (rc != 0) return report(what, rc);
  for (int64_t v : a)
    if (v < 0 || v >= k) return report(what, -2);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--oob") == 0) {
    std::vector<float> x(100, 1.f), out(32);
    return selftest_oob_read(x.data(), 100, out.data());
  }
  int cases = 0;
  for (int64_t N : {1, 2, 50, 197, 577, 1025})
    for (int alloc : {0, 1}) {
      const int64_t P = N > 1 ? 1 : 0;
      select_case<float, float>(2, N, 24, P, 8, 3, 0.7, alloc, true, false);
      select_case<double, double>(2, N, 24, P, 8, 3, 0.3, alloc, false, false);
      cases += 2;
    }
  select_case<float, double>(3, 50, 12, 1, 8, 10, 0.5, 0, true, true);
  select_case<double, float>(2, 40, 9, 1, 12, 3, 0.2, 1, true, false);
  select_case<float, float>(1, 1025, 768, 1, 8, 3, 0.7, 1, true, false);  // ViT-B/16 at 512x512, one image
  cases += 3;
  for (int nan : {1, 2, 3})
    for (int alloc : {0, 1}) {  // non-finite values (no value checks inside a patched model)
      select_case<float, float>(2, 50, 12, 1, 8, 3, 0.5, alloc, true, false, nan);
      ++cases;
    }
  for (int64_t N : {1, 2, 50, 197, 577, 1025})
    for (int alloc : {0, 1}) {
      const int64_t P = N > 1 ? 1 : 0;
      fast_case(0, 2, N, 24, P, 8, 3, 0.7, alloc, true, alloc == 1);
      fast_case(alloc ? 2 : 3, 1, N, 40, P, 20, 2, 0.3, alloc, false, true);
      cases += 2;
    }
  fast_case(2, 1, 1025, 768, 1, 8, 3, 0.55, 1, true, true);  // ViT-B/16 at 512x512, one image
  ++cases;
  for (int nan : {1, 2, 3})
    for (int alloc : {0, 1}) {
      fast_case(0, 2, 50, 12, 1, 8, 3, 0.5, alloc, true, true, nan);
      ++cases;
    }
  kmeans_case<float>(2, 50, 24, 8, 10, false);
  kmeans_case<double>(1, 577, 17, 16, 3, false);
  kmeans_case<float>(2, 70, 769, 8, 2, true);  // > 48 KB of fp64 centroids: the opted-in path
  kmeans_case<double>(1, 1, 3, 1, 1, true);
  cases += 4;
  if (failures != 0) {
    std::fprintf(stderr, "memcheck: %d of %d cases failed\n", failures, cases);
    return 1;
  }
  std::printf("memcheck OK: %d cases\n", cases);
  return 0;
}
