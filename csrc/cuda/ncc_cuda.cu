// CUDA loops of fastwarp::ncc: the op bodies (csrc/common/ncc_op.h) run their elementwise
// and per-line lambdas as one thread per element (or per line, for the running box sums).
#include <torch/library.h>

#include "../common/ncc_op.h"
#include "runtime.h"

namespace fastwarp {
namespace {

constexpr int kThreads = 256;

template <typename F>
__global__ void __launch_bounds__(kThreads) elementwise_kernel(int64_t n, F f) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < n) f(i);
}

struct CudaNccBackend {
  static auto device_guard(const at::Tensor& t) { return cuda::device_guard(t); }

  template <typename F>
  static void parallel_for(int64_t n, int64_t /*work*/, const F& f) {
    if (n == 0) return;
    const auto blocks = static_cast<unsigned int>((n + kThreads - 1) / kThreads);
    cuda::launch(elementwise_kernel<F>, blocks, kThreads, 0, cuda::current_stream(), n, f);
  }
};

}  // namespace

FASTWARP_CUDA_LIBRARY_IMPL(m) { register_ncc_ops<CudaNccBackend>(m); }

}  // namespace fastwarp
