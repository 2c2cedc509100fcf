// The sampling math of fastwarp, written once and compiled by g++ and nvcc.
//
// Everything that decides *what* is computed lives here: the map from a coordinate value
// to a source index (voxel-unit displacement or normalized grid), the padding transforms
// and their derivatives (each `_set_grad` function returns d(out)/d(in) alongside its
// value, as in ATen's GridSampler.h), the interpolation weights, and the per-point bodies
// of the forward and backward passes. csrc/cpu and csrc/cuda only decide *how* the points
// are looped over (at::parallel_for rows, or one CUDA thread per point) and how gradient
// contributions to the image are accumulated.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "macros.h"

namespace fastwarp {

// Mirrored by the string tables in fastwarp/_ops.py.
enum class Interp : int64_t { Linear = 0, Nearest = 1 };
enum class Padding : int64_t { Zeros = 0, Border = 1, Reflection = 2 };

// Note [Coordinate conventions]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// Images are (N, C, *spatial) with spatial = (H, W) or (D, H, W). A point is sampled at a
// *source index* x_k along each spatial axis k (k = 0 is the slowest axis, D or H), in
// voxel units: x_k = 0 is the centre of the first voxel, x_k = size_k - 1 the last.
//
// * warp (displacement field, VoxelMorph's convention): disp is (N or 1, NDIM, *spatial)
//   and channel k displaces axis k, so  x_k = pos_k + disp[k](pos).
//   This is grid_sample(align_corners=True) on the normalized grid VoxelMorph builds,
//   without building it.
// * grid_sample (normalized grid): grid is (N, *out_spatial, NDIM) whose last dimension
//   holds (x, y[, z]) = (W, H[, D]), i.e. component NDIM-1-k addresses axis k, in [-1, 1]:
//     align_corners=True : -1 and +1 are the centres of the corner voxels,
//                          x = (v + 1) / 2 * (size - 1)
//     align_corners=False: -1 and +1 are the outer edges of the corner voxels,
//                          x = ((v + 1) * size - 1) / 2
// The grid's map is computed with the operations of ATen's grid_sampler_unnormalize, in its
// order (unnormalize below), so that a sample landing on or just beside a voxel centre or
// border rounds to the same side as in torch's grid_sample, and the float64 results agree to
// the last bit; d(x)/d(v) is scale_k = (size - 1) / 2 or size / 2.
//
// Padding (same meaning as grid_sample): "zeros" reads 0 outside the image; "border"
// clamps x to [0, size-1]; "reflection" reflects x about the image bounds (the corner
// voxel centres under align_corners=True, which warp always uses; the outer edges
// otherwise) and then clamps.
//
// Note [Non-finite and far-away coordinates]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// After padding, a source index that is NaN (NaN input, or Inf through reflection) or
// that lies more than one voxel outside the image can touch no voxel: the point reads 0
// and contributes no gradient, in every padding mode. The test `x > -2 && x < size + 1`
// is false for NaN, so it also keeps the float -> integer conversion below defined
// (converting NaN or 1e30 to an integer is undefined behaviour, which is what crashes
// torch's own CPU grid_sample backward on NaN grids). +-Inf under "border" clamps to the
// edge like any other large value.

template <int NDIM>
struct SampleParams {
  // input image: (N, C, *in_size), arbitrary strides
  int64_t N, C;
  int64_t in_size[NDIM];
  int64_t img_stride_n, img_stride_c, img_stride[NDIM];
  // coordinates: one NDIM-vector per (coordinate batch, output point). coord_batch is N,
  // or 1 for a field shared by the whole batch.
  int64_t coord_batch;
  int64_t out_size[NDIM];
  int64_t coord_stride_n, coord_stride[NDIM];
  int64_t coord_axis_offset[NDIM];  // element offset of the component that addresses axis k
  double scale[NDIM];                // grid: d(x_k)/d(v_k) (Note [Coordinate conventions])
  float scale_f[NDIM];               // the same in float, for float arithmetic
  double limit[NDIM];                   // in_size + 1: see Note [Non-finite and far-away coordinates]
  float limit_f[NDIM];
  bool displacement;                 // add the point's own position (warp)
  bool align_corners;                // reflection bounds (see Note [Coordinate conventions])
  Interp interp;
  Padding padding;
  // output (forward) or grad_output (backward): (N, C, *out_size), arbitrary strides
  int64_t out_stride_n, out_stride_c, out_stride[NDIM];
  // optional forward Jacobian d(out)/d(v_k): (N, C, NDIM, *out_size), contiguous, axis order;
  // its spatial strides are those of the (contiguous) output
  int64_t jac_stride_n, jac_stride_c, jac_stride_k;
  // gradient of the coordinates (backward only): same layout as the coordinates
  int64_t gcoord_stride_n, gcoord_stride[NDIM], gcoord_axis_offset[NDIM];
  // gradient of the image (backward only): (N, C, *in_size), contiguous
  int64_t gimg_stride_n, gimg_stride_c, gimg_stride[NDIM];
  // derivative weights (Note [Derivative weights]): with `derivative`, the weights become
  // those of d^order(out)/d(v_0^order[0] ... v_{NDIM-1}^order[NDIM-1]); else plain weights
  int32_t order[NDIM];
  bool derivative;
  // affine sampling (Note [Affine sampling]): coord_t, (coordinate batch or 1, NDIM, NDIM + 1),
  // contiguous; affine_stride_n is 0 for one matrix shared by the batch. Read only under
  // AffineConfig; coords is then null when there is no field.
  const void* affine;
  int64_t affine_stride_n;
};

// The grid value v in [-1, 1] as a source index along an axis of `size` voxels, by ATen's
// operations in ATen's order (see Note [Coordinate conventions]).
template <typename T>
FASTWARP_HD T unnormalize(T v, int64_t size, bool align_corners) {
  if (align_corners) return ((v + T(1)) / T(2)) * static_cast<T>(size - 1);
  return ((v + T(1)) * static_cast<T>(size) - T(1)) / T(2);
}

// ---------------------------------------------------------------------------------------
// Padding transforms, each with its derivative.

// Clamp x to [0, size - 1]; *grad = d(out)/d(x). NaN passes through (with grad 1) and is
// rejected later by axis_sample.
template <typename T>
FASTWARP_HD T clip_coordinates_set_grad(T x, int64_t size, T* grad) {
  const T hi = static_cast<T>(size - 1);
  if (x <= T(0)) {
    *grad = T(0);
    return T(0);
  }
  if (x >= hi) {
    *grad = T(0);
    return hi;
  }
  *grad = T(1);
  return x;
}

// Reflect x about twice_low / 2 and twice_high / 2 (bounds given doubled so that the
// align_corners=False case, -0.5 and size - 0.5, stays integral); *grad = +-1.
// The parity of the number of flips is taken in floating point, so a huge x cannot
// overflow an integer.
template <typename T>
FASTWARP_HD T reflect_coordinates_set_grad(T x, int64_t twice_low, int64_t twice_high, T* grad) {
  if (twice_low == twice_high) {
    *grad = T(0);
    return T(0);
  }
  T g = T(1);
  const T lo = static_cast<T>(twice_low) / T(2);
  const T span = static_cast<T>(twice_high - twice_low) / T(2);
  x = x - lo;
  if (x < T(0)) {
    g = -g;
    x = -x;
  }
  const T extra = std::fmod(x, span);
  const T flips = std::floor(x / span);
  if (std::fmod(flips, T(2)) == T(0)) {
    *grad = g;
    return extra + lo;
  }
  *grad = -g;
  return span - extra + lo;
}

// Padding applied to a source index along an axis of `size` voxels; *grad = d(out)/d(x).
template <typename T>
FASTWARP_HD T pad_source_index_set_grad(T x, int64_t size, Padding padding, bool align_corners,
                                        T* grad) {
  if (padding == Padding::Border) return clip_coordinates_set_grad(x, size, grad);
  if (padding == Padding::Reflection) {
    T gr, gc;
    x = align_corners ? reflect_coordinates_set_grad(x, 0, 2 * (size - 1), &gr)
                      : reflect_coordinates_set_grad(x, -1, 2 * size - 1, &gr);
    x = clip_coordinates_set_grad(x, size, &gc);
    *grad = gr * gc;
    return x;
  }
  *grad = T(1);
  return x;
}

// Note [Affine sampling]
// ~~~~~~~~~~~~~~~~~~~~~~~
// fastwarp::affine_warp samples the image at source index y = A (p + u(p)) + t, A = [L | t]
// an (NDIM, NDIM + 1) matrix per coordinate batch, p the output point's position on an
// output grid of any shape, u an optional displacement field on that grid (voxel units of
// the output grid, channel k along axis k): FireANTs' fused affine sampler, with no grid in
// memory. The padding acts on y per axis, so d(out)/d(y_k) is the warp's coordinate
// derivative with d(x)/d(v) = the padding's factor alone; the backward writes that, g_y
// (NDIM values per point, summed over the images and channels it serves), and the chain
// rule to u (L^T g_y) and to A (g_y (p + u)^T summed over the points) is a few torch ops in
// fastwarp/_ops.py. The mixing of the axes is why this is its own configuration: every
// other one maps each axis alone.

// Note [Sampling configurations]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// The per-point functions read the coordinate kind, interpolation and padding through a
// Config: DynamicConfig reads them from SampleParams at run time; StaticConfig fixes them
// at compile time, so that the branches and the unused coordinate map fold away. The CUDA
// kernels use DynamicConfig (a branch every thread of a launch takes alike costs nothing
// there, and it keeps the number of kernels small); the CPU loops instantiate StaticConfig
// for linear interpolation of floating images, their hot path, where it removed ~30% of
// the forward's instructions. Derivative weights (Note [Derivative weights]) are read at
// run time only: StaticConfig has none, and the CPU loops take DynamicConfig for them.
struct DynamicConfig {
  static constexpr bool kAffine = false;  // Note [Affine sampling]
  template <int NDIM>
  static FASTWARP_HD bool displacement(const SampleParams<NDIM>& P) { return P.displacement; }
  template <int NDIM>
  static FASTWARP_HD bool derivative(const SampleParams<NDIM>& P) { return P.derivative; }
  template <int NDIM>
  static FASTWARP_HD Interp interp(const SampleParams<NDIM>& P) { return P.interp; }
  template <int NDIM>
  static FASTWARP_HD Padding padding(const SampleParams<NDIM>& P) { return P.padding; }
};

// DynamicConfig for affine sampling (Note [Affine sampling]), a separate instantiation so
// that the kernels of the other configurations carry none of its registers.
struct AffineConfig : DynamicConfig {
  static constexpr bool kAffine = true;
};

template <bool kDisplacement, Interp kInterp, Padding kPadding>
struct StaticConfig {
  static constexpr bool kAffine = false;
  template <int NDIM>
  static constexpr FASTWARP_HD bool displacement(const SampleParams<NDIM>&) { return kDisplacement; }
  template <int NDIM>
  static constexpr FASTWARP_HD bool derivative(const SampleParams<NDIM>&) { return false; }
  template <int NDIM>
  static constexpr FASTWARP_HD Interp interp(const SampleParams<NDIM>&) { return kInterp; }
  template <int NDIM>
  static constexpr FASTWARP_HD Padding padding(const SampleParams<NDIM>&) { return kPadding; }
};

// A per-axis parameter of SampleParams in the arithmetic type (each is kept in double and
// in float, so that the per-point code converts nothing).
template <typename T, int NDIM>
FASTWARP_HD T grid_param(const double (&d)[NDIM], const float (&f)[NDIM], int k) {
  if constexpr (std::is_same<T, double>::value) {
    return d[k];
  } else {
    return static_cast<T>(f[k]);
  }
}

// ---------------------------------------------------------------------------------------
// Interpolation along one axis.

template <typename T>
struct AxisSample {
  // Neighbour indices, clamped into [0, size): every offset formed from them is safe to
  // read, and in0 / in1 say whether the neighbour really lies inside the image (a clamped
  // one is read but multiplied by nothing; see forward_point).
  int64_t i0;  // lower neighbour (linear) or nearest voxel
  int64_t i1;  // upper neighbour (linear only)
  T w0, w1;    // linear weights 1 - t and t; nearest: 1 and 0
  T dxdv;      // d(source index)/d(coordinate value), padding included
  bool in0, in1;
};

// floor() for x in (-2, size + 1): truncation corrected for negatives. std::floor is a
// library call on baseline x86-64 (no SSE4.1), and this is the hottest line of the CPU
// forward.
template <typename T>
FASTWARP_HD int64_t floor_in_range(T x) {
  const int64_t i = static_cast<int64_t>(x);
  return static_cast<T>(i) > x ? i - 1 : i;
}

FASTWARP_HD int64_t clamp_index(int64_t i, int64_t size) {
  return i < 0 ? 0 : (i >= size ? size - 1 : i);
}

// Returns false when the point can touch no voxel along this axis (see Note [Non-finite
// and far-away coordinates]).
template <typename T>
FASTWARP_HD bool axis_sample(T x, T dxdv, int64_t size, T limit, Interp interp, AxisSample<T>* s) {
  if (!(x > T(-2) && x < limit)) {  // limit = size + 1
    *s = AxisSample<T>{0, 0, T(0), T(0), T(0), false, false};
    return false;
  }
  int64_t i0, i1;
  if (interp == Interp::Linear) {
    i0 = floor_in_range(x);
    i1 = i0 + 1;
    const T t = x - static_cast<T>(i0);
    s->w0 = T(1) - t;
    s->w1 = t;
  } else {
    // round half to even, as grid_sample's nearest mode does
    i0 = static_cast<int64_t>(std::nearbyint(x));
    i1 = -1;
    s->w0 = T(1);
    s->w1 = T(0);
  }
  s->in0 = i0 >= 0 && i0 < size;
  s->in1 = i1 >= 0 && i1 < size;
  s->i0 = clamp_index(i0, size);
  s->i1 = clamp_index(i1, size);
  s->dxdv = dxdv;
  return true;
}

// Note [Derivative weights]
// ~~~~~~~~~~~~~~~~~~~~~~~~~
// Every derivative of the sampled value with respect to the coordinates is again a sum of
// weights times corner values, only with other weights: along an axis, the weights
// (1 - t, t) of linear interpolation have the derivative (-1, +1) * d(x)/d(v) (the
// coordinate map's and the padding's factor, dxdv), and every higher derivative along
// that one axis is zero (the interpolant is piecewise linear along each axis; at the
// voxel boundaries, where it has a kink, we take the one-sided value of the cell the point
// lies in, as the first-order backward does). Nearest sampling is piecewise constant: all
// its derivatives are zero. So d^order(out)/d(v_0^order[0] ...), and its transpose (the
// same weights, scattered), are the forward and the image-gradient backward run with the
// per-axis weights replaced here, after the padding: the higher-order autograd of the
// sampling ops (fastwarp/_ops.py, Note [Derivatives of any order]) needs nothing else.
template <typename T>
FASTWARP_HD void differentiate_axis(int32_t order, Interp interp, AxisSample<T>* s) {
  if (order == 0) return;
  const T d = (order == 1 && interp == Interp::Linear) ? s->dxdv : T(0);
  s->w0 = -d;
  s->w1 = d;
}

// ---------------------------------------------------------------------------------------
// One output point: its source indices, and its interpolation corners.

template <typename T, int NDIM>
struct PointSample {
  AxisSample<T> ax[NDIM];
};

// Reads the NDIM coordinate values of point `pos` of coordinate batch `nd` and maps them
// to source indices. Returns false when the point touches no voxel.
template <typename Cfg, typename T, typename coord_t, typename index_t, int NDIM>
FASTWARP_HD bool compute_point(const SampleParams<NDIM>& P, const coord_t* coords, index_t nd,
                               const index_t (&pos)[NDIM], PointSample<T, NDIM>* ps) {
  index_t base = nd * static_cast<index_t>(P.coord_stride_n);
FASTWARP_UNROLL
  for (int k = 0; k < NDIM; ++k) base += pos[k] * static_cast<index_t>(P.coord_stride[k]);
  bool ok = true;  // every axis is filled in, even after one fails, with safe indices
  if constexpr (Cfg::kAffine) {
    const coord_t* A = static_cast<const coord_t*>(P.affine) + nd * static_cast<index_t>(P.affine_stride_n);
    T q[NDIM];  // p + u(p)
FASTWARP_UNROLL
    for (int j = 0; j < NDIM; ++j) {
      q[j] = static_cast<T>(pos[j]);
      if (coords != nullptr) q[j] += static_cast<T>(coords[base + static_cast<index_t>(P.coord_axis_offset[j])]);
    }
FASTWARP_UNROLL
    for (int k = 0; k < NDIM; ++k) {
      T x = static_cast<T>(A[k * (NDIM + 1) + NDIM]);
FASTWARP_UNROLL
      for (int j = 0; j < NDIM; ++j) x += static_cast<T>(A[k * (NDIM + 1) + j]) * q[j];
      T dpad;
      x = pad_source_index_set_grad(x, P.in_size[k], Cfg::padding(P), true, &dpad);
      ok = axis_sample(x, dpad, P.in_size[k], grid_param<T>(P.limit, P.limit_f, k), Cfg::interp(P),
                       &ps->ax[k]) &&
           ok;
    }
    return ok;
  }
FASTWARP_UNROLL
  for (int k = 0; k < NDIM; ++k) {
    const T v = static_cast<T>(coords[base + static_cast<index_t>(P.coord_axis_offset[k])]);
    T x, dxdv;  // the coordinate map (Note [Coordinate conventions]), then padding
    if (Cfg::displacement(P)) {
      x = v + static_cast<T>(pos[k]);
      dxdv = T(1);
    } else {
      dxdv = grid_param<T>(P.scale, P.scale_f, k);
      x = unnormalize(v, P.in_size[k], P.align_corners);
    }
    T dpad;
    x = pad_source_index_set_grad(x, P.in_size[k], Cfg::padding(P), P.align_corners, &dpad);
    ok = axis_sample(x, dxdv * dpad, P.in_size[k], grid_param<T>(P.limit, P.limit_f, k),
                     Cfg::interp(P), &ps->ax[k]) &&
         ok;
    if (Cfg::derivative(P)) differentiate_axis(P.order[k], Cfg::interp(P), &ps->ax[k]);
  }
  return ok;
}

// Number of interpolation corners: 2^NDIM for linear, 1 for nearest.
template <int NDIM>
FASTWARP_HD int num_corners(Interp interp) {
  return interp == Interp::Linear ? (1 << NDIM) : 1;
}

// Corner order: bit NDIM - 1 - k of corner index b selects i1 (else i0) along axis k, so
// axis 0 is the most significant bit and corners come in memory order for a contiguous
// image.

// Note [Coordinate gradient of linear interpolation]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// With weights w_b = prod_j (bit_j(b) ? t_j : 1 - t_j), d(w_b)/d(x_k) is +-1 (the sign of
// bit k) times the product of the *other* axes' weights, so
//   d(out)/d(x_k) = sum over the K/2 corners r of the other axes of
//                   W_{-k}[r] * (v[r with bit k = 1] - v[r with bit k = 0]).
// W_{-k} is built like make_corners' weights, skipping axis k: 3 x 4 products in 3-D
// instead of 8 x 3 x 2.

// Note [Forward Jacobian]
// ~~~~~~~~~~~~~~~~~~~~~~~
// In training, the displacement needs a gradient and the image (data) does not. The
// coordinate gradient is then sum over c of grad_out[c] * d(out[c])/d(v_k), and the
// forward has every ingredient of d(out)/d(v_k) in registers already (the same corner
// values). So when asked, the forward also writes it, NDIM values per (n, c, point), and
// the backward becomes one streaming multiply-and-sum in place of a second pass that
// recomputes every source index and re-gathers every corner. fastwarp/_ops.py asks for
// it only when it is small (few channels) and only the coordinates need a gradient.

// Products of the weights of every axis but k, in corner order with bit k removed.
template <typename T, int NDIM>
FASTWARP_HD void weights_without_axis(const PointSample<T, NDIM>& ps, int k,
                                      T (&w)[(1 << NDIM) / 2]) {
  w[0] = T(1);
  int m = 1;
FASTWARP_UNROLL
  for (int j = 0; j < NDIM; ++j) {
    if (j == k) continue;
FASTWARP_UNROLL
    for (int i = m - 1; i >= 0; --i) {
      const T wi = w[i];
      w[2 * i] = wi * ps.ax[j].w0;
      w[2 * i + 1] = wi * ps.ax[j].w1;
    }
    m *= 2;
  }
}

// Corner index with a bit for axis k (value `bit`) inserted into r, a corner of the
// other axes.
template <int NDIM>
FASTWARP_HD int insert_axis_bit(int r, int k, int bit) {
  const int shift = NDIM - 1 - k;
  const int low = r & ((1 << shift) - 1);
  return ((r >> shift) << (shift + 1)) | (bit << shift) | low;
}

// Pairwise sum of K terms (K a power of two): log2(K) dependent additions instead of K,
// which matters on the CPU, where the latency of a serial chain of 8 adds was the largest
// single cost of the 3-D forward.
template <int K, typename T>
FASTWARP_HD T tree_sum(T (&t)[K]) {
FASTWARP_UNROLL
  for (int width = K / 2; width >= 1; width /= 2) {
FASTWARP_UNROLL
    for (int j = 0; j < width; ++j) t[j] += t[j + width];
  }
  return t[0];
}

// d(interpolated value)/d(x_k) from the corner values v (outside corners already zero) and
// the other axes' weight products wk (Note [Coordinate gradient of linear interpolation]).
template <typename T, int NDIM>
FASTWARP_HD T axis_derivative(const T (&wk)[(1 << NDIM) / 2], const T (&v)[1 << NDIM], int k) {
  T terms[(1 << NDIM) / 2];
FASTWARP_UNROLL
  for (int r = 0; r < (1 << NDIM) / 2; ++r) {
    terms[r] = wk[r] * (v[insert_axis_bit<NDIM>(r, k, 1)] - v[insert_axis_bit<NDIM>(r, k, 0)]);
  }
  return tree_sum<(1 << NDIM) / 2>(terms);
}

// Batch images served by coordinate batch nd: all of them for a shared field, else nd.
template <typename index_t, int NDIM>
FASTWARP_HD void image_batch_range(const SampleParams<NDIM>& P, index_t nd, index_t* n0,
                                   index_t* n1) {
  if (P.coord_batch == 1) {
    *n0 = 0;
    *n1 = static_cast<index_t>(P.N);
  } else {
    *n0 = nd;
    *n1 = nd + 1;
  }
}

template <typename index_t, int NDIM>
FASTWARP_HD index_t spatial_offset(const index_t (&pos)[NDIM], const int64_t (&stride)[NDIM]) {
  index_t o = 0;
FASTWARP_UNROLL
  for (int k = 0; k < NDIM; ++k) o += pos[k] * static_cast<index_t>(stride[k]);
  return o;
}

// ---------------------------------------------------------------------------------------
// The per-point bodies. T is the arithmetic type (float for half/bfloat16/float, double
// for double); the callers loop over (coordinate batch, output point) and each body loops
// over the images that point serves and over the channels, so the source indices and
// weights are computed once per point whatever N and C are.

template <typename T, typename index_t, int NDIM>
struct Corners {
  static constexpr int K = 1 << NDIM;
  index_t off[K];  // element offsets for the strides they were computed with (always safe)
  T w[K];          // interpolation weights
  bool in[K];      // corner inside the image
  int count;       // corners in use: 2^NDIM (linear) or 1 (nearest)
};

// Offsets, weights and inside flags of all corners, built axis by axis (2 + 4 + 8 terms
// in 3-D rather than 8 products of 3), in corner order. A point that touches
// no voxel gets no corner inside, and safe offsets.
template <typename Cfg, typename T, typename index_t, int NDIM>
FASTWARP_HD void make_corners(const SampleParams<NDIM>& P, const PointSample<T, NDIM>& ps, bool any,
                              const int64_t (&stride)[NDIM], Corners<T, index_t, NDIM>* cs) {
  cs->count = num_corners<NDIM>(Cfg::interp(P));
  cs->off[0] = 0;
  cs->w[0] = T(1);
  cs->in[0] = any;
FASTWARP_UNROLL
  for (int k = 0; k < NDIM; ++k) {
    const AxisSample<T>& a = ps.ax[k];
    const index_t o0 = static_cast<index_t>(a.i0) * static_cast<index_t>(stride[k]);
    const index_t o1 = static_cast<index_t>(a.i1) * static_cast<index_t>(stride[k]);
    // expand in place from the back so that corner j becomes corners 2j and 2j + 1
FASTWARP_UNROLL
    for (int j = (1 << k) - 1; j >= 0; --j) {
      const index_t o = cs->off[j];
      const T w = cs->w[j];
      const bool in = cs->in[j];
      cs->off[2 * j] = o + o0;
      cs->w[2 * j] = w * a.w0;
      cs->in[2 * j] = in && a.in0;
      cs->off[2 * j + 1] = o + o1;
      cs->w[2 * j + 1] = w * a.w1;
      cs->in[2 * j + 1] = in && a.in1;
    }
  }
}

// Forward: out[n, c, pos] = sum over corners of weight * image[n, c, corner]. Nearest
// mode copies the voxel as it is, so integer label maps come back exact.
// With `jac` (linear only; see Note [Forward Jacobian]) it also writes d(out)/d(v_k).
template <typename Cfg, typename scalar_t, typename T, typename coord_t, typename index_t, int NDIM>
FASTWARP_HD void forward_point(const SampleParams<NDIM>& P, const scalar_t* image,
                               const coord_t* coords, scalar_t* out, scalar_t* jac, index_t nd,
                               const index_t (&pos)[NDIM]) {
  constexpr int K = 1 << NDIM;
  PointSample<T, NDIM> ps;
  const bool any = compute_point<Cfg, T>(P, coords, nd, pos, &ps);
  Corners<T, index_t, NDIM> cs;
  make_corners<Cfg>(P, ps, any, P.img_stride, &cs);
  const bool want_jac = jac != nullptr && Cfg::interp(P) == Interp::Linear;
  T wk[NDIM][K / 2] = {};  // see Note [Coordinate gradient of linear interpolation]
  if (want_jac) {
FASTWARP_UNROLL
    for (int k = 0; k < NDIM; ++k) weights_without_axis(ps, k, wk[k]);
  }
  // Points whose corners are all inside (nearly all of them) skip the selects below.
  bool interior = any;
FASTWARP_UNROLL
  for (int k = 0; k < NDIM; ++k) interior = interior && ps.ax[k].in0 && ps.ax[k].in1;
  index_t n0, n1;
  image_batch_range(P, nd, &n0, &n1);
  const index_t out_sp = spatial_offset(pos, P.out_stride);
  for (index_t n = n0; n < n1; ++n) {
    const scalar_t* img_n = image + n * static_cast<index_t>(P.img_stride_n);
    scalar_t* out_n = out + n * static_cast<index_t>(P.out_stride_n) + out_sp;
    for (index_t c = 0; c < static_cast<index_t>(P.C); ++c) {
      const scalar_t* img_c = img_n + c * static_cast<index_t>(P.img_stride_c);
      scalar_t* dst = out_n + c * static_cast<index_t>(P.out_stride_c);
      if (Cfg::interp(P) == Interp::Nearest) {
        *dst = cs.in[0] ? img_c[cs.off[0]] : static_cast<scalar_t>(0);
      } else {
        // Every corner is loaded (its offset is clamped, so the load is safe) and a
        // corner outside contributes a selected zero, not weight * value: an Inf or NaN
        // voxel beside the border must not leak into a point that does not touch it.
        T v[K], terms[K];
        if (interior) {
FASTWARP_UNROLL
          for (int b = 0; b < K; ++b) v[b] = static_cast<T>(img_c[cs.off[b]]);
        } else {
FASTWARP_UNROLL
          for (int b = 0; b < K; ++b) {
            const T val = static_cast<T>(img_c[cs.off[b]]);
            v[b] = cs.in[b] ? val : T(0);
          }
        }
FASTWARP_UNROLL
        for (int b = 0; b < K; ++b) terms[b] = cs.w[b] * v[b];
        *dst = static_cast<scalar_t>(tree_sum<K>(terms));
        if (want_jac) {
          scalar_t* j = jac + n * static_cast<index_t>(P.jac_stride_n) +
                        c * static_cast<index_t>(P.jac_stride_c) + out_sp;
FASTWARP_UNROLL
          for (int k = 0; k < NDIM; ++k) {
            j[k * static_cast<index_t>(P.jac_stride_k)] =
                static_cast<scalar_t>(ps.ax[k].dxdv * axis_derivative<T, NDIM>(wk[k], v, k));
          }
        }
      }
    }
  }
}

// Backward of one point.
//  * grad_image (nullable, arithmetic type T, layout gimg_stride_*): every corner receives
//    weight * grad_out through `add(ptr, value)`, a plain += on the CPU (thread-private
//    buffers) and an atomicAdd on the GPU.
//  * grad_coords (nullable): d(loss)/d(v_k) = sum over n, c of grad_out * sum over corners
//    of image[corner] * d(weight)/d(x_k), times d(x_k)/d(v_k) from the coordinate map and
//    padding. Summing over n here is what reduces a field shared by the batch, with no
//    atomics. Nearest interpolation is piecewise constant: its coordinate gradient is 0.
FASTWARP_EXEC_CHECK_DISABLE
template <typename Cfg, typename scalar_t, typename T, typename coord_t, typename index_t,
          int NDIM, typename AddFn>
FASTWARP_HD void backward_point(const SampleParams<NDIM>& P, const scalar_t* grad_out,
                                const scalar_t* image, const coord_t* coords, T* grad_image,
                                coord_t* grad_coords, index_t nd, const index_t (&pos)[NDIM],
                                AddFn add) {
  constexpr int K = 1 << NDIM;
  PointSample<T, NDIM> ps;
  const bool any = compute_point<Cfg, T>(P, coords, nd, pos, &ps);
  const bool want_coord = grad_coords != nullptr && Cfg::interp(P) == Interp::Linear && any;
  T gx[NDIM];
FASTWARP_UNROLL
  for (int k = 0; k < NDIM; ++k) gx[k] = T(0);

  if (any) {
    // Indexed only with compile-time corners (the loops below unroll over all K and test
    // `count`), and not zero-filled: so that nvcc keeps both in registers, not on the stack.
    Corners<T, index_t, NDIM> cs;  // offsets into the image (for want_coord)
    Corners<T, index_t, NDIM> gs;  // offsets into grad_image
    if (want_coord) make_corners<Cfg>(P, ps, any, P.img_stride, &cs);
    if (grad_image != nullptr) make_corners<Cfg>(P, ps, any, P.gimg_stride, &gs);
    T wk[NDIM][K / 2] = {};  // see Note [Coordinate gradient of linear interpolation]
    if (want_coord) {
FASTWARP_UNROLL
      for (int k = 0; k < NDIM; ++k) weights_without_axis(ps, k, wk[k]);
    }
    index_t n0, n1;
    image_batch_range(P, nd, &n0, &n1);
    const index_t go_sp = spatial_offset(pos, P.out_stride);
    for (index_t n = n0; n < n1; ++n) {
      for (index_t c = 0; c < static_cast<index_t>(P.C); ++c) {
        const T g = static_cast<T>(grad_out[n * static_cast<index_t>(P.out_stride_n) +
                                            c * static_cast<index_t>(P.out_stride_c) + go_sp]);
        if (grad_image != nullptr) {
          T* gi = grad_image + n * static_cast<index_t>(P.gimg_stride_n) +
                  c * static_cast<index_t>(P.gimg_stride_c);
FASTWARP_UNROLL
          for (int b = 0; b < K; ++b) {
            if (b < gs.count && gs.in[b]) add(gi + gs.off[b], gs.w[b] * g);
          }
        }
        if (want_coord) {
          const scalar_t* img_c = image + n * static_cast<index_t>(P.img_stride_n) +
                                  c * static_cast<index_t>(P.img_stride_c);
          T v[K];
FASTWARP_UNROLL
          for (int b = 0; b < K; ++b) {
            const T val = static_cast<T>(img_c[cs.off[b]]);  // clamped offset: safe
            v[b] = cs.in[b] ? val : T(0);
          }
FASTWARP_UNROLL
          for (int k = 0; k < NDIM; ++k) gx[k] += g * axis_derivative<T, NDIM>(wk[k], v, k);
        }
      }
    }
  }

  if (grad_coords != nullptr) {
    const index_t base = nd * static_cast<index_t>(P.gcoord_stride_n) +
                         spatial_offset(pos, P.gcoord_stride);
FASTWARP_UNROLL
    for (int k = 0; k < NDIM; ++k) {
      const T v = want_coord ? gx[k] * ps.ax[k].dxdv : T(0);
      grad_coords[base + static_cast<index_t>(P.gcoord_axis_offset[k])] = static_cast<coord_t>(v);
    }
  }
}

// Decomposes a linear point index (row-major over out_size) into its position.
template <typename index_t, int NDIM>
FASTWARP_HD void unravel_point(const SampleParams<NDIM>& P, index_t p, index_t (&pos)[NDIM]) {
FASTWARP_UNROLL
  for (int k = NDIM - 1; k >= 0; --k) {
    const index_t s = static_cast<index_t>(P.out_size[k]);
    pos[k] = p % s;
    p /= s;
  }
}

}  // namespace fastwarp
