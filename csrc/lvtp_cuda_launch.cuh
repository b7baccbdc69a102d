// Kernel launches and shared-memory declarations of csrc/*.cu, as macros.
//
// Ops: none. The .cu files write every launch and every __shared__ array through these
// macros, and never the raw syntax, so that the very same source also compiles for the
// host under the simt emulator (tests/simt/simt.h defines the same three macros there;
// tests/simt/build.py refuses a raw `<<<` or `__shared__` in csrc/*.cu with a message).
//
//   LVTP_LAUNCH(kernel, grid, block, smem, stream)(args...);
//       kernel<<<grid, block, smem, stream>>>(args...). A template kernel whose arguments
//       contain commas goes in parentheses: LVTP_LAUNCH((k<A, B>), grid, ...)(args...).
//   LVTP_SHARED_ARRAY(T, name, dims);          __shared__ T name dims;  e.g. dims [32][8]
//       (the emulator fills it with 0xFF bytes at the start of each block: reads of
//       unwritten shared memory show up as NaN / -1).
//   LVTP_DYNAMIC_SMEM(T, name);                T* name = the block's dynamic shared memory
//       (extern __shared__, 16-byte aligned; its size is the launch's smem argument).
// Types, precision, determinism, limits: none of their own (the macros expand to the plain
// CUDA syntax; nothing else changes in the generated code).
#pragma once

#if defined(LVTP_SIMT)
// tests/simt/simt.h, included first, has defined the macros for the host compiler.
#if !defined(LVTP_LAUNCH) || !defined(LVTP_SHARED_ARRAY) || !defined(LVTP_DYNAMIC_SMEM)
#error "lvtp_cuda_launch.cuh: LVTP_SIMT is set but tests/simt/simt.h did not define the launch macros"
#endif
#elif defined(__CUDACC__)
#define LVTP_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#define LVTP_SHARED_ARRAY(T, name, dims) __shared__ T name dims
#define LVTP_DYNAMIC_SMEM(T, name)                                  \
  extern __shared__ __align__(16) unsigned char lvtp_dynamic_smem_[]; \
  T* name = reinterpret_cast<T*>(lvtp_dynamic_smem_)
#else
#error "lvtp_cuda_launch.cuh: compile with nvcc, or for the host with the simt emulator (tests/simt)"
#endif
