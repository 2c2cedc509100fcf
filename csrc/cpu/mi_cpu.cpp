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

template <typename T>
struct Axes {
  BinAxis<T> a, b;
};

template <typename T>
Axes<T> volume_axes(const double* range, ParzenKernel kernel, int64_t bins) {
  return {BinAxis<T>::make(kernel, bins, static_cast<T>(range[0]), static_cast<T>(range[1])),
          BinAxis<T>::make(kernel, bins, static_cast<T>(range[2]), static_cast<T>(range[3]))};
}

// Note [Fixed-width Parzen loops]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// The loops run over a fixed number W of bins per voxel and image, known at compile time,
// so that they unroll and vectorize: 4 for the B-spline, and for the Gaussian the smallest of
// 8, 16, 32 that holds its floor(12 s) + 1 bins, the weights past a voxel's own count set to
// 0. Those may address up to W - 1 bins past the last, so the histograms (and the upstream
// gradient, in the backward) are laid out with rows and columns of S = bins + W, the margin
// cropped at the end (it holds only zeros). Both loops are FASTWARP_CPU_CLONES (Note [CPU loop
// clones]): the Parzen weights inlined, the bins' loops on the CPU's widest vectors.
template <ParzenKernel K, int W, typename T>
inline void fixed_width_weights(const Parzen<T>& pz, T u, bool slopes, ParzenWeights<T>& w) {
  parzen_weights(pz, u, slopes, w);
  if constexpr (K == ParzenKernel::Gaussian) {
    for (int t = w.count; t < W; ++t) {
      w.w[t] = T(0);
      w.dw[t] = T(0);
    }
  }
}

template <typename scalar_t, ParzenKernel K, int W, typename T = weight_t<scalar_t>>
FASTWARP_CPU_CLONES void histogram_run(const scalar_t* a, const scalar_t* b, const uint8_t* mask, int64_t v0, int64_t v1,
                   const Axes<T>& ax, const Parzen<T>& pz, double* h) {
  const int64_t S = pz.bins + W;
  ParzenWeights<T> wa, wb;
  for (int64_t v = v0; v < v1; ++v) {
    if (mask != nullptr && mask[v] == 0) continue;
    T ua, dua, ub, dub;
    if (!ax.a.position(static_cast<T>(a[v]), ua, dua) || !ax.b.position(static_cast<T>(b[v]), ub, dub)) {
      h[0] += std::numeric_limits<double>::quiet_NaN();
      continue;
    }
    fixed_width_weights<K, W>(pz, ua, false, wa);
    fixed_width_weights<K, W>(pz, ub, false, wb);
    double* corner = h + wa.first * S + wb.first;
    for (int i = 0; i < W; ++i) {
      double* row = corner + i * S;
      const T wi = wa.w[i];
      for (int j = 0; j < W; ++j) row[j] += static_cast<double>(wi * wb.w[j]);
    }
  }
}

template <typename scalar_t, ParzenKernel K, int W, typename T = weight_t<scalar_t>>
FASTWARP_CPU_CLONES void gradient_run(const scalar_t* a, const scalar_t* b, const uint8_t* mask, const T* g, int64_t v0,
                  int64_t v1, const Axes<T>& ax, const Parzen<T>& pz, scalar_t* ga, scalar_t* gb) {
  const int64_t S = pz.bins + W;
  ParzenWeights<T> wa, wb;
  T ta[W], tb[W];
  for (int64_t v = v0; v < v1; ++v) {
    if (mask != nullptr && mask[v] == 0) {
      if (ga) ga[v] = scalar_t(0);
      if (gb) gb[v] = scalar_t(0);
      continue;
    }
    T ua, dua, ub, dub;
    if (!ax.a.position(static_cast<T>(a[v]), ua, dua) || !ax.b.position(static_cast<T>(b[v]), ub, dub)) {
      if (ga) ga[v] = std::numeric_limits<scalar_t>::quiet_NaN();
      if (gb) gb[v] = std::numeric_limits<scalar_t>::quiet_NaN();
      continue;
    }
    fixed_width_weights<K, W>(pz, ua, ga != nullptr, wa);
    fixed_width_weights<K, W>(pz, ub, gb != nullptr, wb);
    // ta[i] = sum_j G[i][j] w_j(u_b), tb[j] = sum_i G[i][j] w_i(u_a)
    const T* corner = g + wa.first * S + wb.first;
    for (int j = 0; j < W; ++j) tb[j] = T(0);
    for (int i = 0; i < W; ++i) {
      const T* row = corner + i * S;
      T t = T(0);
      for (int j = 0; j < W; ++j) {
        t += row[j] * wb.w[j];
        tb[j] += row[j] * wa.w[i];
      }
      ta[i] = t;
    }
    if (ga) {
      T s = T(0);
      for (int i = 0; i < W; ++i) s += wa.dw[i] * ta[i];
      ga[v] = static_cast<scalar_t>(s * dua);
    }
    if (gb) {
      T s = T(0);
      for (int j = 0; j < W; ++j) s += wb.dw[j] * tb[j];
      gb[v] = static_cast<scalar_t>(s * dub);
    }
  }
}

// f(kernel, width) with both as compile-time constants (Note [Fixed-width Parzen loops]).
template <typename F>
void with_kernel(ParzenKernel k, double sigma, const F& f) {
  using KC = ParzenKernel;
  if (k == KC::BSpline) {
    f(std::integral_constant<KC, KC::BSpline>{}, std::integral_constant<int, 4>{});
    return;
  }
  const int count = static_cast<int>(std::floor(2 * kGaussianTruncation * sigma)) + 1;  // the most bins in 12 s
  if (count <= 8) {
    f(std::integral_constant<KC, KC::Gaussian>{}, std::integral_constant<int, 8>{});
  } else if (count <= 16) {
    f(std::integral_constant<KC, KC::Gaussian>{}, std::integral_constant<int, 16>{});
  } else {
    f(std::integral_constant<KC, KC::Gaussian>{}, std::integral_constant<int, kMaxParzenTaps>{});
  }
}

int64_t fixed_width(ParzenKernel k, double sigma) {
  int64_t width = 0;
  with_kernel(k, sigma, [&](auto, auto w) { width = decltype(w)::value; });
  return width;
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
  // one histogram per (volume, run), added in run order below; rows and columns of S
  const int64_t S = bins + fixed_width(k, sigma);
  at::Tensor partial = at::zeros({volumes, runs, S, S}, a.options().dtype(at::kDouble));
  double* pp = partial.mutable_data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "fastwarp_mi_histogram", [&] {
    using T = weight_t<scalar_t>;
    const Parzen<T> pz = Parzen<T>::make(k, bins, static_cast<T>(sigma));
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    with_kernel(k, sigma, [&](auto kc, auto wc) {
      at::parallel_for(0, volumes * runs, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const int64_t m = t / runs, r = t % runs;
          const int64_t v0 = r * kVoxelsPerTask, v1 = std::min(voxels, v0 + kVoxelsPerTask);
          const int64_t base = m * voxels;
          histogram_run<scalar_t, decltype(kc)::value, decltype(wc)::value>(
              pa + base, pb + base, pm ? pm + base : nullptr, v0, v1, volume_axes<T>(pr + 4 * m, k, bins), pz, pp + t * S * S);
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
  const uint8_t* pm = mask_data(mask, mask_keep);
  const int64_t S = bins + fixed_width(k, sigma);  // G laid out as the histograms are
  const at::Tensor g = at::zeros({a.size(0) * a.size(1), S, S}, a.options().dtype(range.scalar_type()));
  g.narrow(1, 0, bins).narrow(2, 0, bins).copy_(grad.reshape({-1, bins, bins}));
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
    with_kernel(k, sigma, [&](auto kc, auto wc) {
      at::parallel_for(0, volumes * voxels, 1 << 14, [&](int64_t begin, int64_t end) {
        while (begin < end) {  // the volumes that [begin, end) overlaps
          const int64_t m = begin / voxels, base = m * voxels;
          const int64_t stop = std::min(end, base + voxels);
          gradient_run<scalar_t, decltype(kc)::value, decltype(wc)::value>(
              pa + base, pb + base, pm ? pm + base : nullptr, pg + m * S * S, begin - base, stop - base,
              volume_axes<T>(pr + 4 * m, k, bins), pz, pga ? pga + base : nullptr, pgb ? pgb + base : nullptr);
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
