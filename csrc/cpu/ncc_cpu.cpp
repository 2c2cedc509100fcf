// CPU loops of fastwarp::ncc: the op bodies (csrc/common/ncc_op.h) run their elementwise
// and per-line lambdas through at::parallel_for.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/ncc_op.h"

namespace fastwarp {
namespace {

// Elements per task: the loops are a few flops per element (or a running sum per line).
constexpr int64_t kElementsPerTask = 16384;

struct CpuNccBackend {
  struct NoGuard {};
  static NoGuard device_guard(const at::Tensor&) { return {}; }

  template <typename F>
  static void parallel_for(int64_t n, int64_t work, const F& f) {
    const int64_t grain = std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, work));
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) f(i);
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastwarp, CPU, m) { register_ncc_ops<CpuNccBackend>(m); }

}  // namespace fastwarp
