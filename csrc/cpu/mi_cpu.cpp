// CPU loops of fastwarp::mi_histogram and its backward (Note [Parzen joint histogram] in
// csrc/common/mi.h, which has all the math). The forward gives each fixed run of voxels its
// own histogram, in double (the weights in the histogram's dtype), and adds them up in order afterwards: no lock or atomic in the
// voxel loop, and the same result whatever the number of threads. The backward is one
// independent pass over the voxels.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "../common/mi_host.h"
#include "clones.h"

namespace fastwarp {
namespace {

// Voxels per forward task: fixed, so the order of the additions does not depend on the
// thread count; large enough that a task's histogram (bins^2 doubles) is cheap to clear
// and add.
constexpr int64_t kVoxelsPerTask = 1 << 16;

// The arithmetic of the weights: float for float, half and bfloat16 inputs (whose histogram is
// float32), double for double; the histograms add up in double either way.
template <typename scalar_t>
using weight_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// The voxel loops of one run (Note [Fixed-width Parzen loops] in csrc/common/mi.h for the
// per-voxel steps), FASTWARP_CPU_CLONES (Note [CPU loop clones]): the Parzen weights inlined,
// the bins' loops on the CPU's widest vectors.
template <typename scalar_t, ParzenKernel K, int W, typename T = weight_t<scalar_t>>
FASTWARP_CPU_CLONES void histogram_run(const scalar_t* a, const scalar_t* b, const uint8_t* mask, int64_t v0,
                                       int64_t v1, const PairAxes<T>& ax, const Parzen<T>& pz, double* h) {
  const int64_t S = mi_row_stride(pz.bins, W);
  ParzenWeights<T> wa, wb;
  for (int64_t v = v0; v < v1; ++v) {
    if (mask != nullptr && mask[v] == 0) continue;
    add_voxel<K, W>(pz, ax, static_cast<T>(a[v]), static_cast<T>(b[v]), S, wa, wb,
                    [h](int64_t cell, T value) { h[cell] += static_cast<double>(value); });
  }
}

template <typename scalar_t, ParzenKernel K, int W, typename T = weight_t<scalar_t>>
FASTWARP_CPU_CLONES void gradient_run(const scalar_t* a, const scalar_t* b, const uint8_t* mask, const T* g,
                                      int64_t v0, int64_t v1, const PairAxes<T>& ax, const Parzen<T>& pz,
                                      scalar_t* ga, scalar_t* gb) {
  const int64_t S = mi_row_stride(pz.bins, W);
  ParzenWeights<T> wa, wb;
  for (int64_t v = v0; v < v1; ++v) {
    T da = T(0), db = T(0);
    if (mask == nullptr || mask[v] != 0) {
      voxel_gradient<K, W>(pz, ax, static_cast<T>(a[v]), static_cast<T>(b[v]), g, S, ga != nullptr, gb != nullptr,
                           wa, wb, da, db);
    }
    if (ga) ga[v] = static_cast<scalar_t>(da);
    if (gb) gb[v] = static_cast<scalar_t>(db);
  }
}

at::Tensor mi_histogram_cpu(const at::Tensor& a_in, const at::Tensor& b_in, const std::optional<at::Tensor>& mask,
                            const at::Tensor& range, int64_t bins, int64_t kernel, double sigma) {
  check_mi_args("fastwarp::mi_histogram", a_in, b_in, mask, range, bins, kernel, sigma);
  const ParzenKernel k = to_parzen_kernel(kernel);
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  at::Tensor mask_keep;
  const uint8_t* pm = mi_mask_data(mask, mask_keep);
  const int64_t volumes = a.size(0) * a.size(1);
  const int64_t voxels = volumes == 0 ? 0 : a.numel() / volumes;
  const int64_t runs = std::max<int64_t>(1, (voxels + kVoxelsPerTask - 1) / kVoxelsPerTask);
  const at::Tensor ranges = range.to(at::kDouble).contiguous();
  const double* pr = ranges.const_data_ptr<double>();
  // one histogram per (volume, run), added in run order below; rows and columns of S
  const int64_t S = mi_row_stride(bins, parzen_width(k, sigma));
  at::Tensor partial = at::zeros({volumes, runs, S, S}, a.options().dtype(at::kDouble));
  double* pp = partial.mutable_data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "fastwarp_mi_histogram", [&] {
    using T = weight_t<scalar_t>;
    const Parzen<T> pz = Parzen<T>::make(k, bins, static_cast<T>(sigma));
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    with_parzen_width(k, sigma, [&](auto kc, auto wc) {
      at::parallel_for(0, volumes * runs, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const int64_t m = t / runs, r = t % runs;
          const int64_t v0 = r * kVoxelsPerTask, v1 = std::min(voxels, v0 + kVoxelsPerTask);
          const int64_t base = m * voxels;
          histogram_run<scalar_t, decltype(kc)::value, decltype(wc)::value>(
              pa + base, pb + base, pm ? pm + base : nullptr, v0, v1, PairAxes<T>::make(pr + 4 * m, k, bins), pz, pp + t * S * S);
        }
      });
    });
  });
  const at::Tensor h = partial.sum(1).narrow(1, 0, bins).narrow(2, 0, bins);
  return h.reshape(mi_histogram_shape(a, bins)).to(mi_histogram_dtype(a.scalar_type())).contiguous();
}

std::tuple<at::Tensor, at::Tensor> mi_histogram_backward_cpu(const at::Tensor& grad, const at::Tensor& a_in,
                                                             const at::Tensor& b_in,
                                                             const std::optional<at::Tensor>& mask,
                                                             const at::Tensor& range, int64_t bins, int64_t kernel,
                                                             double sigma, std::array<bool, 2> output_mask) {
  check_mi_args("fastwarp::mi_histogram_backward", a_in, b_in, mask, range, bins, kernel, sigma);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(mi_histogram_shape(a_in, bins)),
              "fastwarp::mi_histogram_backward: grad must be (N, C, bins, bins), got ", grad.sizes());
  const ParzenKernel k = to_parzen_kernel(kernel);
  at::Tensor grad_a = at::empty(output_mask[0] ? a_in.sizes() : at::IntArrayRef{0}, a_in.options());
  at::Tensor grad_b = at::empty(output_mask[1] ? b_in.sizes() : at::IntArrayRef{0}, b_in.options());
  if ((!output_mask[0] && !output_mask[1]) || a_in.numel() == 0) return {grad_a, grad_b};
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  at::Tensor mask_keep;
  const uint8_t* pm = mi_mask_data(mask, mask_keep);
  const int64_t S = mi_row_stride(bins, parzen_width(k, sigma));  // G laid out as the histograms are
  const at::Tensor g = mi_padded_gradient(grad, bins, S, range.scalar_type());
  const at::Tensor ranges = range.to(at::kDouble).contiguous();
  const double* pr = ranges.const_data_ptr<double>();
  const int64_t volumes = a.size(0) * a.size(1), voxels = a.numel() / volumes;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "fastwarp_mi_histogram_backward", [&] {
    using T = weight_t<scalar_t>;
    const Parzen<T> pz = Parzen<T>::make(k, bins, static_cast<T>(sigma));
    const T* pg = g.const_data_ptr<T>();  // the histogram's dtype, T's
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    scalar_t* pga = output_mask[0] ? grad_a.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* pgb = output_mask[1] ? grad_b.mutable_data_ptr<scalar_t>() : nullptr;
    with_parzen_width(k, sigma, [&](auto kc, auto wc) {
      at::parallel_for(0, volumes * voxels, 1 << 14, [&](int64_t begin, int64_t end) {
        while (begin < end) {  // the volumes that [begin, end) overlaps
          const int64_t m = begin / voxels, base = m * voxels;
          const int64_t stop = std::min(end, base + voxels);
          gradient_run<scalar_t, decltype(kc)::value, decltype(wc)::value>(
              pa + base, pb + base, pm ? pm + base : nullptr, pg + m * S * S, begin - base, stop - base,
              PairAxes<T>::make(pr + 4 * m, k, bins), pz, pga ? pga + base : nullptr, pgb ? pgb + base : nullptr);
          begin = stop;
        }
      });
    });
  });
  return {grad_a, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastwarp, CPU, m) {
  m.impl("mi_histogram", &mi_histogram_cpu);
  m.impl("mi_histogram_backward", &mi_histogram_backward_cpu);
}

}  // namespace fastwarp
