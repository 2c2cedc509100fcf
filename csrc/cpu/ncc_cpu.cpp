// CPU loops of fastwarp::ncc: a streaming pass over each volume, slice by slice, that
// keeps only a window's worth of planes (Note [Streaming NCC on the CPU]). The algebra
// (window sums -> cc, the backward coefficients, the line box sum) is csrc/common/ncc.h,
// shared with the CUDA kernels. The reduced outputs ("mean", "batch") are the map's means.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/ncc_op.h"

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
      const double* old = slot(next_remove_);
      for (int64_t i = 0; i < width_; ++i) acc_[i] -= old[i];
    }
    next_remove_ = std::max(next_remove_, c - half_);
    next_add_ = std::max(next_add_, next_remove_);
    const int64_t end = std::min(depth_, c + half_ + 1);
    for (; next_add_ < end; ++next_add_) {
      double* dst = slot(next_add_);
      produce(next_add_, dst);
      for (int64_t i = 0; i < width_; ++i) acc_[i] += dst[i];
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
void box_sum_planes(double* planes, int64_t count, const Shape& s, std::vector<double>& scratch) {
  const int64_t W = s.W, H = s.H;
  scratch.resize(static_cast<size_t>((H + 1) * W));
  double* tmp = scratch.data();         // H x W: the W pass
  double* acc = scratch.data() + H * W;  // W: running sum of rows
  for (int64_t q = 0; q < count; ++q) {
    double* p = planes + q * H * W;
    // W pass, four rows at a time (independent running sums overlap)
    int64_t y = 0;
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
template <typename scalar_t>
void five_plane_sums(const VolumeView<scalar_t>& a, const VolumeView<scalar_t>& b, int64_t d,
                     const Shape& s, double* dst, std::vector<double>& scratch) {
  const int64_t P = s.plane();
  for (int64_t y = 0; y < s.H; ++y) {
    for (int64_t x = 0; x < s.W; ++x) {
      const double i = a.at(d, y, x), j = b.at(d, y, x);
      const int64_t k = y * s.W + x;
      dst[k] = i;
      dst[P + k] = j;
      dst[2 * P + k] = i * i;
      dst[3 * P + k] = j * j;
      dst[4 * P + k] = i * j;
    }
  }
  box_sum_planes(dst, 5, s, scratch);
}

NccSums sums_at(const double* acc, int64_t P, int64_t k) {
  return NccSums{acc[k], acc[P + k], acc[2 * P + k], acc[3 * P + k], acc[4 * P + k]};
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
        scalar_t* o = po + (m * s.D + d) * P;
        for (int64_t k = 0; k < P; ++k) o[k] = static_cast<scalar_t>(ncc_value(sums_at(acc, P, k), inv_n, eps));
      }
    });
  });
  return reduce_ncc_map(out, r);
}

std::tuple<at::Tensor, at::Tensor> ncc_backward_cpu(const at::Tensor& grad_out, const at::Tensor& a,
                                                    const at::Tensor& b, at::IntArrayRef window,
                                                    double eps, int64_t reduction,
                                                    std::array<bool, 2> output_mask) {
  at::Tensor grad_a, grad_b;
  std::tie(grad_a, grad_b) = ncc_backward_outputs(a, b, window, output_mask);
  const NccUpstream upstream = ncc_upstream(grad_out, a, to_ncc_reduction(reduction));
  const double g_scale = upstream.scale;
  const bool want_a = output_mask[0], want_b = output_mask[1];
  if (!want_a && !want_b) return {grad_a, grad_b};
  const Shape s = volume_shape(a, window);
  const double inv_n = inverse_window_size(window);
  const int64_t P = s.plane();
  // Coefficient planes kept in the second sliding sum: (f_I, f_II) for a, (f_J, f_JJ) for
  // b, and f_IJ for either; their positions in a plane stack:
  const int64_t cq_i = 0, cq_ii = 1;
  const int64_t cq_j = want_a ? 2 : 0, cq_jj = cq_j + 1;
  const int64_t cq_ij = (want_a ? 2 : 0) + (want_b ? 2 : 0);
  const int64_t nq = cq_ij + 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "fastwarp_ncc_backward", [&] {
    scalar_t* pa_out = want_a ? grad_a.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* pb_out = want_b ? grad_b.mutable_data_ptr<scalar_t>() : nullptr;
    for_each_run(a.size(0) * a.size(1), s, [&](int64_t m, int64_t d0, int64_t d1) {
      const auto va = volume_view<scalar_t>(a, m), vb = volume_view<scalar_t>(b, m);
      const auto vg = volume_view<scalar_t>(upstream.grad, m);
      SlidingSum sums(5 * P, s.hd, s.D);
      SlidingSum coefs(nq * P, s.hd, s.D);
      std::vector<double> scratch;
      auto coefficient_plane = [&](int64_t p, double* dst) {
        const double* acc = sums.advance(
            p, [&](int64_t z, double* plane) { five_plane_sums(va, vb, z, s, plane, scratch); });
        for (int64_t y = 0; y < s.H; ++y) {
          for (int64_t x = 0; x < s.W; ++x) {
            const int64_t k = y * s.W + x;
            const NccCoefficients f = ncc_coefficients(sums_at(acc, P, k), inv_n, eps, g_scale * vg.at(p, y, x));
            if (want_a) {
              dst[cq_i * P + k] = f.i;
              dst[cq_ii * P + k] = f.ii;
            }
            if (want_b) {
              dst[cq_j * P + k] = f.j;
              dst[cq_jj * P + k] = f.jj;
            }
            dst[cq_ij * P + k] = f.ij;
          }
        }
        box_sum_planes(dst, nq, s, scratch);
      };
      for (int64_t q = d0; q < d1; ++q) {
        const double* B = coefs.advance(q, coefficient_plane);
        const int64_t out_base = (m * s.D + q) * P;
        for (int64_t y = 0; y < s.H; ++y) {
          for (int64_t x = 0; x < s.W; ++x) {
            const int64_t k = y * s.W + x;
            const double i = va.at(q, y, x), j = vb.at(q, y, x);
            if (want_a)
              pa_out[out_base + k] = static_cast<scalar_t>(
                  ncc_input_grad(B[cq_i * P + k], B[cq_ii * P + k], B[cq_ij * P + k], i, j));
            if (want_b)
              pb_out[out_base + k] = static_cast<scalar_t>(
                  ncc_input_grad(B[cq_j * P + k], B[cq_jj * P + k], B[cq_ij * P + k], j, i));
          }
        }
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
