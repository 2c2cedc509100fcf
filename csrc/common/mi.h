// The Parzen-window math of fastwarp's mutual information, written once and compiled by g++
// (csrc/cpu/mi_cpu.cpp) and, when there is a CUDA kernel, by nvcc: where an intensity falls
// on the bin axis, its kernel weights on the bins and their derivatives.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "macros.h"

namespace fastwarp {

// Note [Parzen joint histogram]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// For one (batch, channel) pair of images a and b, B bins, and the voxels v (those of the
// mask, when one is given), the op fastwarp::mi_histogram returns the joint histogram
//   H[i][j] = sum_v w_i(u_a(v)) w_j(u_b(v))
// where u(x) is the intensity's position on the bin axis (bin k's centre at u = k) and w_k
// the Parzen weights, which sum to 1 over k for every u. So H sums to the voxel count, and
// p = H / sum(H) is the joint distribution from which fastwarp/mi.py forms the (normalized)
// mutual information. The intensity range [lo, hi] of each image is a constant here (the
// min and max by default, taken in Python): nothing is differentiated through it, as in
// ITK's Mattes metric.
//
// Kernel 0, cubic B-spline (Mattes et al. 2003, both images): w_k(u) = beta3(u - k), with
// support |u - k| < 2, so four bins per voxel. lo maps to u = 1 and hi to u = B - 2, i.e.
//   u = 1 + (x - lo) (B - 3) / (hi - lo),   clamped to [1, B - 2],
// which keeps every weight inside [0, B - 1] (so they sum to exactly 1) and uses all bins.
// (ITK and MONAI pad by 2 bins, [2, B - 3], and MONAI's "b-spline" uses a box kernel for
// its target image; here both images have the cubic one, so both get a gradient.)
//
// Kernel 1, Gaussian (MONAI's GlobalMutualInformationLoss "gaussian"): bin centres at
// (x - lo) / (hi - lo) = k / (B - 1), i.e.
//   u = (x - lo) (B - 1) / (hi - lo),   clamped to [0, B - 1],
//   g_k(u) = exp(-(u - k)^2 / (2 s^2)),  w_k = g_k / sum_j g_j
// with s = sigma in bins (MONAI's sigma_ratio; 0.5 by default), the sum over the bins within
// 6 s of u: the weights left out are below exp(-18) = 1.5e-8 of the largest, and the ones
// kept are normalized over themselves. With lo = 0 and hi = 1 this is MONAI's definition.
//
// Derivatives: dw_k/dx = w_k'(u) du/dx, du/dx = (B - 3) / (hi - lo) or (B - 1) / (hi - lo)
// inside the range and 0 where u was clamped (a constant image, hi = lo, maps to the lowest
// position with du/dx = 0). The Gaussian's normalized weight has
//   w_k' = (g_k' - w_k S') / S,   g_k' = -(u - k) / s^2 g_k,   S = sum g_j, S' = sum g_j'.
// So with G = dL/dH (the upstream gradient, B x B):
//   dL/da(v) = du_a/da sum_i w_i'(u_a) sum_j G[i][j] w_j(u_b)
// and symmetrically for b; nothing but the inputs, the ranges and G is needed.
//
// A voxel whose position is not finite (a NaN or Inf intensity, or a range that is not
// finite) adds NaN to H[0][0], so the MI comes out NaN, and gets a NaN gradient; no bin is
// addressed from it.

enum class ParzenKernel : int64_t { BSpline = 0, Gaussian = 1 };

// The most bins a voxel's weights may cover: 4 for the B-spline, floor(12 s) + 1 for the
// Gaussian (so s <= 2.5).
constexpr int kMaxParzenTaps = 32;
constexpr double kGaussianTruncation = 6.0;  // in units of s
constexpr double kMaxGaussianSigma = 2.5;

// Where an image's intensities fall on the bin axis: u = offset + (x - lo) scale, clamped to
// [u_min, u_max].
template <typename T>
struct BinAxis {
  T lo, scale, u_min, u_max;

  FASTWARP_HD static BinAxis make(ParzenKernel kernel, int64_t bins, T lo, T hi) {
    const bool bspline = kernel == ParzenKernel::BSpline;
    const T intervals = static_cast<T>(bspline ? bins - 3 : bins - 1);
    BinAxis ax;
    ax.lo = lo;
    // hi == lo (a constant image): every voxel at u_min with a zero derivative; a range that
    // is not finite gives a NaN scale, and so NaN positions.
    ax.scale = hi > lo ? intervals / (hi - lo) : (hi == lo ? T(0) : T(NAN));
    ax.u_min = bspline ? T(1) : T(0);
    ax.u_max = ax.u_min + intervals;
    return ax;
  }

  // The position of x, and du/dx (0 where clamped). Returns false where it is not finite.
  FASTWARP_HD bool position(T x, T& u, T& du) const {
    const T raw = u_min + (x - lo) * scale;
    if (!(raw - raw == T(0))) return false;  // NaN or Inf
    if (raw < u_min) {
      u = u_min;
      du = T(0);
    } else if (raw > u_max) {
      u = u_max;
      du = T(0);
    } else {
      u = raw;
      du = scale;
    }
    return true;
  }
};

// The weights of one position on the bins first .. first + count - 1, and their
// derivatives in u.
template <typename T>
struct ParzenWeights {
  int64_t first;
  int count;
  T w[kMaxParzenTaps];
  T dw[kMaxParzenTaps];
};

// The cubic B-spline's four weights around u in [1, bins - 2], on bins k0 .. k0 + 3, and their
// derivatives in u: with i = floor(u) (but bins - 3 at u = bins - 2, whose fourth weight would
// fall on bin `bins` and is 0: there f = 1 instead) and f = u - i, k0 = i - 1 and
//   w = ((1-f)^3, 3f^3 - 6f^2 + 4, -3f^3 + 3f^2 + 3f + 1, f^3) / 6.
template <typename T>
FASTWARP_HD int64_t bspline_weights(T u, int64_t bins, T* w, T* dw) {
  int64_t i = static_cast<int64_t>(std::floor(u));
  if (i > bins - 3) i = bins - 3;
  const T f = u - static_cast<T>(i), g = T(1) - f;
  const T f2 = f * f, f3 = f2 * f, sixth = T(1) / T(6);
  w[0] = g * g * g * sixth;
  w[1] = (T(3) * f3 - T(6) * f2 + T(4)) * sixth;
  w[2] = (T(-3) * f3 + T(3) * f2 + T(3) * f + T(1)) * sixth;
  w[3] = f3 * sixth;
  // The slopes cost four multiply-adds; computing them always keeps both arrays in registers
  // on the GPU (a pointer chosen at run time would put them in local memory).
  dw[0] = T(-0.5) * g * g;
  dw[1] = T(1.5) * f2 - T(2) * f;
  dw[2] = T(-1.5) * f2 + f + T(0.5);
  dw[3] = T(0.5) * f2;
  return i - 1;
}

// The kernel of one call, with the Gaussian's constants: c = 1 / (2 s^2), its support's
// radius 6 s, and exp(-2 c), the ratio of the recurrence below.
template <typename T>
struct Parzen {
  ParzenKernel kernel;
  int64_t bins;
  T radius, c, step;

  static Parzen make(ParzenKernel kernel, int64_t bins, T sigma) {
    const T c = T(1) / (T(2) * sigma * sigma);
    return {kernel, bins, static_cast<T>(kGaussianTruncation) * sigma, c, std::exp(T(-2) * c)};
  }
};

// Note [Fixed-width Parzen loops]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// The per-voxel loops below run over a fixed number W of bins per voxel and image, known at
// compile time, so that they unroll (and vectorize on the CPU): 4 for the B-spline, and for the
// Gaussian the smallest of 8, 16, 32 that holds its floor(12 s) + 1 bins (parzen_width), the
// weights past a voxel's own count set to 0. Those may address up to W - 1 bins past the last,
// so every backend lays the histograms (and the upstream gradient G, in the backward) out with
// rows and columns of S >= bins + W (mi_row_stride), the margin cropped at the end (it holds
// only zeros). The
// CPU (csrc/cpu/mi_cpu.cpp) and CUDA (csrc/cuda/mi_cuda.cu) kernels differ only in where a
// voxel's W x W products go (a run's own histogram; a block's shared one, by atomics) and in how
// voxels are split among threads.

// The rows' length S of the histograms and of G: at least bins + W, and 8 more than a
// multiple of 32. On the GPU the 32 banks of shared memory then hold the cells of rows r and
// r + d at columns 8 d apart (mod 32), so the threads of a warp, whose voxels have similar
// intensities and so read and add at nearby cells (within 3 rows and 6 columns of each other),
// never meet in one bank at two addresses (with S = bins + W = 36, rows 1 apart and columns 4
// apart would). The CPU takes the same layout (one copy of it).
FASTWARP_HD int64_t mi_row_stride(int64_t bins, int W) {
  const int64_t s = bins + W;
  return s + ((8 - s % 32) % 32 + 32) % 32;
}

// W for a kernel (the Gaussian's for its sigma, in bins).
inline int parzen_width(ParzenKernel k, double sigma) {
  if (k == ParzenKernel::BSpline) return 4;
  const int count = static_cast<int>(std::floor(2 * kGaussianTruncation * sigma)) + 1;  // the most bins in 12 s
  return count <= 8 ? 8 : count <= 16 ? 16 : kMaxParzenTaps;
}

// f(kernel, width) with both as compile-time constants (std::integral_constant).
template <typename F>
void with_parzen_width(ParzenKernel k, double sigma, const F& f) {
  using KC = ParzenKernel;
  switch (parzen_width(k, sigma)) {
    case 4:
      f(std::integral_constant<KC, KC::BSpline>{}, std::integral_constant<int, 4>{});
      return;
    case 8:
      f(std::integral_constant<KC, KC::Gaussian>{}, std::integral_constant<int, 8>{});
      return;
    case 16:
      f(std::integral_constant<KC, KC::Gaussian>{}, std::integral_constant<int, 16>{});
      return;
    default:
      f(std::integral_constant<KC, KC::Gaussian>{}, std::integral_constant<int, kMaxParzenTaps>{});
  }
}

// The Parzen weights of position u and their slopes in u (when ``slopes``; the B-spline's
// always) on exactly W entries, bins first .. first + W - 1, those past the voxel's own count
// 0. The Gaussian's loop
// runs over all W with the count as a predicate (its recurrence stops there, so nothing
// underflows to subnormals), so that every index is a constant once unrolled: on the GPU the
// weights stay in registers rather than local memory.
template <ParzenKernel K, int W, typename T>
FASTWARP_HD void fixed_width_weights(const Parzen<T>& pz, T u, bool slopes, ParzenWeights<T>& pw) {
  static_assert(W <= kMaxParzenTaps, "W is at most kMaxParzenTaps");
  if constexpr (K == ParzenKernel::BSpline) {
    static_assert(W == 4, "the B-spline covers 4 bins");
    pw.first = bspline_weights(u, pz.bins, pw.w, pw.dw);
    pw.count = 4;
  } else {
    const T radius = pz.radius;
    int64_t k0 = static_cast<int64_t>(std::ceil(u - radius));
    int64_t k1 = static_cast<int64_t>(std::floor(u + radius));
    if (k0 < 0) k0 = 0;
    if (k1 > pz.bins - 1) k1 = pz.bins - 1;
    int n = static_cast<int>(k1 - k0 + 1);
    if (n > W) n = W;  // unreachable: W holds floor(12 s) + 1 (parzen_width)
    pw.first = k0;
    pw.count = n;
    // the bins within 6 s of u; g_t = exp(-d_t^2 c), d_t = u - k0 - t, c = 1 / (2 s^2), by the
    // recurrence g_{t+1} = g_t q_t, q_t = exp((2 d_t - 1) c), q_{t+1} = q_t exp(-2 c): two
    // exponentials per voxel instead of one per bin (exp(-2 c) is the call's), every factor
    // within [e^-18, e^18] on the support
    const T c = pz.c, step = pz.step;
    const T d0 = u - static_cast<T>(k0);
    T g = std::exp(-d0 * d0 * c), q = std::exp((T(2) * d0 - T(1)) * c);
    T sum = T(0), dsum = T(0);
    for (int t = 0; t < W; ++t) {
      const bool in = t < n;
      const T gt = in ? g : T(0);
      const T dgt = T(-2) * (d0 - static_cast<T>(t)) * c * gt;
      pw.w[t] = gt;
      pw.dw[t] = dgt;
      sum += gt;
      dsum += dgt;
      if (in) {
        g *= q;
        q *= step;
      }
    }
    const T inv = T(1) / sum;
    for (int t = 0; t < W; ++t) {
      pw.w[t] *= inv;
      if (slopes) pw.dw[t] = (pw.dw[t] - pw.w[t] * dsum) * inv;
    }
  }
}

// The two images' bin axes of one (batch, channel) pair, from its range [lo_a, hi_a, lo_b, hi_b].
template <typename T>
struct PairAxes {
  BinAxis<T> a, b;

  template <typename R>
  FASTWARP_HD static PairAxes make(const R* range, ParzenKernel kernel, int64_t bins) {
    return {BinAxis<T>::make(kernel, bins, static_cast<T>(range[0]), static_cast<T>(range[1])),
            BinAxis<T>::make(kernel, bins, static_cast<T>(range[2]), static_cast<T>(range[3]))};
  }
};

// One voxel of the forward: add(cell, value) for its W x W products w_i(u_a) w_j(u_b), cell
// the offset in a histogram of rows of S (Note [Fixed-width Parzen loops]). A voxel whose
// position is not finite adds NaN to cell 0 instead (Note [Parzen joint histogram]). wa and wb
// are scratch, the caller's (kept out of its voxel loop).
FASTWARP_EXEC_CHECK_DISABLE
template <ParzenKernel K, int W, typename T, typename Add>
FASTWARP_HD void add_voxel(const Parzen<T>& pz, const PairAxes<T>& ax, T a, T b, int64_t S, ParzenWeights<T>& wa,
                           ParzenWeights<T>& wb, Add&& add) {
  T ua, dua, ub, dub;
  if (!ax.a.position(a, ua, dua) || !ax.b.position(b, ub, dub)) {
    add(int64_t(0), std::numeric_limits<T>::quiet_NaN());
    return;
  }
  fixed_width_weights<K, W>(pz, ua, false, wa);
  fixed_width_weights<K, W>(pz, ub, false, wb);
  const int64_t corner = wa.first * S + wb.first;
  for (int i = 0; i < W; ++i) {
    const T wi = wa.w[i];
    for (int j = 0; j < W; ++j) add(corner + i * S + j, wi * wb.w[j]);
  }
}

// One voxel of the backward: dL/da and dL/db from G (rows of S), as wanted:
//   dL/da = du_a/da sum_i w_i'(u_a) t_a[i],  t_a[i] = sum_j G[i][j] w_j(u_b)
// and symmetrically (Note [Parzen joint histogram]); NaN for a position that is not finite.
// wa and wb are scratch, as in add_voxel.
template <ParzenKernel K, int W, typename T>
FASTWARP_HD void voxel_gradient(const Parzen<T>& pz, const PairAxes<T>& ax, T a, T b, const T* g, int64_t S,
                                bool want_a, bool want_b, ParzenWeights<T>& wa, ParzenWeights<T>& wb, T& da,
                                T& db) {
  T ua, dua, ub, dub;
  if (!ax.a.position(a, ua, dua) || !ax.b.position(b, ub, dub)) {
    da = db = std::numeric_limits<T>::quiet_NaN();
    return;
  }
  fixed_width_weights<K, W>(pz, ua, want_a, wa);
  fixed_width_weights<K, W>(pz, ub, want_b, wb);
  T ta[W], tb[W];
  const T* corner = g + wa.first * S + wb.first;
  for (int j = 0; j < W; ++j) tb[j] = T(0);
  for (int i = 0; i < W; ++i) {
    const T* row = corner + i * S;
    T t = T(0);
    for (int j = 0; j < W; ++j) {
      t += row[j] * wb.w[j];
      tb[j] += row[j] * wa.w[i];
    }
    ta[i] = t;
  }
  T sa = T(0), sb = T(0);
  if (want_a) {
    for (int i = 0; i < W; ++i) sa += wa.dw[i] * ta[i];
  }
  if (want_b) {
    for (int j = 0; j < W; ++j) sb += wb.dw[j] * tb[j];
  }
  da = sa * dua;
  db = sb * dub;
}

}  // namespace fastwarp
