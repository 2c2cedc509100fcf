// CPU loops of fastwarp::ncc: a streaming pass over each volume, slice by slice, that
// keeps only a window's worth of planes (Note [Streaming NCC on the CPU]). The algebra
// (window sums -> cc, the backward coefficients, the line box sum) is csrc/common/ncc.h,
// shared with the CUDA kernels. The reduced outputs ("mean", "batch") are the map's means.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../common/ncc_host.h"
#include "clones.h"

namespace fastwarp {
namespace {

// Note [Streaming NCC on the CPU]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// A volume is a stack of D planes of H x W (a 2-D image is a stack of H rows, planes of
// 1 x W). The window sum is separable: each plane is box-summed in 2-D (a running sum
// along W, then along H, both O(1) per voxel), and the full sum at slice d is the sum of the 2-D sums of slices d - h .. d + h, kept as a running
// sum over a ring of 2h + 2 planes (SlidingSum). The forward emits cc for slice d as soon
// as that sum is complete. The backward chains two of them: the first gives the five sums
// at slice p, from which the coefficient planes f_X(p) are formed and 2-D box-summed; the
// second slides over those to give B[f_X] at slice q, and the gradients of slice q follow.
// Memory is a few window-deep stacks of planes per task, all in double; nothing
// volume-sized but the inputs and outputs. Tasks are (volume, run of slices); a run
// re-reads the h (forward) or 2h (backward) slices before it, which is the only cost of
// splitting a volume across threads.

struct Shape {
  int64_t D, H, W;   // 2-D images: D = rows, H = 1
  int64_t hd, hh, hw;  // window halves
  int64_t plane() const { return H * W; }
};

// The loops below are FASTWARP_CPU_CLONES (Note [CPU loop clones] in clones.h).
// (flatten: the NCC algebra of ncc.h is inlined into each clone, as on the GPU, so that the
// loop around it vectorizes. A lambda is a function of its own and is not cloned: the cloned
// loops are written without them.)

FASTWARP_CPU_CLONES void add_plane(double* acc, const double* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += src[i];
}

FASTWARP_CPU_CLONES void subtract_plane(double* acc, const double* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] -= src[i];
}

// Running sum over slices of planes of `width` doubles produced on demand.
class SlidingSum {
 public:
  SlidingSum(int64_t width, int64_t half, int64_t depth)
      : width_(width), half_(half), depth_(depth), slots_(2 * half + 2),
        ring_(static_cast<size_t>(slots_ * width)), acc_(static_cast<size_t>(width), 0.0) {}

  // Makes acc() the sum of the planes s in [c - half, c + half] within [0, depth), for
  // increasing c; produce(s, dst) writes plane s.
  template <typename Produce>
  const double* advance(int64_t c, const Produce& produce) {
    if (!started_) {
      next_add_ = next_remove_ = std::max<int64_t>(0, c - half_);
      started_ = true;
    }
    for (; next_remove_ < c - half_ && next_remove_ < next_add_; ++next_remove_) {
      subtract_plane(acc_.data(), slot(next_remove_), width_);
    }
    next_remove_ = std::max(next_remove_, c - half_);
    next_add_ = std::max(next_add_, next_remove_);
    const int64_t end = std::min(depth_, c + half_ + 1);
    for (; next_add_ < end; ++next_add_) {
      double* dst = slot(next_add_);
      produce(next_add_, dst);
      add_plane(acc_.data(), dst, width_);
    }
    return acc_.data();
  }

 private:
  double* slot(int64_t s) { return ring_.data() + (s % slots_) * width_; }

  int64_t width_, half_, depth_, slots_;
  std::vector<double> ring_, acc_;
  bool started_ = false;
  int64_t next_add_ = 0, next_remove_ = 0;
};

// 2-D box sum, in place, of `count` planes stored one after another in `planes`;
// `row` is scratch of W doubles.
FASTWARP_CPU_CLONES void box_sum_planes(double* planes, int64_t count, const Shape& s, std::vector<double>& scratch) {
  const int64_t W = s.W, H = s.H;
  scratch.resize(static_cast<size_t>((H + 1) * W));
  double* tmp = scratch.data();         // H x W: the W pass
  double* acc = scratch.data() + H * W;  // W: running sum of rows
  for (int64_t q = 0; q < count; ++q) {
    double* p = planes + q * H * W;
    // W pass, eight (then four) rows at a time (independent running sums overlap)
    int64_t y = 0;
    for (; y + 8 <= H; y += 8) box_sum_lines<8>(p + y * W, tmp + y * W, W, 1, s.hw, W);
    for (; y + 4 <= H; y += 4) box_sum_lines<4>(p + y * W, tmp + y * W, W, 1, s.hw, W);
    for (; y < H; ++y) box_sum_line(p + y * W, tmp + y * W, W, 1, s.hw);
    // H pass: a running sum of whole rows, vectorizable along W
    std::fill(acc, acc + W, 0.0);
    for (int64_t y = 0; y <= std::min(s.hh, H - 1); ++y)
      for (int64_t x = 0; x < W; ++x) acc[x] += tmp[y * W + x];
    for (int64_t y = 0; y < H; ++y) {
      double* out = p + y * W;
      for (int64_t x = 0; x < W; ++x) out[x] = acc[x];
      const int64_t enter = y + s.hh + 1, leave = y - s.hh;
      if (enter < H)
        for (int64_t x = 0; x < W; ++x) acc[x] += tmp[enter * W + x];
      if (leave >= 0)
        for (int64_t x = 0; x < W; ++x) acc[x] -= tmp[leave * W + x];
    }
  }
}

// One (n, c) volume of a strided (N, C, [D,] H, W) tensor, addressed by (slice, y, x).
template <typename scalar_t>
struct VolumeView {
  const scalar_t* base;
  int64_t sd, sh, sw;
  double at(int64_t d, int64_t y, int64_t x) const {
    return static_cast<double>(base[d * sd + y * sh + x * sw]);
  }
};

template <typename scalar_t>
VolumeView<scalar_t> volume_view(const at::Tensor& t, int64_t m) {
  const int64_t nd = t.dim() - 2;
  const int64_t n = m / t.size(1), c = m % t.size(1);
  // 3-D: (d, y, x) = (D, H, W); 2-D: (d, y, x) = (H, -, W), y always 0
  return VolumeView<scalar_t>{t.const_data_ptr<scalar_t>() + n * t.stride(0) + c * t.stride(1),
                              t.stride(2), nd == 3 ? t.stride(3) : 0, t.stride(nd + 1)};
}

// The five quantities I, J, I^2, J^2, IJ of slice d, 2-D box-summed, into dst (5 planes).
// kUnit: both inputs' rows are contiguous (unit strides the vectorizer can see).
template <typename scalar_t, bool kUnit>
FASTWARP_CPU_CLONES void five_products(const VolumeView<scalar_t>& a, const VolumeView<scalar_t>& b,
                                       int64_t d, const Shape& s, double* dst) {
  const int64_t P = s.plane(), sa = kUnit ? 1 : a.sw, sb = kUnit ? 1 : b.sw;
  for (int64_t y = 0; y < s.H; ++y) {
    const scalar_t* ra = a.base + d * a.sd + y * a.sh;
    const scalar_t* rb = b.base + d * b.sd + y * b.sh;
    double* o = dst + y * s.W;
    for (int64_t x = 0; x < s.W; ++x) {
      const double i = static_cast<double>(ra[x * sa]), j = static_cast<double>(rb[x * sb]);
      o[x] = i;
      o[P + x] = j;
      o[2 * P + x] = i * i;
      o[3 * P + x] = j * j;
      o[4 * P + x] = i * j;
    }
  }
}

template <typename scalar_t>
void five_plane_sums(const VolumeView<scalar_t>& a, const VolumeView<scalar_t>& b, int64_t d,
                     const Shape& s, double* dst, std::vector<double>& scratch) {
  if (a.sw == 1 && b.sw == 1) {
    five_products<scalar_t, true>(a, b, d, s, dst);
  } else {
    five_products<scalar_t, false>(a, b, d, s, dst);
  }
  box_sum_planes(dst, 5, s, scratch);
}

inline NccSums sums_at(const double* acc, int64_t P, int64_t k) {
  return NccSums{acc[k], acc[P + k], acc[2 * P + k], acc[3 * P + k], acc[4 * P + k]};
}

// cc of a plane from its five window sums (acc: 5 planes of P).
template <typename scalar_t>
FASTWARP_CPU_CLONES void cc_plane(const double* acc, int64_t P, double inv_n, double eps, scalar_t* o) {
  for (int64_t k = 0; k < P; ++k) o[k] = static_cast<scalar_t>(ncc_value(sums_at(acc, P, k), inv_n, eps));
}

// Where ncc_backward keeps its coefficient planes in a plane stack: (f_I, f_II) for a, (f_J,
// f_JJ) for b, and f_IJ for either.
struct CoefficientPlanes {
  bool want_a, want_b;
  int64_t i, ii, j, jj, ij, count;
  CoefficientPlanes(bool a, bool b)
      : want_a(a), want_b(b), i(0), ii(1), j(a ? 2 : 0), jj(j + 1), ij((a ? 2 : 0) + (b ? 2 : 0)), count(ij + 1) {}
};

// The coefficient planes of slice p from its five window sums and the upstream gradient,
// for the gradients wanted (kA, kB); kStride: the upstream gradient's x stride when it is 1
// or 0 (a reduced loss's gradient, expanded), else -1 (read at run time).
template <typename scalar_t, bool kA, bool kB, int kStride>
FASTWARP_CPU_CLONES void coefficient_rows(const double* acc, const VolumeView<scalar_t>& vg, int64_t p,
                                          const Shape& s, double inv_n, double eps, double g_scale,
                                          const CoefficientPlanes& cq, double* dst) {
  const int64_t P = s.plane(), sg = kStride >= 0 ? kStride : vg.sw;
  for (int64_t y = 0; y < s.H; ++y) {
    const scalar_t* g = vg.base + p * vg.sd + y * vg.sh;
    const int64_t k0 = y * s.W;
    for (int64_t x = 0; x < s.W; ++x) {
      const int64_t k = k0 + x;
      const NccCoefficients f =
          ncc_coefficients(sums_at(acc, P, k), inv_n, eps, g_scale * static_cast<double>(g[x * sg]));
      if (kA) {
        dst[cq.i * P + k] = f.i;
        dst[cq.ii * P + k] = f.ii;
      }
      if (kB) {
        dst[cq.j * P + k] = f.j;
        dst[cq.jj * P + k] = f.jj;
      }
      dst[cq.ij * P + k] = f.ij;
    }
  }
}

// The gradients of slice q from the box-summed coefficient planes B.
template <typename scalar_t, bool kA, bool kB, bool kUnit>
FASTWARP_CPU_CLONES void gradient_rows(const double* B, const VolumeView<scalar_t>& va,
                                       const VolumeView<scalar_t>& vb, int64_t q, const Shape& s,
                                       const CoefficientPlanes& cq, scalar_t* ga, scalar_t* gb) {
  const int64_t P = s.plane(), sa = kUnit ? 1 : va.sw, sb = kUnit ? 1 : vb.sw;
  for (int64_t y = 0; y < s.H; ++y) {
    const scalar_t* ra = va.base + q * va.sd + y * va.sh;
    const scalar_t* rb = vb.base + q * vb.sd + y * vb.sh;
    const int64_t k0 = y * s.W;
    for (int64_t x = 0; x < s.W; ++x) {
      const int64_t k = k0 + x;
      const double i = static_cast<double>(ra[x * sa]), j = static_cast<double>(rb[x * sb]);
      if (kA) ga[k] = static_cast<scalar_t>(ncc_input_grad(B[cq.i * P + k], B[cq.ii * P + k], B[cq.ij * P + k], i, j));
      if (kB) gb[k] = static_cast<scalar_t>(ncc_input_grad(B[cq.j * P + k], B[cq.jj * P + k], B[cq.ij * P + k], j, i));
    }
  }
}

// Calls f(want_a, want_b, stride) with the flags as compile-time constants, so that the
// loops above have no branch left in their bodies; stride: 1, 0 or -1 (another stride).
template <typename F>
void with_flags(const CoefficientPlanes& cq, int64_t stride, const F& f) {
  auto with_unit = [&](auto a, auto b) {
    if (stride == 1) {
      f(a, b, std::integral_constant<int, 1>{});
    } else if (stride == 0) {
      f(a, b, std::integral_constant<int, 0>{});
    } else {
      f(a, b, std::integral_constant<int, -1>{});
    }
  };
  if (cq.want_a && cq.want_b) {
    with_unit(std::true_type{}, std::true_type{});
  } else if (cq.want_a) {
    with_unit(std::true_type{}, std::false_type{});
  } else {
    with_unit(std::false_type{}, std::true_type{});
  }
}

template <typename scalar_t>
void coefficient_plane(const double* acc, const VolumeView<scalar_t>& vg, int64_t p, const Shape& s,
                       double inv_n, double eps, double g_scale, const CoefficientPlanes& cq, double* dst) {
  with_flags(cq, vg.sw, [&](auto a, auto b, auto stride) {
    coefficient_rows<scalar_t, decltype(a)::value, decltype(b)::value, decltype(stride)::value>(
        acc, vg, p, s, inv_n, eps, g_scale, cq, dst);
  });
}

template <typename scalar_t>
void gradient_plane(const double* B, const VolumeView<scalar_t>& va, const VolumeView<scalar_t>& vb, int64_t q,
                    const Shape& s, const CoefficientPlanes& cq, scalar_t* ga, scalar_t* gb) {
  with_flags(cq, va.sw == 1 && vb.sw == 1 ? 1 : -1, [&](auto a, auto b, auto stride) {
    gradient_rows<scalar_t, decltype(a)::value, decltype(b)::value, decltype(stride)::value == 1>(
        B, va, vb, q, s, cq, ga, gb);
  });
}

Shape volume_shape(const at::Tensor& a, at::IntArrayRef window) {
  const bool three_d = a.dim() == 5;
  Shape s;
  s.D = a.size(2);
  s.H = three_d ? a.size(3) : 1;
  s.W = a.size(-1);
  s.hd = window[0] / 2;
  s.hh = three_d ? window[1] / 2 : 0;
  s.hw = window[window.size() - 1] / 2;
  return s;
}

// Calls task(m, d0, d1) for runs of slices [d0, d1) of every volume m, in parallel.
template <typename Task>
void for_each_run(int64_t volumes, const Shape& s, const Task& task) {
  const int64_t threads = at::get_num_threads();
  const int64_t runs = std::max<int64_t>(
      1, std::min<int64_t>(s.D, (threads + volumes - 1) / volumes));
  at::parallel_for(0, volumes * runs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t m = t / runs, r = t % runs;
      task(m, s.D * r / runs, s.D * (r + 1) / runs);
    }
  });
}

at::Tensor ncc_forward_cpu(const at::Tensor& a, const at::Tensor& b, at::IntArrayRef window,
                           double eps, int64_t reduction) {
  check_ncc_args(a, b, window);
  const NccReduction r = to_ncc_reduction(reduction);
  if (a.numel() == 0) return ncc_of_nothing(a, r);
  at::Tensor out = at::empty(a.sizes(), a.options());
  const Shape s = volume_shape(a, window);
  const double inv_n = inverse_window_size(window);
  const int64_t P = s.plane();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "fastwarp_ncc", [&] {
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    for_each_run(a.size(0) * a.size(1), s, [&](int64_t m, int64_t d0, int64_t d1) {
      const auto va = volume_view<scalar_t>(a, m), vb = volume_view<scalar_t>(b, m);
      SlidingSum sums(5 * P, s.hd, s.D);
      std::vector<double> scratch;
      for (int64_t d = d0; d < d1; ++d) {
        const double* acc = sums.advance(
            d, [&](int64_t z, double* dst) { five_plane_sums(va, vb, z, s, dst, scratch); });
        cc_plane(acc, P, inv_n, eps, po + (m * s.D + d) * P);
      }
    });
  });
  return reduce_ncc_map(out, r);
}

std::tuple<at::Tensor, at::Tensor> ncc_backward_cpu(const at::Tensor& grad_out, const at::Tensor& a,
                                                    const at::Tensor& b, at::IntArrayRef window,
                                                    double eps, int64_t reduction,
                                                    std::array<bool, 2> output_mask) {
  const NccBackward w = ncc_backward_setup(grad_out, a, b, window, reduction, output_mask);
  at::Tensor grad_a = w.grad_a, grad_b = w.grad_b;
  if (w.nothing) return {grad_a, grad_b};
  const NccUpstream& upstream = w.upstream;
  const double g_scale = upstream.scale;
  const bool want_a = w.want_a, want_b = w.want_b;
  const Shape s = volume_shape(a, window);
  const double inv_n = inverse_window_size(window);
  const int64_t P = s.plane();
  const CoefficientPlanes cq(want_a, want_b);  // kept in the second sliding sum
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "fastwarp_ncc_backward", [&] {
    scalar_t* pa_out = want_a ? grad_a.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* pb_out = want_b ? grad_b.mutable_data_ptr<scalar_t>() : nullptr;
    for_each_run(a.size(0) * a.size(1), s, [&](int64_t m, int64_t d0, int64_t d1) {
      const auto va = volume_view<scalar_t>(a, m), vb = volume_view<scalar_t>(b, m);
      const auto vg = volume_view<scalar_t>(upstream.grad, m);
      SlidingSum sums(5 * P, s.hd, s.D);
      SlidingSum coefs(cq.count * P, s.hd, s.D);
      std::vector<double> scratch;
      auto coefficients = [&](int64_t p, double* dst) {
        const double* acc = sums.advance(
            p, [&](int64_t z, double* plane) { five_plane_sums(va, vb, z, s, plane, scratch); });
        coefficient_plane(acc, vg, p, s, inv_n, eps, g_scale, cq, dst);
        box_sum_planes(dst, cq.count, s, scratch);
      };
      for (int64_t q = d0; q < d1; ++q) {
        const double* B = coefs.advance(q, coefficients);
        const int64_t out_base = (m * s.D + q) * P;
        gradient_plane(B, va, vb, q, s, cq, want_a ? pa_out + out_base : nullptr,
                       want_b ? pb_out + out_base : nullptr);
      }
    });
  });
  return {grad_a, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastwarp, CPU, m) {
  m.impl("ncc", &ncc_forward_cpu);
  m.impl("ncc_backward", &ncc_backward_cpu);
}

}  // namespace fastwarp
