// Host side, shared by csrc/cpu and csrc/cuda: argument checks, the translation of
// tensors into SampleParams, and the dtype / dimension dispatch. No math here.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <array>
#include <limits>
#include <optional>
#include <type_traits>

#include "sampling.h"

namespace fastwarp {

// How the coordinate tensor addresses the input (see Note [Coordinate conventions]).
// Mirrored by the table in fastwarp/_ops.py (the derivative ops take it as an int).
enum class CoordKind : int64_t { Displacement = 0, Grid = 1 };

inline CoordKind to_coord_kind(int64_t v) {
  TORCH_CHECK(v == 0 || v == 1, "fastwarp: coordinate kind must be 0 (displacement) or 1 (grid), got ", v);
  return static_cast<CoordKind>(v);
}

inline Interp to_interp(int64_t v) {
  TORCH_CHECK(v == 0 || v == 1, "fastwarp: interpolation code must be 0 (linear) or 1 (nearest), got ", v);
  return static_cast<Interp>(v);
}

inline Padding to_padding(int64_t v) {
  TORCH_CHECK(v >= 0 && v <= 2,
              "fastwarp: padding code must be 0 (zeros), 1 (border) or 2 (reflection), got ", v);
  return static_cast<Padding>(v);
}

// Empty tensors are sampled as torch's grid_sample samples them: a batch, channel or
// output size of 0 gives an empty output (and zero or empty gradients), but a grid needs an
// input with voxels to point into. (A warp's output grid is its input's, so an empty one
// is simply empty.)
inline void check_input_spatial(at::IntArrayRef image_size) {
  for (size_t k = 2; k < image_size.size(); ++k)
    TORCH_CHECK(image_size[k] > 0,
                "fastwarp: expected input to have non-empty spatial dimensions, but input has sizes ",
                image_size);
}

// The checks a direct caller of torch.ops.fastwarp.* gets; fastwarp/warp.py gives the
// friendlier messages before we get here.
inline void check_sample_args(const at::Tensor& image, const at::Tensor& coords, CoordKind kind,
                              Interp interp) {
  const int64_t dim = image.dim();
  TORCH_CHECK(dim == 4 || dim == 5, "fastwarp: image must be 4-D or 5-D, got ", dim, "-D");
  const int64_t nd = dim - 2;
  TORCH_CHECK(coords.dim() == dim, "fastwarp: coordinates must be ", dim, "-D, got ", coords.dim(), "-D");
  TORCH_CHECK(image.device() == coords.device(), "fastwarp: image and coordinates on different devices");
  TORCH_CHECK(at::isFloatingType(coords.scalar_type()), "fastwarp: coordinates must be floating point");
  if (at::isFloatingType(image.scalar_type())) {
    TORCH_CHECK(image.scalar_type() == coords.scalar_type(),
                "fastwarp: floating image and coordinates must share a dtype, got ",
                image.scalar_type(), " and ", coords.scalar_type(),
                " (autocast leaves float64 as it is, as for grid_sample: convert one)");
  } else {
    TORCH_CHECK(interp == Interp::Nearest, "fastwarp: integer images need nearest interpolation");
    TORCH_CHECK(coords.scalar_type() == at::kFloat || coords.scalar_type() == at::kDouble,
                "fastwarp: coordinates of an integer image must be float32 or float64");
  }
  if (kind == CoordKind::Displacement) {
    TORCH_CHECK(coords.size(1) == nd, "fastwarp: displacement must have ", nd, " channels");
    TORCH_CHECK(coords.size(0) == 1 || coords.size(0) == image.size(0),
                "fastwarp: displacement batch must be 1 or the image batch");
    for (int64_t k = 0; k < nd; ++k)
      TORCH_CHECK(coords.size(2 + k) == image.size(2 + k),
                  "fastwarp: displacement and image spatial shapes differ");
  } else {
    TORCH_CHECK(coords.size(-1) == nd, "fastwarp: grid last dimension must be ", nd);
    TORCH_CHECK(coords.size(0) == image.size(0), "fastwarp: grid and input batch differ");
    check_input_spatial(image.sizes());
  }
}

// Output spatial size: the displacement's spatial shape, or the grid's.
inline std::vector<int64_t> output_shape(at::IntArrayRef image_size, const at::Tensor& coords,
                                         CoordKind kind) {
  std::vector<int64_t> shape = {image_size[0], image_size[1]};
  const int64_t nd = static_cast<int64_t>(image_size.size()) - 2;
  for (int64_t k = 0; k < nd; ++k)
    shape.push_back(kind == CoordKind::Displacement ? coords.size(2 + k) : coords.size(1 + k));
  return shape;
}

// The checks of a tensor laid out like a sampled output (the backward's grad_output, the
// splat's values) against the image size and coordinates it will be scattered through.
inline void check_scattered(const char* name, const at::Tensor& values, at::IntArrayRef image_size,
                            const at::Tensor& coords, CoordKind kind) {
  TORCH_CHECK(image_size.size() == 4 || image_size.size() == 5,
              "fastwarp: image_size must have 4 or 5 entries");
  if (kind == CoordKind::Grid) check_input_spatial(image_size);
  TORCH_CHECK(at::isFloatingType(values.scalar_type()) && values.scalar_type() == coords.scalar_type(),
              "fastwarp: ", name, " must be floating point with the coordinates' dtype");
  TORCH_CHECK(values.device() == coords.device(), "fastwarp: ", name, " and coordinates on different devices");
  TORCH_CHECK(coords.dim() == static_cast<int64_t>(image_size.size()),
              "fastwarp: coordinates must be ", image_size.size(), "-D");
  TORCH_CHECK(values.sizes() == at::IntArrayRef(output_shape(image_size, coords, kind)),
              "fastwarp: ", name, " has the wrong shape");
}

// SampleParams for an image of size `image_size` (and strides of `image`, when defined)
// sampled at `coords`.
template <int NDIM>
SampleParams<NDIM> make_params(at::IntArrayRef image_size, const at::Tensor& image,
                               const at::Tensor& coords, CoordKind kind, Interp interp,
                               Padding padding, bool align_corners) {
  SampleParams<NDIM> P{};
  P.N = image_size[0];
  P.C = image_size[1];
  P.interp = interp;
  P.padding = padding;
  if (image.defined()) {
    P.img_stride_n = image.stride(0);
    P.img_stride_c = image.stride(1);
  }
  for (int k = 0; k < NDIM; ++k) {
    P.in_size[k] = image_size[2 + k];
    if (image.defined()) P.img_stride[k] = image.stride(2 + k);
  }
  P.coord_batch = coords.size(0);
  // A batch of one reads the same field for every image; its stride is irrelevant.
  P.coord_stride_n = coords.size(0) == 1 ? 0 : coords.stride(0);
  if (kind == CoordKind::Displacement) {
    P.displacement = true;
    P.align_corners = true;
    for (int k = 0; k < NDIM; ++k) {
      P.out_size[k] = coords.size(2 + k);
      P.coord_stride[k] = coords.stride(2 + k);
      P.coord_axis_offset[k] = k * coords.stride(1);
      P.scale[k] = 1.0;  // unused: a displacement is added to the point's position
    }
  } else {
    P.displacement = false;
    P.align_corners = align_corners;
    for (int k = 0; k < NDIM; ++k) {
      const double size = static_cast<double>(P.in_size[k]);
      P.out_size[k] = coords.size(1 + k);
      P.coord_stride[k] = coords.stride(1 + k);
      P.coord_axis_offset[k] = (NDIM - 1 - k) * coords.stride(-1);
      P.scale[k] = align_corners ? (size - 1.0) / 2.0 : size / 2.0;
    }
  }
  for (int k = 0; k < NDIM; ++k) {
    P.scale_f[k] = static_cast<float>(P.scale[k]);
    P.limit[k] = static_cast<double>(P.in_size[k] + 1);
    P.limit_f[k] = static_cast<float>(P.limit[k]);
  }
  return P;
}

// Where the forward writes (or the backward reads grad_output).
template <int NDIM>
void set_output(SampleParams<NDIM>* P, const at::Tensor& out) {
  P->out_stride_n = out.stride(0);
  P->out_stride_c = out.stride(1);
  for (int k = 0; k < NDIM; ++k) P->out_stride[k] = out.stride(2 + k);
}

template <int NDIM>
void set_jacobian(SampleParams<NDIM>* P, const at::Tensor& jac) {
  P->jac_stride_n = jac.stride(0);
  P->jac_stride_c = jac.stride(1);
  P->jac_stride_k = jac.stride(2);
}

template <int NDIM>
void set_grad_coords(SampleParams<NDIM>* P, const at::Tensor& grad_coords, CoordKind kind) {
  P->gcoord_stride_n = grad_coords.stride(0);
  for (int k = 0; k < NDIM; ++k) {
    if (kind == CoordKind::Displacement) {
      P->gcoord_stride[k] = grad_coords.stride(2 + k);
      P->gcoord_axis_offset[k] = k * grad_coords.stride(1);
    } else {
      P->gcoord_stride[k] = grad_coords.stride(1 + k);
      P->gcoord_axis_offset[k] = (NDIM - 1 - k) * grad_coords.stride(-1);
    }
  }
}

// Derivative weights (Note [Derivative weights]): one order per spatial axis, in axis
// order (k = 0 is D in 3-D, H in 2-D).
template <int NDIM>
void set_derivative_order(SampleParams<NDIM>* P, at::IntArrayRef order) {
  TORCH_CHECK(static_cast<int64_t>(order.size()) == NDIM, "fastwarp: the derivative order needs ", NDIM,
              " entries, one per spatial axis, got ", order.size());
  P->derivative = false;
  for (int k = 0; k < NDIM; ++k) {
    TORCH_CHECK(order[k] >= 0, "fastwarp: derivative orders must be >= 0, got ", order);
    P->order[k] = static_cast<int32_t>(std::min<int64_t>(order[k], 2));
    P->derivative = P->derivative || order[k] > 0;
  }
}

// Whether every derivative weight of this order vanishes (Note [Derivative weights]).
inline bool derivative_vanishes(at::IntArrayRef order, Interp interp) {
  for (int64_t o : order) {
    if (o > (interp == Interp::Linear ? 1 : 0)) return true;
  }
  return false;
}

template <int NDIM>
void set_grad_image(SampleParams<NDIM>* P, const at::Tensor& grad_image) {
  P->gimg_stride_n = grad_image.stride(0);
  P->gimg_stride_c = grad_image.stride(1);
  for (int k = 0; k < NDIM; ++k) P->gimg_stride[k] = grad_image.stride(2 + k);
}

// True when every offset the kernels form from P fits in int32 (the CUDA kernels then use
// 32-bit index math). Each reach is one past the largest offset, plus one voxel of slack
// for interpolation neighbours (never read when outside, but their offsets are formed).
template <int NDIM>
bool params_fit_int32(const SampleParams<NDIM>& P, int64_t threads) {
  const int64_t lim = std::numeric_limits<int32_t>::max();
  auto reach = [&](int64_t sn, int64_t nn, int64_t sc, int64_t nc, const int64_t* s,
                   const int64_t* size) {
    int64_t r = std::abs(sn) * nn + std::abs(sc) * nc + 1;
    for (int k = 0; k < NDIM; ++k) r += std::abs(s[k]) * (size[k] + 1);
    return r;
  };
  return threads < lim &&
         reach(P.img_stride_n, P.N, P.img_stride_c, P.C, P.img_stride, P.in_size) < lim &&
         reach(P.gimg_stride_n, P.N, P.gimg_stride_c, P.C, P.gimg_stride, P.in_size) < lim &&
         reach(P.out_stride_n, P.N, P.out_stride_c, P.C, P.out_stride, P.out_size) < lim &&
         reach(P.jac_stride_n, P.N, P.jac_stride_c, P.C, P.out_stride, P.out_size) +
                 std::abs(P.jac_stride_k) * NDIM < lim &&
         reach(P.coord_stride_n, P.coord_batch, 0, 0, P.coord_stride, P.out_size) +
                 std::abs(P.coord_axis_offset[NDIM - 1]) + std::abs(P.coord_axis_offset[0]) < lim &&
         reach(P.gcoord_stride_n, P.coord_batch, 0, 0, P.gcoord_stride, P.out_size) +
                 std::abs(P.gcoord_axis_offset[NDIM - 1]) + std::abs(P.gcoord_axis_offset[0]) < lim;
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<image scalar>, TypeTag<coordinate scalar>): floating images share the
// coordinates' dtype; integer (label) images take float or double coordinates.
template <typename F>
void dispatch_sample_types(at::ScalarType image_type, at::ScalarType coord_type, F&& f) {
  if (at::isFloatingType(image_type)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, image_type, "fastwarp_sample",
                                    [&] { f(TypeTag<scalar_t>{}, TypeTag<scalar_t>{}); });
  } else {
    AT_DISPATCH_INTEGRAL_TYPES_AND(at::kBool, image_type, "fastwarp_sample", [&] {
      using label_t = scalar_t;
      AT_DISPATCH_FLOATING_TYPES(coord_type, "fastwarp_sample",
                                 [&] { f(TypeTag<label_t>{}, TypeTag<scalar_t>{}); });
    });
  }
}

// Calls f(std::integral_constant<int, NDIM>) for NDIM = 2 or 3.
template <typename F>
void dispatch_ndim(int64_t ndim, F&& f) {
  if (ndim == 2) {
    f(std::integral_constant<int, 2>{});
  } else {
    TORCH_CHECK(ndim == 3, "fastwarp: only 2-D and 3-D sampling is supported");
    f(std::integral_constant<int, 3>{});
  }
}

}  // namespace fastwarp
