// CPU loops of fastwarp::mi_histogram and its backward (Note [Parzen joint histogram] in
// csrc/common/mi.h, which has all the math). The forward gives each fixed run of voxels its
// own histogram, in double, and adds them up in order afterwards: no lock or atomic in the
// voxel loop, and the same result whatever the number of threads. The backward is one
// independent pass over the voxels.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../common/mi_host.h"

namespace fastwarp {
namespace {

// Voxels per forward task: fixed, so the order of the additions does not depend on the
// thread count; large enough that a task's histogram (bins^2 doubles) is cheap to clear
// and add.
constexpr int64_t kVoxelsPerTask = 1 << 16;

struct Axes {
  BinAxis<double> a, b;
};

Axes volume_axes(const double* range, ParzenKernel kernel, int64_t bins) {
  return {BinAxis<double>::make(kernel, bins, range[0], range[1]),
          BinAxis<double>::make(kernel, bins, range[2], range[3])};
}

template <typename scalar_t, ParzenKernel K>
void histogram_run(const scalar_t* a, const scalar_t* b, const uint8_t* mask, int64_t v0, int64_t v1,
                   const Axes& ax, int64_t bins, double sigma, double* h) {
  ParzenWeights<double> wa, wb;
  for (int64_t v = v0; v < v1; ++v) {
    if (mask != nullptr && mask[v] == 0) continue;
    double ua, dua, ub, dub;
    if (!ax.a.position(static_cast<double>(a[v]), ua, dua) || !ax.b.position(static_cast<double>(b[v]), ub, dub)) {
      h[0] += std::numeric_limits<double>::quiet_NaN();
      continue;
    }
    parzen_weights(K, bins, sigma, ua, false, wa);
    parzen_weights(K, bins, sigma, ub, false, wb);
    for (int i = 0; i < wa.count; ++i) {
      double* row = h + (wa.first + i) * bins + wb.first;
      const double wi = wa.w[i];
      for (int j = 0; j < wb.count; ++j) row[j] += wi * wb.w[j];
    }
  }
}

template <typename scalar_t, ParzenKernel K>
void gradient_run(const scalar_t* a, const scalar_t* b, const uint8_t* mask, const double* g, int64_t v0,
                  int64_t v1, const Axes& ax, int64_t bins, double sigma, scalar_t* ga, scalar_t* gb) {
  ParzenWeights<double> wa, wb;
  double ta[kMaxParzenTaps], tb[kMaxParzenTaps];
  for (int64_t v = v0; v < v1; ++v) {
    if (mask != nullptr && mask[v] == 0) {
      if (ga) ga[v] = scalar_t(0);
      if (gb) gb[v] = scalar_t(0);
      continue;
    }
    double ua, dua, ub, dub;
    if (!ax.a.position(static_cast<double>(a[v]), ua, dua) || !ax.b.position(static_cast<double>(b[v]), ub, dub)) {
      if (ga) ga[v] = std::numeric_limits<scalar_t>::quiet_NaN();
      if (gb) gb[v] = std::numeric_limits<scalar_t>::quiet_NaN();
      continue;
    }
    parzen_weights(K, bins, sigma, ua, ga != nullptr, wa);
    parzen_weights(K, bins, sigma, ub, gb != nullptr, wb);
    // ta[i] = sum_j G[i][j] w_j(u_b), tb[j] = sum_i G[i][j] w_i(u_a)
    for (int j = 0; j < wb.count; ++j) tb[j] = 0.0;
    for (int i = 0; i < wa.count; ++i) {
      const double* row = g + (wa.first + i) * bins + wb.first;
      double t = 0.0;
      for (int j = 0; j < wb.count; ++j) {
        t += row[j] * wb.w[j];
        tb[j] += row[j] * wa.w[i];
      }
      ta[i] = t;
    }
    if (ga) {
      double s = 0.0;
      for (int i = 0; i < wa.count; ++i) s += wa.dw[i] * ta[i];
      ga[v] = static_cast<scalar_t>(s * dua);
    }
    if (gb) {
      double s = 0.0;
      for (int j = 0; j < wb.count; ++j) s += wb.dw[j] * tb[j];
      gb[v] = static_cast<scalar_t>(s * dub);
    }
  }
}

template <typename F>
void with_kernel(ParzenKernel k, const F& f) {
  if (k == ParzenKernel::BSpline) {
    f(std::integral_constant<ParzenKernel, ParzenKernel::BSpline>{});
  } else {
    f(std::integral_constant<ParzenKernel, ParzenKernel::Gaussian>{});
  }
}

const uint8_t* mask_data(const std::optional<at::Tensor>& mask, at::Tensor& keep) {
  if (!mask.has_value()) return nullptr;
  keep = mask->contiguous();
  if (keep.scalar_type() == at::kBool) keep = keep.view(at::kByte);
  return keep.const_data_ptr<uint8_t>();
}

at::Tensor mi_histogram_cpu(const at::Tensor& a_in, const at::Tensor& b_in, const std::optional<at::Tensor>& mask,
                            const at::Tensor& range, int64_t bins, int64_t kernel, double sigma) {
  check_mi_args("fastwarp::mi_histogram", a_in, b_in, mask, range, bins, kernel, sigma);
  const ParzenKernel k = to_parzen_kernel(kernel);
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  at::Tensor mask_keep;
  const uint8_t* pm = mask_data(mask, mask_keep);
  const int64_t volumes = a.size(0) * a.size(1);
  const int64_t voxels = volumes == 0 ? 0 : a.numel() / volumes;
  const int64_t runs = std::max<int64_t>(1, (voxels + kVoxelsPerTask - 1) / kVoxelsPerTask);
  const at::Tensor ranges = range.to(at::kDouble).contiguous();
  const double* pr = ranges.const_data_ptr<double>();
  // one histogram per (volume, run), added in run order below
  at::Tensor partial = at::zeros({volumes, runs, bins, bins}, a.options().dtype(at::kDouble));
  double* pp = partial.mutable_data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "fastwarp_mi_histogram", [&] {
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    with_kernel(k, [&](auto kc) {
      at::parallel_for(0, volumes * runs, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const int64_t m = t / runs, r = t % runs;
          const int64_t v0 = r * kVoxelsPerTask, v1 = std::min(voxels, v0 + kVoxelsPerTask);
          const int64_t base = m * voxels;
          histogram_run<scalar_t, decltype(kc)::value>(pa + base, pb + base, pm ? pm + base : nullptr, v0, v1,
                                                       volume_axes(pr + 4 * m, k, bins), bins, sigma,
                                                       pp + t * bins * bins);
        }
      });
    });
  });
  return partial.sum(1).view(mi_histogram_shape(a, bins)).to(mi_histogram_dtype(a.scalar_type()));
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
  const uint8_t* pm = mask_data(mask, mask_keep);
  const at::Tensor g = grad.to(at::kDouble).contiguous();
  const at::Tensor ranges = range.to(at::kDouble).contiguous();
  const double* pg = g.const_data_ptr<double>();
  const double* pr = ranges.const_data_ptr<double>();
  const int64_t volumes = a.size(0) * a.size(1), voxels = a.numel() / volumes;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "fastwarp_mi_histogram_backward", [&] {
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    scalar_t* pga = output_mask[0] ? grad_a.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* pgb = output_mask[1] ? grad_b.mutable_data_ptr<scalar_t>() : nullptr;
    with_kernel(k, [&](auto kc) {
      at::parallel_for(0, volumes * voxels, 1 << 14, [&](int64_t begin, int64_t end) {
        while (begin < end) {  // the volumes that [begin, end) overlaps
          const int64_t m = begin / voxels, base = m * voxels;
          const int64_t stop = std::min(end, base + voxels);
          gradient_run<scalar_t, decltype(kc)::value>(
              pa + base, pb + base, pm ? pm + base : nullptr, pg + m * bins * bins, begin - base, stop - base,
              volume_axes(pr + 4 * m, k, bins), bins, sigma, pga ? pga + base : nullptr, pgb ? pgb + base : nullptr);
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
