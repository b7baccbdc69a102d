// Shared constants of the compiled lvtp clustering ops (C++ and CUDA).
//
// Every number here mirrors python_ref/ops.py; keep them in sync.
#pragma once

#include <cstdint>

namespace lvtp {

// python_ref.ops.TIE_RTOL: two_means_split counts split costs within
// TIE_RTOL * m * sum(u^2) of the least one as tied (ties go to the smaller split).
constexpr double kTieRtol = 1e-12;

// python_ref select: L2 normalisation divides by max(norm, kNormEps).
constexpr double kNormEps = 1e-12;

// Token classes of the selection order (step 5.3): representatives, salient, plain.
constexpr int kClassRep = 0;
constexpr int kClassSalient = 1;
constexpr int kClassPlain = 2;

// python_ref.ops.budget: K = max(1, floor(keep_ratio * (N - P) + 0.5)).
inline int64_t budget(int64_t n_tokens, int64_t num_protected, double keep_ratio) {
  const double v = keep_ratio * static_cast<double>(n_tokens - num_protected) + 0.5;
  int64_t k = static_cast<int64_t>(v);  // v > 0: truncation is floor
  if (static_cast<double>(k) > v) --k;
  return k < 1 ? 1 : k;
}

}  // namespace lvtp
