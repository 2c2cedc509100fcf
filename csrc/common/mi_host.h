// Host side of fastwarp::mi_histogram shared by the backends: the argument checks and the
// histogram's shape, dtype and padded layout. The Parzen math and the per-voxel loops are
// csrc/common/mi.h.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>

#include "mi.h"

namespace fastwarp {

inline ParzenKernel to_parzen_kernel(int64_t v) {
  TORCH_CHECK(v == 0 || v == 1, "fastwarp::mi_histogram: kernel code must be 0 (bspline) or 1 (gaussian), got ", v);
  return static_cast<ParzenKernel>(v);
}

// The histogram's dtype: float64 for float64 inputs, float32 for the others (half and
// bfloat16 accumulate in float32).
inline at::ScalarType mi_histogram_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// a, b: (N, C, *spatial), 2-D or 3-D, one floating dtype; mask: None or bool/uint8 of the
// inputs' shape; range: (N, C, 2, 2) in the histogram's dtype, [image][lo, hi].
inline void check_mi_args(const char* op, const at::Tensor& a, const at::Tensor& b,
                          const std::optional<at::Tensor>& mask, const at::Tensor& range, int64_t bins,
                          int64_t kernel, double sigma) {
  TORCH_CHECK(a.dim() == 4 || a.dim() == 5, op, ": inputs must be 4-D or 5-D, got ", a.dim(), "-D");
  TORCH_CHECK(a.sizes() == b.sizes(), op, ": inputs must have the same shape, got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type() && at::isFloatingType(a.scalar_type()),
              op, ": inputs must share a floating dtype");
  TORCH_CHECK(a.device() == b.device(), op, ": inputs on different devices");
  const ParzenKernel k = to_parzen_kernel(kernel);
  TORCH_CHECK(bins >= (k == ParzenKernel::BSpline ? 4 : 2),
              op, ": bins must be >= 4 for the B-spline kernel and >= 2 for the Gaussian, got ", bins);
  TORCH_CHECK(bins <= 1024, op, ": bins must be <= 1024, got ", bins);
  if (k == ParzenKernel::Gaussian) {
    TORCH_CHECK(sigma > 0.0 && sigma <= kMaxGaussianSigma, op, ": sigma must be in (0, ", kMaxGaussianSigma,
                "] bins, got ", sigma);
  }
  if (mask.has_value()) {
    TORCH_CHECK(mask->sizes() == a.sizes(), op, ": mask must have the inputs' shape ", a.sizes(), ", got ",
                mask->sizes());
    TORCH_CHECK(mask->scalar_type() == at::kBool || mask->scalar_type() == at::kByte,
                op, ": mask must be bool or uint8, got ", mask->scalar_type());
    TORCH_CHECK(mask->device() == a.device(), op, ": mask on another device than the inputs");
  }
  TORCH_CHECK(range.dim() == 4 && range.size(0) == a.size(0) && range.size(1) == a.size(1) &&
                  range.size(2) == 2 && range.size(3) == 2,
              op, ": range must be (N, C, 2, 2), got ", range.sizes());
  TORCH_CHECK(range.scalar_type() == mi_histogram_dtype(a.scalar_type()),
              op, ": range must be ", mi_histogram_dtype(a.scalar_type()), " for ", a.scalar_type(),
              " inputs, got ", range.scalar_type());
  TORCH_CHECK(range.device() == a.device(), op, ": range on another device than the inputs");
}

inline std::vector<int64_t> mi_histogram_shape(const at::Tensor& a, int64_t bins) {
  return {a.size(0), a.size(1), bins, bins};
}

// The mask's bytes (nullptr: none), a bool mask viewed as uint8; ``keep`` holds the
// contiguous tensor they are in.
inline const uint8_t* mi_mask_data(const std::optional<at::Tensor>& mask, at::Tensor& keep) {
  if (!mask.has_value()) return nullptr;
  keep = mask->contiguous();
  if (keep.scalar_type() == at::kBool) keep = keep.view(at::kByte);
  return keep.const_data_ptr<uint8_t>();
}

// The upstream gradient (N, C, bins, bins) laid out as the loops read it, (N C, S, S) in
// ``dtype`` with a zero margin (Note [Fixed-width Parzen loops]).
inline at::Tensor mi_padded_gradient(const at::Tensor& grad, int64_t bins, int64_t S, at::ScalarType dtype) {
  const at::Tensor g = at::zeros({grad.size(0) * grad.size(1), S, S}, grad.options().dtype(dtype));
  g.narrow(1, 0, bins).narrow(2, 0, bins).copy_(grad.reshape({-1, bins, bins}));
  return g;
}

}  // namespace fastwarp
