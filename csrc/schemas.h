// The operator schemas of fastwarp, defined once. csrc/fastwarp.cpp defines them for the
// public namespace fastwarp::; the emulated-CUDA test build (csrc/emu/emu_ops.cpp) defines
// the same schemas for its private twin fastwarp_emu::, whose CPU kernels are the CUDA
// launchers running on the emulated launch.
#pragma once

#include <torch/library.h>

namespace fastwarp {

// interp: 0 linear (bilinear / trilinear), 1 nearest.
// padding: 0 zeros, 1 border, 2 reflection.
// The forward ops return (output, jacobian): with jacobian=True (linear interpolation of a
// floating image) also d(output)/d(coordinate value along axis k), (N, C, ndim, *spatial),
// from which the coordinate gradient is one multiply-and-sum; else an empty tensor.
// The backward ops return (grad_image, grad_coordinates); a gradient whose output_mask
// entry is false comes back as an empty tensor. `image` / `input` may be None when the
// coordinate gradient is not requested; the image's shape is then taken from
// image_size / input_size.
inline void define_schemas(torch::Library& m) {
  m.def(
      "warp(Tensor image, Tensor disp, int interp, int padding, bool jacobian=False) "
      "-> (Tensor, Tensor)");
  m.def(
      "warp_backward(Tensor grad_output, Tensor? image, SymInt[] image_size, Tensor disp, "
      "int interp, int padding, bool[2] output_mask) -> (Tensor, Tensor)");
  m.def(
      "grid_sample(Tensor input, Tensor grid, int interp, int padding, bool align_corners, "
      "bool jacobian=False) -> (Tensor, Tensor)");
  m.def(
      "grid_sample_backward(Tensor grad_output, Tensor? input, SymInt[] input_size, Tensor grid, "
      "int interp, int padding, bool align_corners, bool[2] output_mask) -> (Tensor, Tensor)");

  // Affine sampling (Note [Affine sampling] in csrc/common/sampling.h): the image sampled at
  // A (p + disp(p)) + t on an output grid of out_size, affine (B, ndim, ndim + 1) in voxel
  // indices, B and disp's batch 1 or N; disp may be None (A p + t). The backward returns
  // (grad_image, grad_source): d(loss)/d(source index), (max(B, disp batch), ndim, *out_size),
  // from which fastwarp/_ops.py forms the gradients of disp and affine.
  m.def(
      "affine_warp(Tensor image, Tensor? disp, Tensor affine, SymInt[] out_size, int interp, "
      "int padding) -> Tensor");
  m.def(
      "affine_warp_backward(Tensor grad_output, Tensor? image, SymInt[] image_size, Tensor? disp, "
      "Tensor affine, int interp, int padding, bool[2] output_mask) -> (Tensor, Tensor)");

  // The derivatives of the sampling with respect to the coordinates, and their transposes
  // (Note [Derivative ops] in csrc/common/sample_op.h): kind 0 displacement (warp), 1 grid
  // (grid_sample); order: one derivative order per spatial axis, in axis order.
  m.def(
      "sample_derivative(Tensor image, Tensor coords, int kind, int interp, int padding, "
      "bool align_corners, int[] order) -> Tensor");
  m.def(
      "splat_derivative(Tensor values, SymInt[] image_size, Tensor coords, int kind, int interp, "
      "int padding, bool align_corners, int[] order) -> Tensor");

  // The CPU warp's instruction set (Note [CPU SIMD level] in csrc/cpu/warp_cpu.cpp): returns
  // the current level (0 scalar, 1 AVX2, 2 AVX-512); a level >= 0 sets it, capped by the CPU.
  m.def("_cpu_simd_level(int level=-1) -> int");

  // Windowed NCC (csrc/common/ncc.h): the local coefficient map, (N, C, *spatial), or its
  // mean per (n, c) or overall (reduction 0 none, 1 mean, 2 batch: csrc/common/ncc_host.h),
  // and its backward (grad_a, grad_b), an empty tensor for a gradient whose mask entry is
  // false; grad_output has the forward output's shape.
  m.def("ncc(Tensor a, Tensor b, int[] window, float eps, int reduction=0) -> Tensor");
  m.def(
      "ncc_backward(Tensor grad_output, Tensor a, Tensor b, int[] window, float eps, "
      "int reduction, bool[2] output_mask) -> (Tensor, Tensor)");

  // Parzen joint histogram for the mutual information (csrc/common/mi.h, Note [Parzen joint
  // histogram]): H (N, C, bins, bins), float64 for float64 inputs and float32 otherwise, of
  // the voxels where mask (bool or uint8, the inputs' shape) is set; range (N, C, 2, 2) in
  // H's dtype is [image a, b][lo, hi]; kernel 0 cubic B-spline, 1 Gaussian of sigma bins.
  // The backward returns (grad_a, grad_b), an empty tensor for a gradient whose mask entry
  // is false; nothing flows to the range.
  m.def(
      "mi_histogram(Tensor a, Tensor b, Tensor? mask, Tensor range, int bins, int kernel, "
      "float sigma) -> Tensor");
  m.def(
      "mi_histogram_backward(Tensor grad, Tensor a, Tensor b, Tensor? mask, Tensor range, int bins, "
      "int kernel, float sigma, bool[2] output_mask) -> (Tensor, Tensor)");
}

}  // namespace fastwarp
