// Common prologue of the CPU kernel TUs (csrc/*_cpu.cpp); include it FIRST.
//
// Ops: none itself. It sets up what every CPU kernel file shares:
//   * light ATen headers: method operators of at::Tensor plus the per-operator headers each
//     file includes itself (<ATen/ops/NAME.h>), never <ATen/ATen.h>, <torch/torch.h> or
//     <torch/extension.h> (those belong to csrc/bind_cpu.cpp only). TORCH_ASSERT_ONLY_METHOD_OPERATORS
//     makes an accidental include of ATen/Functions.h a compile error.
//   * LVTP_CLONES: hot loops get AVX-512 / AVX2 clones chosen at load time; the baseline
//     build stays plain x86-64. Contraction is off (setup.py: -ffp-contract=off), so every
//     clone rounds identically: precision and determinism do not depend on the CPU.
//   * LVTP_ALWAYS_INLINE.
// Dtypes, shapes and limits: see each kernel file and lvtp_ops.h.
#pragma once

#ifndef TORCH_ASSERT_ONLY_METHOD_OPERATORS
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#endif
#ifndef AT_PER_OPERATOR_HEADERS
#define AT_PER_OPERATOR_HEADERS
#endif

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>

#include "lvtp_fmt.h"
#include "lvtp_ops.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(LVTP_NO_CLONES)
#define LVTP_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LVTP_CLONES
#endif
#if defined(__GNUC__)
#define LVTP_ALWAYS_INLINE __attribute__((always_inline))
#else
#define LVTP_ALWAYS_INLINE
#endif
