// Host side of fastwarp::ncc shared by both backends: the argument checks, the reduction
// codes, and the reduced upstream gradient seen as a per-voxel one. The loops are the
// backends' own: csrc/cpu/ncc_cpu.cpp (streaming slices in double), csrc/cuda/ncc_cuda.cu
// (shared-memory tiles).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>

#include "ncc.h"

namespace fastwarp {

// Mirrored by the table in fastwarp/_ops.py. "mean" and "batch" are reduced by the kernels
// themselves on the GPU, so no cc map is written there.
enum class NccReduction : int64_t { None = 0, Mean = 1, Batch = 2 };

inline NccReduction to_ncc_reduction(int64_t v) {
  TORCH_CHECK(v >= 0 && v <= 2, "fastwarp::ncc: reduction code must be 0 (none), 1 (mean) or 2 (batch), got ", v);
  return static_cast<NccReduction>(v);
}

inline void check_ncc_args(const at::Tensor& a, const at::Tensor& b, at::IntArrayRef window) {
  TORCH_CHECK(a.dim() == 4 || a.dim() == 5, "fastwarp::ncc: inputs must be 4-D or 5-D");
  TORCH_CHECK(a.sizes() == b.sizes(), "fastwarp::ncc: inputs must have the same shape");
  TORCH_CHECK(a.scalar_type() == b.scalar_type() && at::isFloatingType(a.scalar_type()),
              "fastwarp::ncc: inputs must share a floating dtype");
  TORCH_CHECK(a.device() == b.device(), "fastwarp::ncc: inputs on different devices");
  TORCH_CHECK(static_cast<int64_t>(window.size()) == a.dim() - 2,
              "fastwarp::ncc: one window size per spatial axis");
  for (int64_t w : window) TORCH_CHECK(w > 0 && w % 2 == 1, "fastwarp::ncc: windows must be odd and positive");
}

inline double inverse_window_size(at::IntArrayRef window) {
  double n = 1.0;
  for (int64_t w : window) n *= static_cast<double>(w);
  return 1.0 / n;
}

// The shape of the op's output: the cc map (N, C, *spatial), (N, C) or a scalar.
inline std::vector<int64_t> ncc_output_shape(const at::Tensor& a, NccReduction r) {
  if (r == NccReduction::None) return a.sizes().vec();
  if (r == NccReduction::Batch) return {a.size(0), a.size(1)};
  return {};
}

// Reduces a cc map (the CPU's output, or the GPU's large-window fallback). An empty map
// reduces as torch.mean reduces nothing: to NaN, or to an empty (N, C).
inline at::Tensor reduce_ncc_map(const at::Tensor& cc, NccReduction r) {
  if (r == NccReduction::Mean) return cc.mean();
  if (r == NccReduction::Batch) return cc.flatten(2).mean(2);
  return cc;
}

// The forward of empty inputs (a batch, channel or spatial size of 0): no kernel runs.
inline at::Tensor ncc_of_nothing(const at::Tensor& a, NccReduction r) {
  return reduce_ncc_map(at::empty(a.sizes(), a.options()), r);
}

// The upstream gradient of the op as a per-voxel gradient g(p) = scale * grad[p] over the
// inputs' shape: the map itself, or the (N, C) / scalar gradient expanded with zero strides
// (no copy); scale is 1 / (voxels averaged), applied in the kernels' arithmetic so that a
// half-precision gradient is not divided in half precision.
struct NccUpstream {
  at::Tensor grad;  // the inputs' shape, any strides
  double scale;
};

inline NccUpstream ncc_upstream(const at::Tensor& grad_out, const at::Tensor& a, NccReduction r) {
  TORCH_CHECK(grad_out.scalar_type() == a.scalar_type(),
              "fastwarp::ncc_backward: grad_output must have the inputs' dtype");
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(ncc_output_shape(a, r)),
              "fastwarp::ncc_backward: grad_output has the wrong shape for this reduction");
  if (r == NccReduction::None || a.numel() == 0) return {grad_out, 1.0};
  std::vector<int64_t> ones(a.dim(), 1);
  if (r == NccReduction::Batch) {
    ones[0] = a.size(0);
    ones[1] = a.size(1);
  }
  const double averaged = static_cast<double>(r == NccReduction::Mean ? a.numel() : a.numel() / (a.size(0) * a.size(1)));
  return {grad_out.reshape(ones).expand(a.sizes()), 1.0 / averaged};
}

// What both backends' backward start from: the gradients' tensors (an empty one where the
// mask says no), the upstream gradient per voxel, and whether there is anything to compute.
struct NccBackward {
  at::Tensor grad_a, grad_b;
  NccUpstream upstream;
  bool want_a, want_b;
  bool nothing;  // no gradient asked for, or no voxel
};

// Checks the backward's arguments and allocates (grad_a, grad_b); a gradient whose
// output_mask entry is false is an empty tensor.
inline std::tuple<at::Tensor, at::Tensor> ncc_backward_outputs(const at::Tensor& a,
                                                               const at::Tensor& b,
                                                               at::IntArrayRef window,
                                                               std::array<bool, 2> output_mask) {
  check_ncc_args(a, b, window);
  return {at::empty(output_mask[0] ? a.sizes() : at::IntArrayRef{0}, a.options()),
          at::empty(output_mask[1] ? b.sizes() : at::IntArrayRef{0}, b.options())};
}

inline NccBackward ncc_backward_setup(const at::Tensor& grad_out, const at::Tensor& a, const at::Tensor& b,
                                      at::IntArrayRef window, int64_t reduction,
                                      std::array<bool, 2> output_mask) {
  NccBackward w;
  std::tie(w.grad_a, w.grad_b) = ncc_backward_outputs(a, b, window, output_mask);
  w.upstream = ncc_upstream(grad_out, a, to_ncc_reduction(reduction));
  w.want_a = output_mask[0];
  w.want_b = output_mask[1];
  w.nothing = (!w.want_a && !w.want_b) || a.numel() == 0;
  return w;
}

}  // namespace fastwarp
