// simt: a small CPU emulator of the CUDA features csrc/*.cu use, so that CI (no GPU) runs
// the real CUDA kernels and launchers and compares them with python_ref.
//
// Each launch runs its blocks one after another; a block's threads are fibers (user-level
// stacks, switched only at barriers), scheduled round-robin on the calling OS thread.
// What it models and checks:
//   * __syncthreads: every live thread of the block must reach the same one (source line);
//     threads that exited count as arrived (as on the hardware). Threads at different
//     barriers, or a block that cannot make progress, are reported.
//   * warp collectives (__shfl_*_sync, __ballot_sync, __syncwarp) with a full mask: all 32
//     lanes must be live and reach the same collective (kind and source line), else an
//     error (what CUDA leaves undefined is an error here).
//   * launch configuration: block size <= 1024, grid limits, dynamic shared memory above
//     48 KB only after cudaFuncSetAttribute opt-in, up to the emulated device's opt-in
//     limit (simt_set_smem_optin, default 227 KB as on Hopper).
//   * __shared__ arrays (LVTP_SHARED_ARRAY) are function statics (blocks never overlap);
//     static and dynamic shared memory is filled with 0xFF bytes (NaN, -1) at the start of
//     each block, so a read of unwritten shared memory shows up in the results.
//   * data races between a block's threads: the order in which threads are resumed can be
//     ascending, descending or shuffled (simt_set_schedule); a result that changes with it
//     reveals a missing barrier.
// What it does not model: memory ordering between blocks or streams (launches are
// synchronous) and timing. Out-of-bounds global accesses: the tests surround buffers with
// guard zones, and the memcheck build (build.py) runs everything under AddressSanitizer.
//
// The .cu sources compile unchanged (g++ -x c++ -include simt.h, tests/simt/build.py): they
// write launches and shared memory only through the macros of csrc/lvtp_cuda_launch.cuh,
// defined here for the host compiler (end of this file) -- LVTP_LAUNCH runs the kernel
// under ::simt::launch, LVTP_SHARED_ARRAY adds ::simt::poison_shared, LVTP_DYNAMIC_SMEM
// points at ::simt::dynamic_smem(). There is no `__shared__` keyword here: a raw one does
// not compile (and build.py rejects it, and a raw `<<<`, with a message first).
// Used only by tests/test_cuda_simt.py; never part of the package.
#pragma once

#define LVTP_SIMT 1

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

// ----------------------------------------------------------------------------- runtime API
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
struct CUstream_st;
typedef CUstream_st* cudaStream_t;
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace simt {
cudaError_t get_last_error();
cudaError_t func_set_attribute(const void* fn, cudaFuncAttribute attr, int value);
int smem_optin();
void launch_impl(const void* fn, void (*body)(void*), void* ctx, dim3 grid, dim3 block, size_t smem);
template <typename F>
void launch(const void* fn, F&& body, dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = nullptr) {
  using Fn = std::remove_reference_t<F>;
  launch_impl(fn, [](void* c) { (*static_cast<Fn*>(c))(); }, static_cast<void*>(&body), grid, block, smem);
}
// per-thread state of the running fiber
struct ThreadState {
  uint3 tid, bid, bdim, gdim;  // threadIdx, blockIdx, blockDim, gridDim
};
extern thread_local ThreadState* cur;
unsigned char* dynamic_smem();
// Fills a __shared__ array with 0xFF bytes (a NaN for floats, -1 for integers) the first
// time a thread of the current block reaches its declaration.
void poison_shared(void* p, size_t bytes);
void syncthreads(int line);
// Lanes of a warp meet at a collective: kind and line (the call's source line) must agree.
uint64_t warp_exchange(uint64_t v, int kind, int line, uint64_t* out_all);
void fail(const char* what);
}  // namespace simt

inline cudaError_t cudaGetLastError() { return simt::get_last_error(); }
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "unspecified launch failure";
  }
}
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int) {
  if (attr != cudaDevAttrMaxSharedMemoryPerBlockOptin) return cudaErrorInvalidValue;
  *v = simt::smem_optin();
  return cudaSuccess;
}
template <typename F>
cudaError_t cudaFuncSetAttribute(F* fn, cudaFuncAttribute attr, int value) {
  return simt::func_set_attribute(reinterpret_cast<const void*>(fn), attr, value);
}

// ----------------------------------------------------------------------------- device side
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define threadIdx (::simt::cur->tid)
#define blockIdx (::simt::cur->bid)
#define blockDim (::simt::cur->bdim)
#define gridDim (::simt::cur->gdim)

inline void __syncthreads(int line = __builtin_LINE()) { simt::syncthreads(line); }

// IEEE double operations with explicit rounding: plain operations here, since the
// emulator is compiled with -ffp-contract=off (no fused multiply-add).
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline double __longlong_as_double(long long x) {
  double d;
  std::memcpy(&d, &x, sizeof d);
  return d;
}

namespace simt {
enum Collective { kShflDown = 1, kShflXor = 2, kShfl = 3, kBallot = 4, kSyncwarp = 5 };
template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "simt: shuffle of a type > 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}
inline void check_mask(unsigned mask) {
  if (mask != 0xffffffffu) fail("warp collective with a partial mask (not emulated)");
}
inline unsigned lane_id() {
  const uint3 t = cur->tid, d = cur->bdim;
  return ((t.z * d.y + t.y) * d.x + t.x) % 32u;
}

// One full-mask shuffle: every lane's value, after the checks all shuffles share.
template <typename T>
inline void shuffle_all(const char* name, unsigned mask, T v, int width, int kind, int line, uint64_t* all) {
  check_mask(mask);
  if (width != 32) fail(name);
  warp_exchange(to_bits(v), kind, line, all);
}
}  // namespace simt

template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, int line = __builtin_LINE()) {
  uint64_t all[32];
  simt::shuffle_all("__shfl_down_sync: width != 32 (not emulated)", mask, v, width, simt::kShflDown, line, all);
  const unsigned l = simt::lane_id();
  return simt::from_bits<T>(l + delta < 32u ? all[l + delta] : all[l]);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, int line = __builtin_LINE()) {
  uint64_t all[32];
  simt::shuffle_all("__shfl_xor_sync: width != 32 (not emulated)", mask, v, width, simt::kShflXor, line, all);
  const unsigned src = simt::lane_id() ^ static_cast<unsigned>(lane_mask);
  return simt::from_bits<T>(src < 32u ? all[src] : all[simt::lane_id()]);
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32, int line = __builtin_LINE()) {
  uint64_t all[32];
  simt::shuffle_all("__shfl_sync: width != 32 (not emulated)", mask, v, width, simt::kShfl, line, all);
  return simt::from_bits<T>(all[static_cast<unsigned>(src_lane) % 32u]);
}
inline unsigned __ballot_sync(unsigned mask, int pred, int line = __builtin_LINE()) {
  simt::check_mask(mask);
  uint64_t all[32];
  simt::warp_exchange(pred ? 1u : 0u, simt::kBallot, line, all);
  unsigned r = 0;
  for (unsigned l = 0; l < 32u; ++l) r |= (all[l] != 0 ? 1u : 0u) << l;
  return r;
}
inline void __syncwarp(unsigned mask = 0xffffffffu, int line = __builtin_LINE()) {
  simt::check_mask(mask);
  uint64_t all[32];
  simt::warp_exchange(0, simt::kSyncwarp, line, all);
}

// ----------------------------------------------------------------------------- csrc/lvtp_cuda_launch.cuh
namespace simt {
// LVTP_LAUNCH(kernel, grid, block, smem, stream)(args...): the launch configuration first,
// then the arguments, which every emulated thread passes to the kernel (converted to its
// parameter types, as a CUDA launch does).
template <typename... P>
struct Launcher {
  void (*fn)(P...);
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  template <typename... A>
  void operator()(A&&... a) const {
    void (*const f)(P...) = fn;
    launch(reinterpret_cast<const void*>(f), [&]() { f(a...); }, grid, block, smem, stream);
  }
};
template <typename... P>
Launcher<P...> launcher(void (*fn)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream) {
  return Launcher<P...>{fn, grid, block, smem, stream};
}
}  // namespace simt

#define LVTP_LAUNCH(kernel, grid, block, smem, stream) ::simt::launcher(kernel, grid, block, smem, stream)
#define LVTP_SHARED_ARRAY(T, name, dims) \
  static T name dims;                    \
  ::simt::poison_shared(name, sizeof(name))
#define LVTP_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(::simt::dynamic_smem())
