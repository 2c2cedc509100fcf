// The windowed NCC of fastwarp, written once and compiled by g++ and nvcc: the box sum of
// one line, the five window sums -> local coefficient (plain sums in double on the CPU,
// shifted sums on the GPU), and the coefficients of its analytic backward.
// csrc/cpu/ncc_cpu.cpp and csrc/cuda/ncc_cuda.cu only loop.
#pragma once

#include <cmath>
#include <cstdint>

#include "macros.h"

namespace fastwarp {

// Note [Windowed NCC]
// ~~~~~~~~~~~~~~~~~~~
// For images I and J (one channel of one batch element at a time) and a window of n voxels
// centred on each voxel p (zero padding outside the image, so n is the same everywhere),
// with S_X(p) the sum of X over the window:
//   cross = S_IJ - S_I S_J / n
//   var_I = S_II - S_I^2 / n,   var_J = S_JJ - S_J^2 / n
//   cc    = cross^2 / (var_I var_J + eps)
// which is VoxelMorph's and neurite's local NCC (their u_I = S_I / n form expands to this).
//
// Cancellation: S_II - S_I^2 / n subtracts two numbers of size n * mean^2 to get one of
// size n * variance; for intensities around 1000 with unit local variance that loses six
// digits. The sums are therefore accumulated and stored in double (whatever the input
// dtype), which keeps ~10 significant digits there; tests/test_ncc.py checks images offset
// by +1000 against a float64 reference.
//
// Backward: cc(p) depends on the five sums at p, and each sum on the voxels q of the window
// around p, so with g(p) the upstream gradient and f_X = g * d(cc)/d(S_X):
//   d/dI(q) = sum over p in window(q) of [f_I(p) + 2 I(q) f_II(p) + J(q) f_IJ(p)]
//           = B[f_I](q) + 2 I(q) B[f_II](q) + J(q) B[f_IJ](q)
// where B[.] is the same box sum (the window is symmetric; p outside the image contributes
// nothing, i.e. zero padding again), and likewise for J with f_J, f_JJ, f_IJ. So the
// backward is: recompute the five sums, turn them into three (or five) coefficient maps,
// box-sum those, and combine. Nothing but the inputs is kept from the forward.
// With D = var_I var_J + eps:
//   d(cc)/d(cross) = 2 cross / D
//   d(cc)/d(var_I) = -cross^2 var_J / D^2,  d(cc)/d(var_J) = -cross^2 var_I / D^2
//   f_IJ = d(cc)/d(cross),  f_II = d(cc)/d(var_I),  f_JJ = d(cc)/d(var_J)
//   f_I  = -(S_J / n) d(cc)/d(cross) - (2 S_I / n) d(cc)/d(var_I), f_J symmetrically.

// Box sums along R lines at once (lines `line_stride` apart): dst[i] = sum of src[j] for
// |j - i| <= half, 0 <= j < len, by running sums (O(1) per voxel whatever the window). The
// R running sums are independent chains, which the CPU overlaps (a single running sum is
// bound by the latency of its add-subtract chain). src and dst are distinct.
template <int R>
FASTWARP_HD void box_sum_lines(const double* src, double* dst, int64_t len, int64_t stride,
                               int64_t half, int64_t line_stride) {
  double acc[R];
FASTWARP_UNROLL
  for (int r = 0; r < R; ++r) acc[r] = 0.0;
  const int64_t first = half < len - 1 ? half : len - 1;
  for (int64_t j = 0; j <= first; ++j) {
FASTWARP_UNROLL
    for (int r = 0; r < R; ++r) acc[r] += src[r * line_stride + j * stride];
  }
  for (int64_t i = 0; i < len; ++i) {
    const int64_t enter = i + half + 1;
    const int64_t leave = i - half;
FASTWARP_UNROLL
    for (int r = 0; r < R; ++r) {
      dst[r * line_stride + i * stride] = acc[r];
      if (enter < len) acc[r] += src[r * line_stride + enter * stride];
      if (leave >= 0) acc[r] -= src[r * line_stride + leave * stride];
    }
  }
}

FASTWARP_HD void box_sum_line(const double* src, double* dst, int64_t len, int64_t stride,
                              int64_t half) {
  box_sum_lines<1>(src, dst, len, stride, half, 0);
}

// Note [Shifted window sums]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~
// The GPU kernels' running sums (Note [Tiled NCC on the GPU]) add and subtract planes over
// a whole chunk, so they cannot afford the cancellation of Note [Windowed NCC] on raw
// values. They sum x' = x - c_I and y' = y - c_J instead,
// for reference values c_I, c_J taken from the image itself (one pair per thread block),
// over the m in-image voxels of the window (the n - m padded ones add nothing). With
// s_X the shifted sums and k = (n - m) / n, the fraction of the window outside the image:
//   S_I  = s_I + c_I m,            S_II = s_II + 2 c_I s_I + c_I^2 m,   (likewise J, IJ)
//   cross = [n s_IJ - s_I s_J] / n + k (c_I s_J + c_J s_I + c_I c_J m)
//   var_I = [n s_II - s_I^2] / n   + k (2 c_I s_I + c_I^2 m)
// exactly. Inside the image (k = 0, computed from the integer count n - m, so exactly 0)
// only the bracket remains: the same formula on values shifted by c. At the borders the k
// terms are large, but so is the variance the zero padding creates, and they add to it
// rather than cancel.
//
// The bracket does not cancel only where the window's values are close to c. One c serves
// a whole tile and chunk, and a tile can mix values far apart: CT's air at -1024 beside
// tissue at 40, where the windows in the air are flat (variance 0, cc 0) but sit 1064 from
// c; or a ramp of 1000 along a chunk. There s_II and s_I^2 / n are each about n (x - c)^2
// (~8e8 for a 9^3 window) and their difference, the variance, is the rounding of that:
// ~50 in float32, which turned cc from 0 into up to 1e7 (an independent emulated check
// found it). In float64 it is ~1e-7, and cc's error (its square over eps, 1e-5) ~1e-9; so
// the GPU kernels accumulate in float64 whatever the input's dtype, and the shift still
// keeps what is left of the cancellation at the size of the tile's spread rather than of
// the values. The GPU kernels take c with few significant bits (csrc/cuda/ncc_cuda.cu,
// coarse()), so that values exact in few bits (CT's integer HU) stay so after the shift:
// then the products in the sums, and the brackets in the form above, are exact, and a flat
// window's variance and cross are exactly 0. That matters for the gradient, not for cc: where
// one image is flat its gradient is the rounding of cross over eps (1e5 times it), which was
// ~0.1 against a largest true gradient of ~0.03. cc is a function of the
// shifted sums, so the backward differentiates it with respect to them (with c, m, k
// constant): f_X = g * d(cc)/d(s_X), and the gradient at q is
//   B[f_I](q) + 2 (I(q) - c_I) B[f_II](q) + (J(q) - c_J) B[f_IJ](q),
// which does not depend on c as long as one block uses one c for every p it sums. With
// c = 0 and k = 0 all of this is Note [Windowed NCC] (what the CPU computes, in double).

// The five window sums of one voxel, of values shifted by the references (0 for plain sums).
template <typename T>
struct WindowSums {
  T i, j, ii, jj, ij;
};
using NccSums = WindowSums<double>;

// The reference values of the shift and the padding of one window.
template <typename T>
struct WindowFrame {
  T c_i, c_j;   // references subtracted from I and J
  T m;          // in-image voxels in the window
  T outside_n;  // (n - m) / n, exact zero inside the image
  T n;          // the window's nominal voxel count
};

template <typename T>
struct NccMoments {
  T cross, var_i, var_j;
};

// The brackets are formed as (n s_IJ - s_I s_J) / n: where the window's values are exact in
// few bits (CT's integer HU, and the shifts of Note [Shifted window sums] keep them so), both
// products are exact and a flat window's cross and variance come out exactly 0. As
// s_IJ - s_I s_J / n, the rounding of the division left ~1e-9 there, which the gradient's
// 1 / eps (the variance being 0) turned into gradients of ~0.1 where the exact one is 0.
template <typename T>
FASTWARP_HD NccMoments<T> ncc_moments(const WindowSums<T>& s, T inv_n, const WindowFrame<T>& f) {
  const T k = f.outside_n;
  NccMoments<T> r;
  r.cross = (f.n * s.ij - s.i * s.j) * inv_n + k * (f.c_i * s.j + f.c_j * s.i + f.c_i * f.c_j * f.m);
  r.var_i = (f.n * s.ii - s.i * s.i) * inv_n + k * (T(2) * f.c_i * s.i + f.c_i * f.c_i * f.m);
  r.var_j = (f.n * s.jj - s.j * s.j) * inv_n + k * (T(2) * f.c_j * s.j + f.c_j * f.c_j * f.m);
  return r;
}

// The frame of plain (unshifted) sums: the CPU's (n from 1 / n, exact for any window).
template <typename T>
FASTWARP_HD WindowFrame<T> plain_frame(T inv_n) {
  return WindowFrame<T>{T(0), T(0), T(0), T(0), round(T(1) / inv_n)};
}

template <typename T>
FASTWARP_HD T ncc_value(const WindowSums<T>& s, T inv_n, T eps, const WindowFrame<T>& f) {
  const NccMoments<T> v = ncc_moments(s, inv_n, f);
  return v.cross * v.cross / (v.var_i * v.var_j + eps);
}

FASTWARP_HD double ncc_value(const NccSums& s, double inv_n, double eps) {
  return ncc_value(s, inv_n, eps, plain_frame<double>(inv_n));
}

// g * d(cc)/d(s_X) for the five sums (Note [Windowed NCC], Note [Shifted window sums]).
template <typename T>
struct Coefficients {
  T i, j, ii, jj, ij;
};
using NccCoefficients = Coefficients<double>;

template <typename T>
FASTWARP_HD Coefficients<T> ncc_coefficients(const WindowSums<T>& s, T inv_n, T eps, T g,
                                             const WindowFrame<T>& fr) {
  const NccMoments<T> v = ncc_moments(s, inv_n, fr);
  const T inv_d = T(1) / (v.var_i * v.var_j + eps);
  const T d_cross = T(2) * v.cross * inv_d * g;
  const T c2d2 = v.cross * v.cross * inv_d * inv_d * g;
  const T d_var_i = -c2d2 * v.var_j;
  const T d_var_j = -c2d2 * v.var_i;
  const T k = fr.outside_n;
  Coefficients<T> f;
  f.ij = d_cross;
  f.ii = d_var_i;
  f.jj = d_var_j;
  // d(cross)/d(s_I) = -s_J / n + k c_J,  d(var_I)/d(s_I) = -2 s_I / n + 2 k c_I
  f.i = (k * fr.c_j - s.j * inv_n) * d_cross + T(2) * (k * fr.c_i - s.i * inv_n) * d_var_i;
  f.j = (k * fr.c_i - s.i * inv_n) * d_cross + T(2) * (k * fr.c_j - s.j * inv_n) * d_var_j;
  return f;
}

FASTWARP_HD NccCoefficients ncc_coefficients(const NccSums& s, double inv_n, double eps, double g) {
  return ncc_coefficients(s, inv_n, eps, g, plain_frame<double>(inv_n));
}

// Voxels of the window centred at p along an axis of `size` that lie inside the image.
FASTWARP_HD int64_t window_inside(int64_t p, int64_t half, int64_t size) {
  const int64_t lo = p - half < 0 ? 0 : p - half;
  const int64_t hi = p + half > size - 1 ? size - 1 : p + half;
  return hi - lo + 1;
}

// Gradient at voxel q from the box-summed coefficient maps: B[f_X] for X = self, self^2,
// cross, with `self` the image being differentiated and `other` the other one (both shifted
// by their references, Note [Shifted window sums]).
template <typename T>
FASTWARP_HD T ncc_input_grad(T b_self, T b_self2, T b_cross, T self, T other) {
  return b_self + T(2) * self * b_self2 + other * b_cross;
}

}  // namespace fastwarp
