// Host side of fastwarp::ncc: argument checks and geometry (used by both backends), and op
// bodies written over a Backend that only knows how to run an elementwise loop (used by
// the CUDA kernels; the CPU streams slice by slice instead, csrc/cpu/ncc_cpu.cpp):
//
//   struct Backend {
//     static Guard device_guard(const at::Tensor&);
//     // f(i) for i < n; `work` (elements touched per i) sets the CPU's chunking
//     template <typename F> static void parallel_for(int64_t n, int64_t work, const F& f);
//   };
//
// The loop bodies are FASTWARP_LAMBDA lambdas over the math of ncc.h, so the CPU (a
// parallel loop) and the GPU (one thread per element) run the same code.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>
#include <utility>

#include "ncc.h"

namespace fastwarp {

inline VolumeGeometry volume_geometry(const at::Tensor& t) {
  VolumeGeometry g{};
  g.ndim = t.dim() - 2;
  g.voxels = 1;
  for (int64_t k = g.ndim - 1; k >= 0; --k) {
    g.size[k] = t.size(2 + k);
    g.stride[k] = g.voxels;
    g.voxels *= g.size[k];
  }
  return g;
}

inline StridedVolume strided_volume(const at::Tensor& t) {
  StridedVolume v{};
  v.channels = t.size(1);
  v.stride_n = t.stride(0);
  v.stride_c = t.stride(1);
  for (int64_t k = 0; k < t.dim() - 2; ++k) v.stride[k] = t.stride(2 + k);
  return v;
}

inline void check_ncc_args(const at::Tensor& a, const at::Tensor& b, at::IntArrayRef window) {
  TORCH_CHECK(a.dim() == 4 || a.dim() == 5, "fastwarp::ncc: inputs must be 4-D or 5-D");
  TORCH_CHECK(a.sizes() == b.sizes(), "fastwarp::ncc: inputs must have the same shape");
  TORCH_CHECK(a.scalar_type() == b.scalar_type() && at::isFloatingType(a.scalar_type()),
              "fastwarp::ncc: inputs must share a floating dtype");
  TORCH_CHECK(a.device() == b.device(), "fastwarp::ncc: inputs on different devices");
  TORCH_CHECK(a.numel() > 0, "fastwarp::ncc: empty inputs");
  TORCH_CHECK(static_cast<int64_t>(window.size()) == a.dim() - 2,
              "fastwarp::ncc: one window size per spatial axis");
  for (int64_t w : window) TORCH_CHECK(w > 0 && w % 2 == 1, "fastwarp::ncc: windows must be odd and positive");
}

// Box-sums `count` volumes held in slots[0..count) in place, axis by axis (Note [Windowed
// NCC]); `spare` is a free buffer of the same size, and the slots are rotated through it
// (each pass writes into the spare, which becomes the volume's slot).
template <typename Backend>
void box_sum_volumes(double** slots, int count, double*& spare, const VolumeGeometry& g,
                     int64_t volumes, at::IntArrayRef window) {
  for (int q = 0; q < count; ++q) {
    for (int k = 0; k < static_cast<int>(g.ndim); ++k) {
      const int64_t len = g.size[k];
      const int64_t stride = g.stride[k];
      const int64_t half = window[k] / 2;
      const double* src = slots[q];
      double* dst = spare;
      Backend::parallel_for(volumes * g.voxels / len, len, [=] FASTWARP_LAMBDA(int64_t l) {
        const int64_t start = line_start(g, k, l);
        box_sum_line(src + start, dst + start, len, stride, half);
      });
      std::swap(slots[q], spare);
    }
  }
}

// Fills the five sums' slots from a and b and box-sums them. Returns the buffers that own
// the slots (six volumes of doubles: five sums and a spare).
template <typename Backend, typename scalar_t>
at::Tensor window_sums(const at::Tensor& a, const at::Tensor& b, at::IntArrayRef window,
                       double** slots, double*& spare) {
  const VolumeGeometry g = volume_geometry(a);
  const int64_t total = a.numel();
  at::Tensor buffers = at::empty({6, total}, a.options().dtype(at::kDouble));
  double* base = buffers.mutable_data_ptr<double>();
  for (int q = 0; q < 5; ++q) slots[q] = base + q * total;
  spare = base + 5 * total;
  const StridedVolume sa = strided_volume(a);
  const StridedVolume sb = strided_volume(b);
  const scalar_t* pa = a.const_data_ptr<scalar_t>();
  const scalar_t* pb = b.const_data_ptr<scalar_t>();
  double *si = slots[0], *sj = slots[1], *sii = slots[2], *sjj = slots[3], *sij = slots[4];
  Backend::parallel_for(total, 1, [=] FASTWARP_LAMBDA(int64_t i) {
    const double x = static_cast<double>(pa[strided_offset(g, sa, i)]);
    const double y = static_cast<double>(pb[strided_offset(g, sb, i)]);
    si[i] = x;
    sj[i] = y;
    sii[i] = x * x;
    sjj[i] = y * y;
    sij[i] = x * y;
  });
  box_sum_volumes<Backend>(slots, 5, spare, g, total / g.voxels, window);
  return buffers;
}

// Checks the backward's arguments and allocates (grad_a, grad_b); a gradient whose
// output_mask entry is false is an empty tensor.
inline std::tuple<at::Tensor, at::Tensor> ncc_backward_outputs(const at::Tensor& grad_out,
                                                               const at::Tensor& a,
                                                               const at::Tensor& b,
                                                               at::IntArrayRef window,
                                                               std::array<bool, 2> output_mask) {
  check_ncc_args(a, b, window);
  TORCH_CHECK(grad_out.sizes() == a.sizes() && grad_out.scalar_type() == a.scalar_type(),
              "fastwarp::ncc_backward: grad_output must match the inputs' shape and dtype");
  return {at::empty(output_mask[0] ? a.sizes() : at::IntArrayRef{0}, a.options()),
          at::empty(output_mask[1] ? b.sizes() : at::IntArrayRef{0}, b.options())};
}

inline double inverse_window_size(at::IntArrayRef window) {
  double n = 1.0;
  for (int64_t w : window) n *= static_cast<double>(w);
  return 1.0 / n;
}

// The local coefficient map cc, (N, C, *spatial), contiguous, in the inputs' dtype.
template <typename Backend>
at::Tensor ncc_forward(const at::Tensor& a, const at::Tensor& b, at::IntArrayRef window,
                       double eps) {
  check_ncc_args(a, b, window);
  [[maybe_unused]] const auto guard = Backend::device_guard(a);
  at::Tensor out = at::empty(a.sizes(), a.options());
  const double inv_n = inverse_window_size(window);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "fastwarp_ncc", [&] {
    double* slots[5];
    double* spare;
    const at::Tensor buffers = window_sums<Backend, scalar_t>(a, b, window, slots, spare);
    const double *si = slots[0], *sj = slots[1], *sii = slots[2], *sjj = slots[3], *sij = slots[4];
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    Backend::parallel_for(a.numel(), 1, [=] FASTWARP_LAMBDA(int64_t i) {
      const NccSums s{si[i], sj[i], sii[i], sjj[i], sij[i]};
      po[i] = static_cast<scalar_t>(ncc_value(s, inv_n, eps));
    });
  });
  return out;
}

// (grad_a, grad_b); a gradient whose output_mask entry is false is an empty tensor.
template <typename Backend>
std::tuple<at::Tensor, at::Tensor> ncc_backward(const at::Tensor& grad_out, const at::Tensor& a,
                                                const at::Tensor& b, at::IntArrayRef window,
                                                double eps, std::array<bool, 2> output_mask) {
  at::Tensor grad_a, grad_b;
  std::tie(grad_a, grad_b) = ncc_backward_outputs(grad_out, a, b, window, output_mask);
  [[maybe_unused]] const auto guard = Backend::device_guard(a);
  const bool want_a = output_mask[0], want_b = output_mask[1];
  if (!want_a && !want_b) return {grad_a, grad_b};
  const double inv_n = inverse_window_size(window);
  const VolumeGeometry g = volume_geometry(a);
  const StridedVolume sg = strided_volume(grad_out);
  const StridedVolume sa = strided_volume(a);
  const StridedVolume sb = strided_volume(b);
  const int64_t total = a.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "fastwarp_ncc_backward", [&] {
    double* slots[5];
    double* spare;
    const at::Tensor buffers = window_sums<Backend, scalar_t>(a, b, window, slots, spare);
    // The five sums become the five coefficient maps, in place: slot q holds f_X for the
    // sum it held (i, j, ii, jj, ij).
    const scalar_t* pg = grad_out.const_data_ptr<scalar_t>();
    double *s0 = slots[0], *s1 = slots[1], *s2 = slots[2], *s3 = slots[3], *s4 = slots[4];
    Backend::parallel_for(total, 1, [=] FASTWARP_LAMBDA(int64_t i) {
      const NccSums s{s0[i], s1[i], s2[i], s3[i], s4[i]};
      const double gi = static_cast<double>(pg[strided_offset(g, sg, i)]);
      const NccCoefficients f = ncc_coefficients(s, inv_n, eps, gi);
      s0[i] = f.i;
      s1[i] = f.j;
      s2[i] = f.ii;
      s3[i] = f.jj;
      s4[i] = f.ij;
    });
    // Box-sum only the maps the requested gradients use: (i, ii, ij) for a, (j, jj, ij) for b.
    double* needed[5];
    int count = 0;
    if (want_a) needed[count++] = slots[0];
    if (want_b) needed[count++] = slots[1];
    if (want_a) needed[count++] = slots[2];
    if (want_b) needed[count++] = slots[3];
    needed[count++] = slots[4];
    double* spare_ptr = spare;
    box_sum_volumes<Backend>(needed, count, spare_ptr, g, total / g.voxels, window);
    int q = 0;
    const double* b_i = want_a ? needed[q++] : nullptr;
    const double* b_j = want_b ? needed[q++] : nullptr;
    const double* b_ii = want_a ? needed[q++] : nullptr;
    const double* b_jj = want_b ? needed[q++] : nullptr;
    const double* b_ij = needed[q++];
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    scalar_t* ga = want_a ? grad_a.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gb = want_b ? grad_b.mutable_data_ptr<scalar_t>() : nullptr;
    Backend::parallel_for(total, 1, [=] FASTWARP_LAMBDA(int64_t i) {
      const double x = static_cast<double>(pa[strided_offset(g, sa, i)]);
      const double y = static_cast<double>(pb[strided_offset(g, sb, i)]);
      if (ga != nullptr) ga[i] = static_cast<scalar_t>(ncc_input_grad(b_i[i], b_ii[i], b_ij[i], x, y));
      if (gb != nullptr) gb[i] = static_cast<scalar_t>(ncc_input_grad(b_j[i], b_jj[i], b_ij[i], y, x));
    });
  });
  return {grad_a, grad_b};
}

template <typename Backend>
void register_ncc_ops(torch::Library& m) {
  m.impl("ncc", &ncc_forward<Backend>);
  m.impl("ncc_backward", &ncc_backward<Backend>);
}

}  // namespace fastwarp
