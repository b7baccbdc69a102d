// CPU kernels of the scoring ops (spec steps 1 and 3), registered as lvtp_cpp::* beside the
// clustering ops of lvtp_cpu.cpp and used as the "cpp" backend of the public ops:
//
//   lvtp_cpp::attention_entropy == python_ref.attention_entropy (floats, to rounding)
//   lvtp_cpp::patch_edge_energy == python_ref.patch_edge_energy (floats, to rounding)
//
// attention_entropy: the two matrix products go to ATen (BLAS), the softmax too; one fused
// pass per attention row then accumulates every order at once, reading the row twice
// from L1: max of the logits s and of p, then sum p (s - m), sum sqrt p, sum p^2, sum p^3
// (other orders through exp(q ln p)). Shannon needs no log of p: with ln p = s - lse and
// lse = m - ln max(p), -sum p ln p = -ln max(p) - sum p (s - m), two non-negative terms.
// Unlike the GPU kernel, this one holds the N x N maps (B, H, N, N) in memory: on a CPU the
// map of a ViT layer is small next to its weights (B=8, H=3, N=301: 8.7 MB in fp32).
//
// patch_edge_energy: luma, replicate-padded Sobel, hypot, patch mean and the per-image
// normalisation in one pass per image row band, no intermediate image.

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace lvtp {
namespace {

using at::Tensor;

constexpr double kNearOne = 0.25;  // python_ref.ops.NEAR_ONE

// One attention row: p (normalised), s (logits) -> per-order normalised entropy added to out.
template <typename T>
void row_entropies(const T* p, const T* s, int64_t n, const std::vector<double>& qs, const std::vector<double>& smax,
                   T* out) {
  T m = -std::numeric_limits<T>::infinity(), pm = T(0);
  for (int64_t j = 0; j < n; ++j) {
    m = s[j] > m ? s[j] : m;
    pm = p[j] > pm ? p[j] : pm;
  }
  // accumulators in 8 lanes (vectorisable without reassociation flags), summed in lane order
  constexpr int L = 8;
  T a_sh[L] = {}, a_h[L] = {}, a_2[L] = {}, a_3[L] = {};
  int64_t j = 0;
  for (; j + L <= n; j += L) {
    for (int l = 0; l < L; ++l) {
      const T pj = p[j + l];
      const T p2 = pj * pj;
      a_sh[l] += pj * (s[j + l] - m);
      a_h[l] += std::sqrt(pj);
      a_2[l] += p2;
      a_3[l] += p2 * pj;
    }
  }
  for (int l = 0; j < n; ++j, ++l) {
    const T pj = p[j];
    const T p2 = pj * pj;
    a_sh[l] += pj * (s[j] - m);
    a_h[l] += std::sqrt(pj);
    a_2[l] += p2;
    a_3[l] += p2 * pj;
  }
  T sh = 0, h = 0, q2 = 0, q3 = 0;
  for (int l = 0; l < L; ++l) {
    sh += a_sh[l];
    h += a_h[l];
    q2 += a_2[l];
    q3 += a_3[l];
  }
  const T log_pm = std::log(pm);
  for (size_t k = 0; k < qs.size(); ++k) {
    const double q = qs[k];
    double ent;
    if (q == 1.0) {
      ent = -static_cast<double>(log_pm) - static_cast<double>(sh);
    } else if (q == 0.5) {
      ent = 1.0 - static_cast<double>(h);
    } else if (q == 2.0) {
      ent = 1.0 - static_cast<double>(q2);
    } else if (q == 3.0) {
      ent = 1.0 - static_cast<double>(q3);
    } else if (std::abs(q - 1.0) >= kNearOne) {  // p^q = exp(q ln p), ln p = s - m + ln max(p)
      T acc = 0;
      for (int64_t i = 0; i < n; ++i)
        if (p[i] > T(0)) acc += std::exp(static_cast<T>(q) * (s[i] - m + log_pm));
      ent = 1.0 - static_cast<double>(acc);
    } else {  // 1 - sum p^q = (1 - sum p) - sum p expm1((q - 1) ln p): no cancellation near 1
      double psum = 0.0;
      T t = 0;
      for (int64_t i = 0; i < n; ++i) {
        psum += static_cast<double>(p[i]);
        if (p[i] > T(0)) t += p[i] * std::expm1(static_cast<T>(q - 1.0) * (s[i] - m + log_pm));
      }
      ent = (1.0 - psum) - static_cast<double>(t);
    }
    out[k] += static_cast<T>(smax[k] != 0.0 ? ent / smax[k] : 0.0);
  }
}

std::tuple<Tensor, Tensor> attention_entropy_cpu(const Tensor& q, const Tensor& k, const Tensor& v,
                                                 at::ArrayRef<double> qs, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "lvtp_cpp.attention_entropy: q, k, v must be 4-D");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(2) == k.size(2) && q.size(3) == k.size(3) &&
                  v.size(0) == q.size(0) && v.size(1) == q.size(1) && v.size(2) == q.size(2),
              "lvtp_cpp.attention_entropy: q, k, v shapes disagree");
  TORCH_CHECK(!qs.empty(), "lvtp_cpp.attention_entropy: qs is empty");
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), Q = static_cast<int64_t>(qs.size());
  Tensor s = at::matmul(q.to(acc), k.to(acc).transpose(-1, -2)).mul_(scale).contiguous();  // (B, H, N, N)
  Tensor p = at::softmax(s, -1).contiguous();
  Tensor out = at::matmul(p, v.to(acc)).to(q.scalar_type());
  std::vector<double> qv(qs.begin(), qs.end()), smax(Q);
  const double logn = std::log(static_cast<double>(N));
  for (int64_t i = 0; i < Q; ++i) smax[i] = qv[i] == 1.0 ? logn : -std::expm1((1.0 - qv[i]) * logn);
  Tensor ent = at::zeros({B, N, Q}, s.options());  // head sum, then the mean
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "lvtp_cpp.attention_entropy", [&] {
    const scalar_t* pp = p.data_ptr<scalar_t>();
    const scalar_t* sp = s.data_ptr<scalar_t>();
    scalar_t* ep = ent.data_ptr<scalar_t>();
    // rows (b, i) in parallel; heads summed in order inside, so the result is thread-count independent
    at::parallel_for(0, B * N, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / N, i = r % N;
        scalar_t* o = ep + r * Q;
        for (int64_t h = 0; h < H; ++h) {
          const int64_t off = ((b * H + h) * N + i) * N;
          row_entropies<scalar_t>(pp + off, sp + off, N, qv, smax, o);
        }
        for (int64_t x = 0; x < Q; ++x) o[x] /= static_cast<scalar_t>(H);
      }
    });
  });
  return {out, ent.to(at::kFloat)};
}

Tensor patch_edge_energy_cpu(const Tensor& image_in, int64_t patch) {
  TORCH_CHECK(image_in.dim() == 4 && image_in.size(1) == 3, "lvtp_cpp.patch_edge_energy: image must be (B, 3, H, W)");
  TORCH_CHECK(patch >= 1 && patch <= image_in.size(2) && patch <= image_in.size(3),
              "lvtp_cpp.patch_edge_energy: patch must be in [1, min(H, W)]");
  const auto acc = image_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor img = image_in.to(acc).contiguous();
  const int64_t B = img.size(0), Hh = img.size(2), W = img.size(3);
  const int64_t h = Hh / patch, w = W / patch;
  Tensor e = at::empty({B, h * w}, img.options());
  AT_DISPATCH_FLOATING_TYPES(img.scalar_type(), "lvtp_cpp.patch_edge_energy", [&] {
    using T = scalar_t;
    const T l0 = static_cast<T>(0.299), l1 = static_cast<T>(0.587), l2 = static_cast<T>(0.114);
    const T* ip = img.data_ptr<T>();
    T* ep = e.data_ptr<T>();
    const int64_t plane = Hh * W;
    // (image, patch row) in parallel: luma of the patch rows plus one halo row each side
    at::parallel_for(0, B * h, 1, [&](int64_t t0, int64_t t1) {
      std::vector<T> y(static_cast<size_t>((patch + 2) * W));
      std::vector<T> rowsum(static_cast<size_t>(w));
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / h, pr = t % h;
        const T* r = ip + b * 3 * plane;
        const T* g = r + plane;
        const T* bl = g + plane;
        const int64_t y0 = pr * patch;
        for (int64_t yy = 0; yy < patch + 2; ++yy) {  // rows y0 - 1 .. y0 + patch, clamped (replicate)
          const int64_t src = std::min(std::max(y0 - 1 + yy, int64_t(0)), Hh - 1);
          T* dst = y.data() + yy * W;
          for (int64_t x = 0; x < W; ++x) {
            const int64_t o = src * W + x;
            dst[x] = l0 * r[o] + l1 * g[o] + l2 * bl[o];
          }
        }
        std::fill(rowsum.begin(), rowsum.end(), T(0));
        for (int64_t yy = 1; yy <= patch; ++yy) {
          const T* up = y.data() + (yy - 1) * W;
          const T* mid = y.data() + yy * W;
          const T* dn = y.data() + (yy + 1) * W;
          for (int64_t pc = 0; pc < w; ++pc) {
            T acc_ = 0;
            for (int64_t x = pc * patch; x < (pc + 1) * patch; ++x) {
              const int64_t xl = x > 0 ? x - 1 : 0, xr = x + 1 < W ? x + 1 : W - 1;
              // Gx = [-1 0 1; -2 0 2; -1 0 1] and Gy = Gx^T as cross-correlations
              const T gx = (up[xr] - up[xl]) + T(2) * (mid[xr] - mid[xl]) + (dn[xr] - dn[xl]);
              const T gy = (dn[xl] - up[xl]) + T(2) * (dn[x] - up[x]) + (dn[xr] - up[xr]);
              acc_ += std::hypot(gx, gy);
            }
            rowsum[pc] += acc_;
          }
        }
        const T cnt = static_cast<T>(patch * patch);
        for (int64_t pc = 0; pc < w; ++pc) ep[b * h * w + pr * w + pc] = rowsum[pc] / cnt;
      }
    });
    for (int64_t b = 0; b < B; ++b) {  // normalise per image: e / (max + 1e-6)
      T* eb = ep + b * h * w;
      T mx = eb[0];
      for (int64_t i = 1; i < h * w; ++i) mx = eb[i] > mx ? eb[i] : mx;
      const T den = mx + static_cast<T>(1e-6);
      for (int64_t i = 0; i < h * w; ++i) eb[i] = eb[i] / den;
    }
  });
  return e.to(at::kFloat);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lvtp_cpp, m) {
  m.def("attention_entropy(Tensor q, Tensor k, Tensor v, float[] qs, float scale) -> (Tensor out, Tensor ent)");
  m.def("patch_edge_energy(Tensor image, int patch) -> Tensor");
}

TORCH_LIBRARY_IMPL(lvtp_cpp, CPU, m) {
  m.impl("attention_entropy", &attention_entropy_cpu);
  m.impl("patch_edge_energy", &patch_edge_energy_cpu);
}

}  // namespace lvtp
