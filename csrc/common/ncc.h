// The windowed NCC of fastwarp, written once and compiled by g++ and nvcc: the box sum of
// one line, the five window sums -> local coefficient, and the coefficients of its
// analytic backward. csrc/cpu/ncc_cpu.cpp and csrc/cuda/ncc_cuda.cu only loop.
#pragma once

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

// Geometry of a batch of M = N * C volumes laid out contiguously, (M, *size).
struct VolumeGeometry {
  int64_t ndim;
  int64_t size[3];
  int64_t stride[3];  // contiguous strides of one volume
  int64_t voxels;     // per volume
};

// First element of line `l` along axis k (lines enumerate (volume, other axes) in order).
FASTWARP_HD int64_t line_start(const VolumeGeometry& g, int k, int64_t l) {
  int64_t start = 0;
  for (int j = static_cast<int>(g.ndim) - 1; j >= 0; --j) {
    if (j == k) continue;
    start += (l % g.size[j]) * g.stride[j];
    l /= g.size[j];
  }
  return start + l * g.voxels;
}

// Element offset in a strided (N, C, *size) tensor of contiguous index i of the batch.
struct StridedVolume {
  int64_t channels;
  int64_t stride_n, stride_c, stride[3];
};

FASTWARP_HD int64_t strided_offset(const VolumeGeometry& g, const StridedVolume& t, int64_t i) {
  int64_t off = 0;
  for (int j = static_cast<int>(g.ndim) - 1; j >= 0; --j) {
    off += (i % g.size[j]) * t.stride[j];
    i /= g.size[j];
  }
  return off + (i % t.channels) * t.stride_c + (i / t.channels) * t.stride_n;
}

// The five window sums of one voxel.
struct NccSums {
  double i, j, ii, jj, ij;
};

FASTWARP_HD double ncc_value(const NccSums& s, double inv_n, double eps) {
  const double cross = s.ij - s.i * s.j * inv_n;
  const double var_i = s.ii - s.i * s.i * inv_n;
  const double var_j = s.jj - s.j * s.j * inv_n;
  return cross * cross / (var_i * var_j + eps);
}

// g * d(cc)/d(S_X) for the five sums (Note [Windowed NCC]).
struct NccCoefficients {
  double i, j, ii, jj, ij;
};

FASTWARP_HD NccCoefficients ncc_coefficients(const NccSums& s, double inv_n, double eps, double g) {
  const double cross = s.ij - s.i * s.j * inv_n;
  const double var_i = s.ii - s.i * s.i * inv_n;
  const double var_j = s.jj - s.j * s.j * inv_n;
  const double inv_d = 1.0 / (var_i * var_j + eps);
  const double d_cross = 2.0 * cross * inv_d * g;
  const double c2d2 = cross * cross * inv_d * inv_d * g;
  const double d_var_i = -c2d2 * var_j;
  const double d_var_j = -c2d2 * var_i;
  NccCoefficients f;
  f.ij = d_cross;
  f.ii = d_var_i;
  f.jj = d_var_j;
  f.i = -(s.j * inv_n) * d_cross - (2.0 * s.i * inv_n) * d_var_i;
  f.j = -(s.i * inv_n) * d_cross - (2.0 * s.j * inv_n) * d_var_j;
  return f;
}

// Gradient at voxel q from the box-summed coefficient maps: B[f_X] for X = self, self^2,
// cross, with `self` the image being differentiated and `other` the other one.
FASTWARP_HD double ncc_input_grad(double b_self, double b_self2, double b_cross, double self,
                                  double other) {
  return b_self + 2.0 * self * b_self2 + other * b_cross;
}

}  // namespace fastwarp
