// The fast selection (select(..., precision="fast"), spec steps 2, 4, 5) as ONE CUDA kernel
// launch per call: lvtp_kernels._C_cuda.select_fast. The algorithm of python_ref/fast.py and
// csrc/select_fast_cpu.cpp; interface (raw device pointers, a stream, a cudaError_t back; CUDA
// runtime only, no ATen): lvtp_cuda.h.
//
//   select_fast   tokens (B, N, C) fp32 / fp16 / bf16 / fp64 with any strides (read in
//                 place, converted on load: no copy), ent (B, N, Q) and edge (B, N) or
//                 nullptr fp32 contiguous -> keep_idx (B, P+K) int64, prune_idx (B, N-P-K)
//                 int64 (ascending), cluster_id (B, N) int32; optionally python_ref.fast's
//                 FastTrace (u, init_idx, centroids per iteration, assignments, split, rep).
//
// Layout: one block of 512 threads per image does everything, phase after phase, with
// __syncthreads between phases: importance (threads per order, then per token), row norms
// (a warp per row), the rank of u and the initial centroids (a block bitonic sort of 64-bit
// keys in shared memory), `iters` Lloyd iterations and the final assignment (a warp per
// point, up to 16 clusters' dot products at once in registers, centroids in shared memory;
// update: a thread per feature column summing the members in index order), the 2-means of
// each cluster (a warp per cluster, warp scans of float64 prefix sums), the ranked or
// proportional allocation (bitonic sorts of (class, u, index) keys) and the compaction of
// the kept / pruned indices (a block scan). No host synchronisation, no data-dependent
// shape: the call captures in a CUDA graph.
// Precision: float32 importance, inverse row norms, dots and centroid means; float64 prefix
// sums for the 2-means with python_ref's tie tolerance. Equal to python_ref.fast except at
// near-ties (tests/test_cuda_simt_fast.py certifies every difference against float64).
// Determinism: fixed reduction trees and orders, no atomics: the same outputs on every run,
// for any batch order, and whatever order a block's threads run in.
// Limits: n = N - P <= 65535 and k <= 65535 (16-bit fields of the sort keys); 1 <= Q <= 64;
// B <= 2^31 - 1; shared memory k * C * 4 + 24 * k bytes (+ the sort keys, 8 * 2^ceil(log2 n),
// which go to global scratch when they do not fit) up to the device's opt-in limit, else
// cudaErrorInvalidValue (select_fast_fits says so beforehand; the glue then runs the torch
// fast path). Launches and shared arrays go through lvtp_cuda_launch.cuh (the simt emulator
// compiles this file unchanged for the host).
//
// Not done yet, by design choices to measure on a GPU: one block per image uses B SMs only
// (8 of 132 at batch 8); a thread-block-cluster split of the assignment would use more.

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "lvtp_common.h"
#include "lvtp_cuda.h"
#include "lvtp_cuda_launch.cuh"

namespace lvtp {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 512;
constexpr int kWarps = kThreads / kWarp;
constexpr int kMaxQ = 64;
constexpr int kChunk = 16;  // clusters whose dots a warp accumulates at once
constexpr unsigned kFull = 0xffffffffu;
constexpr uint64_t kPad = ~0ull;
constexpr size_t kSmemDefault = 48 * 1024;

// ----------------------------------------------------------------------------- loads
__device__ __forceinline__ float half_to_float(uint16_t h) {  // exact IEEE binary16 -> binary32
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
  if (exp == 0x1fu) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;  // +-0
  } else {  // subnormal: normalise
    exp = 113u;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

__device__ __forceinline__ float load_as_float(const void* p, int64_t off, int kind) {
  switch (kind) {
    case kTokF16:
      return half_to_float(static_cast<const uint16_t*>(p)[off]);
    case kTokBF16: {
      const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(p)[off]) << 16;
      float f;
      memcpy(&f, &bits, 4);
      return f;
    }
    case kTokF64:
      return static_cast<float>(static_cast<const double*>(p)[off]);
    default:
      return static_cast<const float*>(p)[off];
  }
}

// u's total order as an unsigned key: NaN above every number (all NaNs tied), -0 tied with
// +0 (python_ref's u_greater / torch.sort on floats).
__device__ __forceinline__ uint32_t u_order(float v) {
  if (v != v) return 0xffffffffu;
  if (v == 0.0f) v = 0.0f;
  uint32_t b;
  memcpy(&b, &v, 4);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ int key_index(uint64_t key) { return static_cast<int>(key & 0xffffu); }

// Ascending bitonic sort of keys[0, np2) by the whole block (np2 a power of two, keys distinct
// thanks to the index field, so the result is unique). Ends with a barrier.
__device__ void block_sort(uint64_t* keys, int np2) {
  for (int size = 2; size <= np2; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < (np2 >> 1); t += blockDim.x) {
        const int i = 2 * t - (t & (stride - 1));
        const int j = i + stride;
        const bool up = (i & size) == 0;
        const uint64_t a = keys[i], b = keys[j];
        if ((a > b) == up) {
          keys[i] = b;
          keys[j] = a;
        }
      }
      __syncthreads();
    }
  }
}

__device__ __forceinline__ float warp_sum(float v) {  // butterfly: every lane gets the same sum
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

__device__ __forceinline__ double warp_inclusive_scan(double v, int lane) {
  for (int o = 1; o < kWarp; o <<= 1) {
    const double t = __shfl_sync(kFull, v, lane >= o ? lane - o : lane);
    if (lane >= o) v = __dadd_rn(v, t);
  }
  return v;
}

__device__ __forceinline__ double warp_min(double v) {
  for (int o = kWarp / 2; o > 0; o >>= 1) {
    const double t = __shfl_xor_sync(kFull, v, o);
    v = t < v ? t : v;
  }
  return v;
}

struct Args {
  const void* tokens;
  int kind;
  int64_t s0, s1, s2;  // token strides in elements
  const float* ent;    // (B, N, Q)
  const float* edge;   // (B, N) or nullptr
  int64_t N, C, Q, P, K, k, iters;
  float alpha, beta;  // beta = (float)(1 - alpha)
  bool low;
  int allocation;
  bool keys_in_smem;
  int np2;
  unsigned char* scratch;  // per image: scratch_per_image bytes
  size_t scratch_per_image;
  FastTrace trace;
  int64_t* keep_idx;
  int64_t* prune_idx;
  int32_t* cluster_id;
};

__host__ __device__ inline size_t align16(size_t v) { return (v + 15) & ~static_cast<size_t>(15); }

struct Scratch {  // per image, global memory
  float* u;        // n
  float* rinv;     // n: 1 / max(||row||, 1e-12)
  int32_t* assign;  // n
  int32_t* pos;    // n: rank in the (class, u, index) order
  uint8_t* cls;    // n
  uint8_t* keep;   // n
  float* sums;     // k * C
  uint64_t* keys;  // np2 (used when they do not fit in shared memory)
};

__host__ __device__ inline size_t scratch_layout(int64_t n, int64_t k, int64_t C, int np2, unsigned char* base,
                                                 Scratch* s) {
  size_t off = 0;
  auto take = [&](size_t bytes) {
    unsigned char* p = base ? base + off : nullptr;
    off = align16(off + bytes);
    return p;
  };
  unsigned char* p_u = take(n * 4);
  unsigned char* p_r = take(n * 4);
  unsigned char* p_a = take(n * 4);
  unsigned char* p_p = take(n * 4);
  unsigned char* p_c = take(n);
  unsigned char* p_k = take(n);
  unsigned char* p_s = take(static_cast<size_t>(k * C) * 4);
  unsigned char* p_y = take(static_cast<size_t>(np2) * 8);
  if (s) {
    s->u = reinterpret_cast<float*>(p_u);
    s->rinv = reinterpret_cast<float*>(p_r);
    s->assign = reinterpret_cast<int32_t*>(p_a);
    s->pos = reinterpret_cast<int32_t*>(p_p);
    s->cls = p_c;
    s->keep = p_k;
    s->sums = reinterpret_cast<float*>(p_s);
    s->keys = reinterpret_cast<uint64_t*>(p_y);
  }
  return off;
}

// dynamic shared memory: c (k*C f32), half_cc (k f32), size / start / quota (k i32 each),
// then the sort keys (np2 u64, 16-byte aligned) when they fit
__host__ __device__ inline size_t smem_fixed(int64_t k, int64_t C) {
  return align16(static_cast<size_t>(k * C) * 4 + static_cast<size_t>(k) * 16);
}

__global__ void __launch_bounds__(kThreads) select_fast_kernel(Args a) {
  LVTP_DYNAMIC_SMEM(unsigned char, smem);
  LVTP_SHARED_ARRAY(float, w, [kMaxQ]);
  LVTP_SHARED_ARRAY(int32_t, scan, [kThreads]);
  const int64_t b = blockIdx.x, N = a.N, C = a.C, Q = a.Q, P = a.P, n = N - P, k = a.k, K = a.K;
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  Scratch s;
  scratch_layout(n, k, C, a.np2, a.scratch + b * a.scratch_per_image, &s);
  float* c = reinterpret_cast<float*>(smem);
  float* half_cc = c + k * C;
  int32_t* size = reinterpret_cast<int32_t*>(half_cc + k);
  int32_t* start = size + k;
  int32_t* quota = start + k;
  uint64_t* keys = a.keys_in_smem ? reinterpret_cast<uint64_t*>(smem + smem_fixed(k, C)) : s.keys;
  const FastTrace& tr = a.trace;
  const bool traced = tr.u != nullptr;
  auto xval = [&](int64_t i, int64_t d) {  // normalised row i (non-protected index), feature d
    return load_as_float(a.tokens, b * a.s0 + (P + i) * a.s1 + d * a.s2, a.kind) * s.rinv[i];
  };

  // -------------------------------------------------- steps 2, 4: u (float32)
  const float* eb = a.ent + (b * N + P) * Q;
  if (tid < Q) {  // population std of order q over the tokens, two passes in index order
    float sum = 0.f;
    for (int64_t i = 0; i < n; ++i) sum += eb[i * Q + tid];
    const float mean = sum / static_cast<float>(n);
    float v = 0.f;
    for (int64_t i = 0; i < n; ++i) {
      const float d = eb[i * Q + tid] - mean;
      v += d * d;
    }
    w[tid] = sqrtf(v / static_cast<float>(n));
  }
  __syncthreads();
  if (tid == 0) {
    float total = 0.f;
    for (int64_t q = 0; q < Q; ++q) total += w[q];
    for (int64_t q = 0; q < Q; ++q) w[q] = total > 0.f ? w[q] / total : 1.0f / static_cast<float>(Q);
  }
  __syncthreads();
  for (int64_t i = tid; i < n; i += blockDim.x) {
    float e = 0.f;
    for (int64_t q = 0; q < Q; ++q) e = e + w[q] * eb[i * Q + q];
    const float h = a.low ? 1.0f - e : e;
    const float u = a.edge ? a.alpha * h + a.beta * a.edge[b * N + P + i] : h;
    s.u[i] = u;
    if (traced) tr.u[b * n + i] = u;
  }
  // -------------------------------------------------- row norms (a warp per row)
  for (int64_t i = warp; i < n; i += kWarps) {
    float ss = 0.f;
    for (int64_t d = lane; d < C; d += kWarp) {
      const float v = load_as_float(a.tokens, b * a.s0 + (P + i) * a.s1 + d * a.s2, a.kind);
      ss += v * v;
    }
    ss = warp_sum(ss);
    const float nrm = fmaxf(sqrtf(ss), static_cast<float>(kNormEps));
    if (lane == 0) s.rinv[i] = 1.0f / nrm;
  }
  __syncthreads();
  // -------------------------------------------------- u descending (ties by index) -> init
  for (int t = tid; t < a.np2; t += blockDim.x)
    keys[t] = t < n ? (static_cast<uint64_t>(~u_order(s.u[t])) << 32) | static_cast<uint64_t>(t) : kPad;
  __syncthreads();
  block_sort(keys, a.np2);
  for (int64_t t = tid; t < k * C; t += blockDim.x) {
    const int64_t r = t / C, d = t % C;
    const int64_t i = static_cast<int64_t>(keys[(r * n) / k] & 0xffffffffu);
    c[t] = xval(i, d);
    if (traced) tr.centroids[b * (a.iters + 1) * k * C + t] = c[t];
    if (traced && d == 0) tr.init_idx[b * k + r] = i;
  }
  __syncthreads();
  // -------------------------------------------------- k-means: iters updates, final assignment
  for (int64_t it = 0; it <= a.iters; ++it) {
    for (int64_t j = warp; j < k; j += kWarps) {
      float ss = 0.f;
      for (int64_t d = lane; d < C; d += kWarp) ss += c[j * C + d] * c[j * C + d];
      ss = warp_sum(ss);
      if (lane == 0) half_cc[j] = 0.5f * ss;
    }
    __syncthreads();
    for (int64_t i = warp; i < n; i += kWarps) {  // argmax_j x . c_j - |c_j|^2 / 2, ties to lower j
      float best = 0.f;
      int64_t arg = 0;
      for (int64_t j0 = 0; j0 < k; j0 += kChunk) {
        float acc[kChunk];
#pragma unroll
        for (int jj = 0; jj < kChunk; ++jj) acc[jj] = 0.f;
        for (int64_t d = lane; d < C; d += kWarp) {
          const float x = xval(i, d);
#pragma unroll
          for (int jj = 0; jj < kChunk; ++jj)
            if (j0 + jj < k) acc[jj] += x * c[(j0 + jj) * C + d];
        }
#pragma unroll
        for (int jj = 0; jj < kChunk; ++jj) {
          if (j0 + jj >= k) break;  // uniform across the warp
          const float sc = warp_sum(acc[jj]) - half_cc[j0 + jj];
          if (j0 + jj == 0 || sc > best) {
            best = sc;
            arg = j0 + jj;
          }
        }
      }
      if (lane == 0) {
        s.assign[i] = static_cast<int32_t>(arg);
        if (traced) tr.assign[(b * (a.iters + 1) + it) * n + i] = arg;
      }
    }
    __syncthreads();
    if (it == a.iters) break;
    for (int64_t j = tid; j < k; j += blockDim.x) {  // members per cluster
      int32_t m = 0;
      for (int64_t i = 0; i < n; ++i) m += s.assign[i] == j;
      size[j] = m;
    }
    for (int64_t d = tid; d < C; d += blockDim.x) {  // column d of every cluster's sum, index order
      for (int64_t j = 0; j < k; ++j) s.sums[j * C + d] = 0.f;
      for (int64_t i = 0; i < n; ++i) s.sums[s.assign[i] * C + d] += xval(i, d);
    }
    __syncthreads();
    for (int64_t t = tid; t < k * C; t += blockDim.x) {
      const int64_t j = t / C;
      if (size[j] > 0) c[t] = s.sums[t] / static_cast<float>(size[j]);  // an emptied cluster keeps its centroid
      if (traced) tr.centroids[(b * (a.iters + 1) + it + 1) * k * C + t] = c[t];
    }
    __syncthreads();
  }
  // -------------------------------------------------- 5.2: clusters by ascending u -> 2-means
  for (int t = tid; t < a.np2; t += blockDim.x)
    keys[t] = t < n ? (static_cast<uint64_t>(s.assign[t]) << 48) | (static_cast<uint64_t>(u_order(s.u[t])) << 16) |
                          static_cast<uint64_t>(t)
                    : kPad;
  for (int64_t j = tid; j < k; j += blockDim.x) size[j] = 0;
  __syncthreads();
  block_sort(keys, a.np2);
  for (int64_t r = tid; r < n; r += blockDim.x) {  // segment bounds from the sorted keys
    const int64_t j = static_cast<int64_t>(keys[r] >> 48);
    if (r == 0 || static_cast<int64_t>(keys[r - 1] >> 48) != j) start[j] = static_cast<int32_t>(r);
    if (r == n - 1 || static_cast<int64_t>(keys[r + 1] >> 48) != j) size[j] = static_cast<int32_t>(r + 1);  // end
  }
  __syncthreads();
  for (int64_t j = tid; j < k; j += blockDim.x) {
    if (size[j] == 0) start[j] = 0;
    size[j] = size[j] - start[j];  // end -> size
  }
  __syncthreads();
  for (int64_t j = warp; j < k; j += kWarps) {  // a warp per cluster
    const int64_t st = start[j], m = size[j], en = st + m;
    int64_t split = 0;
    if (m >= 2) {
      auto uval = [&](int64_t r) { return r < en ? static_cast<double>(s.u[key_index(keys[r])]) : 0.0; };
      double tot1 = 0.0, tot2 = 0.0;
      for (int64_t base = st; base < en; base += kWarp) {
        const double v = uval(base + lane);
        const double p1 = warp_inclusive_scan(v, lane), p2 = warp_inclusive_scan(__dmul_rn(v, v), lane);
        tot1 = __dadd_rn(tot1, __shfl_sync(kFull, p1, kWarp - 1));
        tot2 = __dadd_rn(tot2, __shfl_sync(kFull, p2, kWarp - 1));
      }
      const double md = static_cast<double>(m);
      // cost of the split after rank r - st (lower group r - st + 1 values), valid below en - 1
      auto costs = [&](int64_t base, double& c1, double& c2, bool& valid) {
        const double v = uval(base + lane);
        const double p1 = __dadd_rn(c1, warp_inclusive_scan(v, lane));
        const double p2 = __dadd_rn(c2, warp_inclusive_scan(__dmul_rn(v, v), lane));
        c1 = __shfl_sync(kFull, p1, kWarp - 1);
        c2 = __shfl_sync(kFull, p2, kWarp - 1);
        valid = base + lane < en - 1;
        const double sl = static_cast<double>(base + lane - st + 1);
        const double h1 = __dsub_rn(tot1, p1), h2 = __dsub_rn(tot2, p2);
        const double lo = __dsub_rn(p2, __ddiv_rn(__dmul_rn(p1, p1), sl));
        const double hi = __dsub_rn(h2, __ddiv_rn(__dmul_rn(h1, h1), valid ? __dsub_rn(md, sl) : 1.0));
        return valid ? __dadd_rn(lo, hi) : INFINITY;
      };
      double best = INFINITY, c1 = 0.0, c2 = 0.0;
      bool valid;
      for (int64_t base = st; base < en; base += kWarp) best = fmin(best, warp_min(costs(base, c1, c2, valid)));
      const double tol = __dmul_rn(__dmul_rn(kTieRtol, md), tot2);
      c1 = c2 = 0.0;
      for (int64_t base = st; base < en; base += kWarp) {
        const double cost = costs(base, c1, c2, valid);
        const unsigned hit = __ballot_sync(kFull, valid && cost <= __dadd_rn(best, tol));
        if (hit) {
          split = base - st + __ffs(static_cast<int>(hit));  // lower group size
          break;
        }
      }
    }
    for (int64_t r = st + lane; r < en; r += kWarp) s.cls[key_index(keys[r])] = r - st >= split ? kClassSalient : kClassPlain;
    __syncwarp();
    int64_t rep = -1;
    if (m >= 1) {  // best u, ties by lower index: the first key of the last u value
      const uint64_t top = (keys[en - 1] >> 16) & 0xffffffffu;
      int64_t lo = st, hi = en - 1;
      while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (((keys[mid] >> 16) & 0xffffffffu) < top) lo = mid + 1; else hi = mid;
      }
      rep = key_index(keys[lo]);
      if (lane == 0) s.cls[rep] = kClassRep;
    }
    if (traced && lane == 0) {
      tr.split[b * k + j] = split;
      tr.rep[b * k + j] = rep;
    }
  }
  __syncthreads();
  // -------------------------------------------------- 5.3: (class, u descending, index) order
  for (int t = tid; t < a.np2; t += blockDim.x)
    keys[t] = t < n ? (static_cast<uint64_t>(s.cls[t]) << 48) | (static_cast<uint64_t>(~u_order(s.u[t])) << 16) |
                          static_cast<uint64_t>(t)
                    : kPad;
  __syncthreads();
  block_sort(keys, a.np2);
  if (a.allocation == kAllocProportional) {
    for (int64_t j = tid; j < k; j += blockDim.x) {  // python_ref.proportional_quotas
      int64_t left = K;
      for (int64_t c2 = 0; c2 < k; ++c2) left -= (K * size[c2]) / n;
      const int64_t rj = (K * size[j]) % n;
      int64_t ahead = 0;
      for (int64_t c2 = 0; c2 < k; ++c2) {
        const int64_t rc = (K * size[c2]) % n;
        ahead += rc > rj || (rc == rj && c2 < j);
      }
      quota[j] = static_cast<int32_t>((K * size[j]) / n + (ahead < left ? 1 : 0));
    }
    for (int64_t r = tid; r < n; r += blockDim.x) s.pos[key_index(keys[r])] = static_cast<int32_t>(r);
    __syncthreads();
    for (int t = tid; t < a.np2; t += blockDim.x)
      keys[t] = t < n ? (static_cast<uint64_t>(s.assign[t]) << 32) | (static_cast<uint64_t>(s.pos[t]) << 16) |
                            static_cast<uint64_t>(t)
                      : kPad;
    __syncthreads();
    block_sort(keys, a.np2);  // per cluster (same segments as above), in the 5.3 order
    for (int64_t r = tid; r < n; r += blockDim.x) {
      const int64_t j = static_cast<int64_t>(keys[r] >> 32);
      s.keep[key_index(keys[r])] = r - start[j] < quota[j];
    }
  } else {
    for (int64_t r = tid; r < n; r += blockDim.x) s.keep[key_index(keys[r])] = r < K;
  }
  __syncthreads();
  // -------------------------------------------------- outputs: a block scan of the kept flags
  const int64_t per = (n + blockDim.x - 1) / blockDim.x, i0 = tid * per, i1 = i0 + per < n ? i0 + per : n;
  int32_t kept = 0;
  for (int64_t i = i0; i < i1; ++i) kept += s.keep[i];
  scan[tid] = kept;
  __syncthreads();
  for (int o = 1; o < static_cast<int>(blockDim.x); o <<= 1) {  // inclusive Hillis-Steele
    const int32_t add = tid >= o ? scan[tid - o] : 0;
    __syncthreads();
    scan[tid] += add;
    __syncthreads();
  }
  int64_t kp = P + scan[tid] - kept, pp = (i0 < n ? i0 : n) - (scan[tid] - kept);
  int64_t* krow = a.keep_idx + b * (P + K);
  int64_t* prow = a.prune_idx + b * (n - K);
  for (int64_t i = i0; i < i1; ++i) {
    if (s.keep[i])
      krow[kp++] = P + i;
    else
      prow[pp++] = P + i;
  }
  for (int64_t t = tid; t < P; t += blockDim.x) krow[t] = t;
  int32_t* crow = a.cluster_id + b * N;
  for (int64_t t = tid; t < N; t += blockDim.x) crow[t] = t < P ? -1 : s.assign[t - P];
}

int next_pow2(int64_t n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}

}  // namespace

size_t select_fast_scratch_bytes(int64_t B, int64_t n, int64_t k, int64_t C) {
  return static_cast<size_t>(B) * scratch_layout(n, k, C, next_pow2(n), nullptr, nullptr);
}

bool select_fast_fits(int64_t n, int64_t C, int64_t k, int smem_optin) {
  if (n < 1 || n > 65535 || k < 1 || k > 65535 || k > n || C < 1) return false;
  return smem_fixed(k, C) <= static_cast<size_t>(smem_optin > 0 ? smem_optin : kSmemDefault);
}

cudaError_t select_fast(const void* tokens, int kind, int64_t s0, int64_t s1, int64_t s2, const float* ent,
                        const float* edge, int64_t B, int64_t N, int64_t C, int64_t Q, int64_t P, int64_t K, int64_t k,
                        int64_t iters, double alpha, bool low, int allocation, void* scratch, const FastTrace& trace,
                        int64_t* keep_idx, int64_t* prune_idx, int32_t* cluster_id, cudaStream_t stream) {
  const int64_t n = N - P;
  if (B < 1 || B > INT32_MAX || n < 1 || Q < 1 || Q > kMaxQ || K < 1 || K > n || iters < 0 || C < 1)
    return cudaErrorInvalidValue;
  if (kind < kTokF32 || kind > kTokF64 || (allocation != kAllocRanked && allocation != kAllocProportional))
    return cudaErrorInvalidValue;
  const bool some = trace.u || trace.init_idx || trace.centroids || trace.assign || trace.split || trace.rep;
  const bool all = trace.u && trace.init_idx && trace.centroids && trace.assign && trace.split && trace.rep;
  if (some && !all) return cudaErrorInvalidValue;
  int dev = 0, optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
    optin = static_cast<int>(kSmemDefault);
  if (!select_fast_fits(n, C, k, optin)) return cudaErrorInvalidValue;
  const int np2 = next_pow2(n);
  const size_t fixed = smem_fixed(k, C), with_keys = fixed + static_cast<size_t>(np2) * 8;
  const bool keys_in_smem = with_keys <= static_cast<size_t>(optin);
  const size_t smem = keys_in_smem ? with_keys : fixed;
  if (smem > kSmemDefault) {
    const cudaError_t e = cudaFuncSetAttribute(select_fast_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  Args a{tokens, kind, s0, s1, s2, ent, edge, N, C, Q, P, K, k, iters, static_cast<float>(alpha),
         static_cast<float>(1.0 - alpha), low, allocation, keys_in_smem, np2,
         static_cast<unsigned char*>(scratch), scratch_layout(n, k, C, np2, nullptr, nullptr), trace,
         keep_idx, prune_idx, cluster_id};
  LVTP_LAUNCH(select_fast_kernel, dim3(static_cast<unsigned>(B)), dim3(kThreads), smem, stream)(a);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace lvtp
