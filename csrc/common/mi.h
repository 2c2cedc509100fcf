// The Parzen-window math of fastwarp's mutual information, written once and compiled by g++
// (csrc/cpu/mi_cpu.cpp) and, when there is a CUDA kernel, by nvcc: where an intensity falls
// on the bin axis, its kernel weights on the bins and their derivatives.
#pragma once

#include <cmath>
#include <cstdint>

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

template <typename T>
FASTWARP_HD void parzen_weights(const Parzen<T>& pz, T u, bool want_slopes, ParzenWeights<T>& pw) {
  const int64_t bins = pz.bins;
  if (pz.kernel == ParzenKernel::BSpline) {  // bins >= 4
    pw.first = bspline_weights(u, bins, pw.w, pw.dw);
    pw.count = 4;
    return;
  }
  // the bins within 6 s of u
  const T radius = pz.radius;
  int64_t k0 = static_cast<int64_t>(std::ceil(u - radius));
  int64_t k1 = static_cast<int64_t>(std::floor(u + radius));
  if (k0 < 0) k0 = 0;
  if (k1 > bins - 1) k1 = bins - 1;
  int n = static_cast<int>(k1 - k0 + 1);
  if (n > kMaxParzenTaps) n = kMaxParzenTaps;  // unreachable for sigma <= kMaxGaussianSigma
  pw.first = k0;
  pw.count = n;
  // g_t = exp(-d_t^2 c), d_t = u - k0 - t, c = 1 / (2 s^2), by the recurrence
  // g_{t+1} = g_t q_t, q_t = exp((2 d_t - 1) c), q_{t+1} = q_t exp(-2 c): three exponentials
  // per voxel instead of one per bin (two: exp(-2 c) is the call's) (every factor is within [e^-18, e^18] on the support).
  const T c = pz.c, step = pz.step;
  const T d0 = u - static_cast<T>(k0);
  T g = std::exp(-d0 * d0 * c), q = std::exp((T(2) * d0 - T(1)) * c);
  T sum = T(0), dsum = T(0);
  for (int t = 0; t < n; ++t) {
    const T d = d0 - static_cast<T>(t);
    pw.w[t] = g;
    pw.dw[t] = T(-2) * d * c * g;
    sum += g;
    dsum += pw.dw[t];
    g *= q;
    q *= step;
  }
  const T inv = T(1) / sum;
  for (int t = 0; t < n; ++t) {
    pw.w[t] *= inv;
    if (want_slopes) pw.dw[t] = (pw.dw[t] - pw.w[t] * dsum) * inv;
  }
}

}  // namespace fastwarp
