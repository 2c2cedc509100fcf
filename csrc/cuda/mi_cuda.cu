// CUDA kernels of fastwarp::mi_histogram and its backward (Note [Parzen joint histogram] in
// csrc/common/mi.h, which has all the math; Note [MI on the GPU] below for the loops). Built
// by nvcc for the GPU and by the host compiler over the emulated launch (csrc/emu/mi_emu.cpp).
#include <limits>

#include "../common/mi_host.h"
#include "runtime.h"

namespace fastwarp {
namespace {

// Note [MI on the GPU]
// ~~~~~~~~~~~~~~~~~~~~
// Both kernels take a grid of (blocks per volume, volumes) of 256 threads, each block
// striding over its volume's voxels, and as few blocks per volume as fill the GPU about four
// times over (MiGrid), so that what each block does once (clear and flush a histogram, stage
// the upstream gradient) is small beside its voxels.
// - Forward: each block accumulates its voxels' weights into a histogram of S^2 values
//   (S = mi_row_stride(bins, W) >= bins + W: Note [Fixed-width Parzen loops]; its rows laid
//   out so that nearby cells fall in distinct banks) in shared memory with shared atomics
//   (float; double for float64 inputs; none for a Gaussian's zero weights past its count),
//   then adds it once to the volume's float64 histogram in global memory with global
//   atomics. S^2 values that do not fit in 48 KiB (S over 110 in float: over 100 bins for
//   the B-spline) go straight to the global one.
// - Backward: each block stages the volume's upstream gradient G (S^2, zero margin) in shared
//   memory when it fits, then each thread forms its voxels' gradients from G and its weights;
//   no atomics, every voxel written once.
// The global atomics' order varies from run to run, so the last bits of the histogram may
// too (the CPU's is the same on any number of threads).

constexpr int kThreads = 256;
constexpr size_t kMaxSharedHistogram = 48 * 1024;

struct MiGrid {
  dim3 grid;
  size_t shared_bytes;  // 0: the histogram (or G) stays in global memory
};

MiGrid mi_grid(int64_t volumes, int64_t voxels, int64_t S, size_t value_bytes) {
  TORCH_CHECK(volumes <= 65535, "fastwarp::mi_histogram on the GPU: at most 65535 (batch x channel) images, got ",
              volumes);
  const int64_t fill = 4 * static_cast<int64_t>(cuda::multiprocessor_count());
  const int64_t wanted = (voxels + 4 * kThreads - 1) / (4 * kThreads);  // at least 4 voxels a thread
  const int64_t per_volume = std::max<int64_t>(1, std::min(wanted, (fill + volumes - 1) / volumes));
  const size_t bytes = static_cast<size_t>(S * S) * value_bytes;
  return {dim3(static_cast<unsigned>(per_volume), static_cast<unsigned>(volumes)),
          bytes <= kMaxSharedHistogram ? bytes : 0};
}

// The kernels' per-voxel steps are csrc/common/mi.h's (Note [Fixed-width Parzen loops]): W
// taps per image, histograms and G with rows of S = mi_row_stride(bins, W).
template <typename scalar_t, typename acc_t, ParzenKernel K, int W>
__global__ void mi_histogram_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                    const uint8_t* __restrict__ mask, const acc_t* __restrict__ range,
                                    int64_t voxels, Parzen<acc_t> pz, bool in_shared, double* __restrict__ hist) {
  FASTWARP_DYNAMIC_SHARED(acc_t, local);
  const int64_t S = mi_row_stride(pz.bins, W), cells = S * S;
  const int64_t m = blockIdx.y;
  double* global = hist + m * cells;
  if (in_shared) {
    for (int64_t i = threadIdx.x; i < cells; i += blockDim.x) local[i] = acc_t(0);
    __syncthreads();
  }
  // (a Gaussian's weights past its count are 0: no atomic for them)
  auto add = [&](int64_t cell, acc_t value) {
    if (K == ParzenKernel::Gaussian && value == acc_t(0)) return;
    if (in_shared) {
      atomicAdd(local + cell, value);
    } else {
      atomicAdd(global + cell, static_cast<double>(value));
    }
  };
  const PairAxes<acc_t> ax = PairAxes<acc_t>::make(range + 4 * m, pz.kernel, pz.bins);
  const int64_t base = m * voxels;
  ParzenWeights<acc_t> wa, wb;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < voxels; v += stride) {
    if (mask != nullptr && mask[base + v] == 0) continue;
    add_voxel<K, W>(pz, ax, static_cast<acc_t>(a[base + v]), static_cast<acc_t>(b[base + v]), S, wa, wb, add);
  }
  if (in_shared) {
    __syncthreads();
    for (int64_t i = threadIdx.x; i < cells; i += blockDim.x) {
      const acc_t value = local[i];
      if (value != acc_t(0)) atomicAdd(global + i, static_cast<double>(value));  // NaN too
    }
  }
}

template <typename scalar_t, typename acc_t, ParzenKernel K, int W>
__global__ void mi_gradient_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                   const uint8_t* __restrict__ mask, const acc_t* __restrict__ range,
                                   const acc_t* __restrict__ grad, int64_t voxels, Parzen<acc_t> pz,
                                   bool in_shared, scalar_t* __restrict__ ga, scalar_t* __restrict__ gb) {
  FASTWARP_DYNAMIC_SHARED(acc_t, staged);
  const int64_t S = mi_row_stride(pz.bins, W), cells = S * S;
  const int64_t m = blockIdx.y;
  const acc_t* g = grad + m * cells;
  if (in_shared) {
    for (int64_t i = threadIdx.x; i < cells; i += blockDim.x) staged[i] = g[i];
    __syncthreads();
    g = staged;
  }
  const PairAxes<acc_t> ax = PairAxes<acc_t>::make(range + 4 * m, pz.kernel, pz.bins);
  const int64_t base = m * voxels;
  ParzenWeights<acc_t> wa, wb;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < voxels; v += stride) {
    const int64_t p = base + v;
    acc_t da = acc_t(0), db = acc_t(0);
    if (mask == nullptr || mask[p] != 0) {
      voxel_gradient<K, W>(pz, ax, static_cast<acc_t>(a[p]), static_cast<acc_t>(b[p]), g, S, ga != nullptr,
                           gb != nullptr, wa, wb, da, db);
    }
    if (ga) ga[p] = static_cast<scalar_t>(da);
    if (gb) gb[p] = static_cast<scalar_t>(db);
  }
}

at::Tensor mi_histogram_cuda(const at::Tensor& a_in, const at::Tensor& b_in, const std::optional<at::Tensor>& mask,
                             const at::Tensor& range, int64_t bins, int64_t kernel, double sigma) {
  check_mi_args("fastwarp::mi_histogram", a_in, b_in, mask, range, bins, kernel, sigma);
  [[maybe_unused]] const auto guard = cuda::device_guard(a_in);
  const ParzenKernel k = to_parzen_kernel(kernel);
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  at::Tensor mask_keep;
  const uint8_t* pm = mi_mask_data(mask, mask_keep);
  const int64_t volumes = a.size(0) * a.size(1);
  const int64_t voxels = volumes == 0 ? 0 : a.numel() / volumes;
  const int64_t S = mi_row_stride(bins, parzen_width(k, sigma));  // rows of S (Note [Fixed-width Parzen loops])
  at::Tensor hist = at::zeros({volumes, S, S}, a.options().dtype(at::kDouble));
  if (volumes > 0 && voxels > 0) {
    const at::Tensor r = range.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "fastwarp_mi_histogram_cuda", [&] {
      using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      const Parzen<acc_t> pz = Parzen<acc_t>::make(k, bins, static_cast<acc_t>(sigma));
      const MiGrid g = mi_grid(volumes, voxels, S, sizeof(acc_t));
      with_parzen_width(k, sigma, [&](auto kc, auto wc) {
        cuda::launch(mi_histogram_kernel<scalar_t, acc_t, decltype(kc)::value, decltype(wc)::value>, g.grid,
                     dim3(kThreads), g.shared_bytes, cuda::current_stream(), a.const_data_ptr<scalar_t>(),
                     b.const_data_ptr<scalar_t>(), pm, r.const_data_ptr<acc_t>(), voxels, pz, g.shared_bytes > 0,
                     hist.mutable_data_ptr<double>());
      });
    });
  }
  return hist.narrow(1, 0, bins).narrow(2, 0, bins).reshape(mi_histogram_shape(a, bins))
      .to(mi_histogram_dtype(a.scalar_type())).contiguous();
}

std::tuple<at::Tensor, at::Tensor> mi_histogram_backward_cuda(const at::Tensor& grad, const at::Tensor& a_in,
                                                              const at::Tensor& b_in,
                                                              const std::optional<at::Tensor>& mask,
                                                              const at::Tensor& range, int64_t bins, int64_t kernel,
                                                              double sigma, std::array<bool, 2> output_mask) {
  check_mi_args("fastwarp::mi_histogram_backward", a_in, b_in, mask, range, bins, kernel, sigma);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(mi_histogram_shape(a_in, bins)),
              "fastwarp::mi_histogram_backward: grad must be (N, C, bins, bins), got ", grad.sizes());
  [[maybe_unused]] const auto guard = cuda::device_guard(a_in);
  const ParzenKernel k = to_parzen_kernel(kernel);
  at::Tensor grad_a = at::empty(output_mask[0] ? a_in.sizes() : at::IntArrayRef{0}, a_in.options());
  at::Tensor grad_b = at::empty(output_mask[1] ? b_in.sizes() : at::IntArrayRef{0}, b_in.options());
  if ((!output_mask[0] && !output_mask[1]) || a_in.numel() == 0) return {grad_a, grad_b};
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  at::Tensor mask_keep;
  const uint8_t* pm = mi_mask_data(mask, mask_keep);
  const int64_t volumes = a.size(0) * a.size(1), voxels = a.numel() / volumes;
  const at::Tensor r = range.contiguous();
  const int64_t S = mi_row_stride(bins, parzen_width(k, sigma));  // G laid out as the histograms are
  const at::Tensor g = mi_padded_gradient(grad, bins, S, range.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "fastwarp_mi_histogram_backward_cuda",
                                  [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const Parzen<acc_t> pz = Parzen<acc_t>::make(k, bins, static_cast<acc_t>(sigma));
    const MiGrid mg = mi_grid(volumes, voxels, S, sizeof(acc_t));
    with_parzen_width(k, sigma, [&](auto kc, auto wc) {
      cuda::launch(mi_gradient_kernel<scalar_t, acc_t, decltype(kc)::value, decltype(wc)::value>, mg.grid,
                   dim3(kThreads),
                   mg.shared_bytes, cuda::current_stream(), a.const_data_ptr<scalar_t>(),
                   b.const_data_ptr<scalar_t>(), pm, r.const_data_ptr<acc_t>(), g.const_data_ptr<acc_t>(), voxels,
                   pz, mg.shared_bytes > 0, output_mask[0] ? grad_a.mutable_data_ptr<scalar_t>() : nullptr,
                   output_mask[1] ? grad_b.mutable_data_ptr<scalar_t>() : nullptr);
    });
  });
  return {grad_a, grad_b};
}

}  // namespace

FASTWARP_CUDA_LIBRARY_IMPL(m) {
  m.impl("mi_histogram", &mi_histogram_cuda);
  m.impl("mi_histogram_backward", &mi_histogram_backward_cuda);
}

}  // namespace fastwarp
