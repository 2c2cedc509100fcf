// CUDA loops of fastwarp::ncc: the op bodies (csrc/common/ncc_op.h) run their elementwise
// and per-line lambdas as one thread per element (or per line, for the running box sums).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/ncc_op.h"

namespace fastwarp {
namespace {

constexpr int kThreads = 256;

template <typename F>
__global__ void __launch_bounds__(kThreads) elementwise_kernel(int64_t n, F f) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < n) f(i);
}

struct CudaNccBackend {
  static c10::cuda::CUDAGuard device_guard(const at::Tensor& t) {
    return c10::cuda::CUDAGuard(t.device());
  }

  template <typename F>
  static void parallel_for(int64_t n, int64_t /*work*/, const F& f) {
    if (n == 0) return;
    const auto blocks = static_cast<unsigned int>((n + kThreads - 1) / kThreads);
    elementwise_kernel<<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(n, f);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastwarp, CUDA, m) { register_ncc_ops<CudaNccBackend>(m); }

}  // namespace fastwarp
