// Test-only kernels for tests/test_cuda_emu_harness.py: one that records what the CUDA
// primitives return (thread and block indices, shuffles, votes, block counts), checked
// against CUDA's definitions, and kernels that each carry a planted bug, beside a correct
// twin, to prove that the harness catches each class of bug. Never part of fastwarp._C:
// compiled only into the emulated-CUDA test build (csrc/emu/harness_emu.cpp) as the ops
// fastwarp_harness::*; nvcc compiles this file unchanged (so the same checks can run on a
// GPU, e.g. under compute-sanitizer).
//
//   name                   bug                                             caught by
//   tile_reverse           none: reverse each block's tile through shared memory
//   tile_reverse_nosync    no __syncthreads between writing and reading    ThreadSanitizer (race),
//                          the tile                                        and a wrong result here
//   shift_sum              none: out[i] = in[i] + in[i + 1], guarded
//   shift_sum_oob          the last thread reads in[n]                     AddressSanitizer
//   histogram              none: a shared-memory histogram with atomics
//   histogram_wrong_bin    atomicAdd into bin + 1: the last bin's count    AddressSanitizer (past
//                          lands past the shared array                     the array), wrong result
//   sum_atomic             none: every thread atomicAdd's into out[0]
//   sum_racy               out[0] += x without an atomic                   ThreadSanitizer (race)
//   dynamic_tile           none: a tile in dynamic shared memory
//   dynamic_tile_overrun   the last thread writes one past the tile        AddressSanitizer
//   warp_sum               none: __shfl_down_sync reduction per warp
//   warp_sum_early_return  threads past n return before the full-mask      the emulator (error)
//                          shuffle
//
// Kernels with known memory counts, for the counting build (tests/test_emu_count.py):
//   copy_stride2           out[i] = in[2i mod n]: 8 sectors per load request, 4 per store
//   bank_conflict          each warp's lanes write and read one shared column, 32 words
//                          apart: 32 wavefronts per request
//   broadcast              each warp's lanes read one shared word: 1 wavefront per request
//   neighbour_sum          out[i] = in[i] + in[i ^ 32]: each warp reads its sectors and its
//                          neighbour warp's, so half the load sectors hit a block's L1
//   sweep_twice            warp 0 of block 0 sums the whole input, twice: the second sweep
//                          hits an L1 that holds the input and misses one that does not
// (tile_reverse is the coalesced, conflict-free case; histogram the atomic one.)
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "../cuda/runtime.h"

namespace fastwarp {
namespace harness {
namespace {

constexpr int kThreads = 256;
constexpr int kBins = 16;

// One record of kFields per thread of a 2-D grid of 2-D blocks (blockDim.x == 32, so a warp
// is one row of a block).
constexpr int kFields = 14;

__global__ void primitives_kernel(float* out) {
  const unsigned int full = 0xffffffffu;
  const int lane = static_cast<int>(threadIdx.x);
  const unsigned int t = threadIdx.y * blockDim.x + threadIdx.x;
  const unsigned int b = blockIdx.y * gridDim.x + blockIdx.x;
  float* r = out + (static_cast<int64_t>(b) * blockDim.x * blockDim.y + t) * kFields;
  r[0] = static_cast<float>(threadIdx.x);
  r[1] = static_cast<float>(threadIdx.y);
  r[2] = static_cast<float>(blockIdx.x);
  r[3] = static_cast<float>(blockIdx.y);
  r[4] = static_cast<float>(__shfl_xor_sync(full, lane, 1));
  r[5] = static_cast<float>(__shfl_up_sync(full, lane, 3));
  r[6] = static_cast<float>(__shfl_down_sync(full, lane, 3, 16));
  r[7] = static_cast<float>(__shfl_sync(full, lane, 5));
  r[8] = static_cast<float>(__popc(__ballot_sync(full, lane % 3 == 0)));
  r[9] = static_cast<float>(__any_sync(full, lane == 31));
  r[10] = static_cast<float>(__all_sync(full, lane < 31));
  r[11] = static_cast<float>(__syncthreads_count(t % 2 == 0));
  r[12] = static_cast<float>(__syncthreads_and(t < 1000));
  r[13] = static_cast<float>(__syncthreads_or(t == 7));
}

template <bool kSync>
__global__ void tile_reverse_kernel(const float* in, float* out, int64_t n) {
  __shared__ float tile[kThreads];
  const int t = threadIdx.x;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads;
  tile[t] = base + t < n ? in[base + t] : 0.f;
  if (kSync) __syncthreads();
  if (base + t < n) out[base + t] = tile[kThreads - 1 - t];
}

template <bool kGuard>
__global__ void shift_sum_kernel(const float* in, float* out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= n) return;
  const float next = (kGuard && i + 1 >= n) ? 0.f : in[i + 1];
  out[i] = in[i] + next;
}

template <bool kWrongBin>
__global__ void histogram_kernel(const float* in, int* counts, int64_t n) {
  __shared__ int hist[kBins];
  const int t = threadIdx.x;
  if (t < kBins) hist[t] = 0;
  __syncthreads();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + t;
  if (i < n) {
    int bin = static_cast<int>(in[i] * kBins);  // inputs in [0, 1)
    bin = bin < 0 ? 0 : (bin >= kBins ? kBins - 1 : bin);
    atomicAdd(&hist[bin + (kWrongBin ? 1 : 0)], 1);
  }
  __syncthreads();
  if (t < kBins) atomicAdd(&counts[t], hist[t]);
}

template <bool kAtomic>
__global__ void sum_kernel(const float* in, float* out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= n) return;
  if (kAtomic) {
    atomicAdd(out, in[i]);
  } else {
    out[0] += in[i];
  }
}

template <bool kOverrun>
__global__ void dynamic_tile_kernel(const float* in, float* out, int64_t n) {
  FASTWARP_DYNAMIC_SHARED(float, tile);
  const int t = threadIdx.x;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads;
  tile[t + (kOverrun && t == kThreads - 1 ? 1 : 0)] = base + t < n ? in[base + t] : 0.f;
  __syncthreads();
  if (base + t < n) out[base + t] = 2.f * tile[t];
}

template <bool kEarlyReturn>
__global__ void warp_sum_kernel(const float* in, float* out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (kEarlyReturn && i >= n) return;
  float v = i < n ? in[i] : 0.f;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (threadIdx.x % 32 == 0) atomicAdd(out, v);
}

__global__ void copy_stride2_kernel(const float* in, float* out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < n) out[i] = in[(2 * i) % n];
}

__global__ void bank_conflict_kernel(const float* in, float* out, int64_t n) {
  __shared__ float tile[32 * 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;  // kThreads / 32 <= 32 warps
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  tile[lane * 32 + warp] = i < n ? in[i] : 0.f;
  __syncthreads();
  if (i < n) out[i] = 2.f * tile[lane * 32 + warp];
}

__global__ void broadcast_kernel(const float* in, float* out, int64_t n) {
  __shared__ float tile[kThreads];
  const int t = threadIdx.x;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + t;
  tile[t] = i < n ? in[i] : 0.f;
  __syncthreads();
  if (i < n) out[i] = tile[t - t % 32];
}

__global__ void neighbour_sum_kernel(const float* in, float* out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < n) out[i] = in[i] + in[(i ^ 32) < n ? (i ^ 32) : i];
}

__global__ void sweep_twice_kernel(const float* in, float* out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (blockIdx.x != 0 || threadIdx.x >= 32) {
    if (i < n) out[i] = 0.f;
    return;
  }
  float first = 0.f, second = 0.f;
  for (int64_t k = threadIdx.x; k < n; k += 32) first += in[k];
  for (int64_t k = threadIdx.x; k < n; k += 32) second += in[k];
  if (i < n) out[i] = first + second;
}

__global__ void noop_kernel(float*) {}

// (grid_x * grid_y * 32 * block_y, kFields) records of primitives_kernel.
at::Tensor primitives(const at::Tensor& like, int64_t grid_x, int64_t grid_y, int64_t block_y) {
  [[maybe_unused]] const auto guard = cuda::device_guard(like);
  at::Tensor out = at::full({grid_x * grid_y * 32 * block_y, kFields}, -1.f, like.options().dtype(at::kFloat));
  cuda::launch(primitives_kernel, dim3(grid_x, grid_y), dim3(32, block_y), 0,
               cuda::current_stream(), out.mutable_data_ptr<float>());
  return out;
}

unsigned int blocks_for(int64_t n) { return static_cast<unsigned int>((n + kThreads - 1) / kThreads); }

at::Tensor run(c10::string_view name_view, const at::Tensor& input) {
  const std::string name(name_view);
  TORCH_CHECK(input.scalar_type() == at::kFloat && input.is_contiguous() && input.dim() == 1,
              "fastwarp_harness: input must be a contiguous 1-D float32 tensor");
  [[maybe_unused]] const auto guard = cuda::device_guard(input);
  const int64_t n = input.numel();
  const float* in = input.const_data_ptr<float>();
  const auto stream = cuda::current_stream();
  const dim3 grid(blocks_for(n)), block(kThreads);
  auto elementwise = [&](void (*kernel)(const float*, float*, int64_t), size_t shared = 0) {
    at::Tensor out = at::empty_like(input);
    cuda::launch(kernel, grid, block, shared, stream, in, out.mutable_data_ptr<float>(), n);
    return out;
  };
  auto scalar = [&](void (*kernel)(const float*, float*, int64_t)) {
    at::Tensor out = at::zeros({1}, input.options());
    cuda::launch(kernel, grid, block, 0, stream, in, out.mutable_data_ptr<float>(), n);
    return out;
  };
  auto histogram = [&](void (*kernel)(const float*, int*, int64_t)) {
    at::Tensor counts = at::zeros({kBins + 1}, input.options().dtype(at::kInt));  // +1: a guard bin
    cuda::launch(kernel, grid, block, 0, stream, in, counts.mutable_data_ptr<int>(), n);
    return counts.narrow(0, 0, kBins).to(at::kFloat);
  };
  if (name == "tile_reverse") return elementwise(tile_reverse_kernel<true>);
  if (name == "tile_reverse_nosync") return elementwise(tile_reverse_kernel<false>);
  if (name == "shift_sum") return elementwise(shift_sum_kernel<true>);
  if (name == "shift_sum_oob") return elementwise(shift_sum_kernel<false>);
  if (name == "histogram") return histogram(histogram_kernel<false>);
  if (name == "histogram_wrong_bin") return histogram(histogram_kernel<true>);
  if (name == "sum_atomic") return scalar(sum_kernel<true>);
  if (name == "sum_racy") return scalar(sum_kernel<false>);
  if (name == "dynamic_tile") return elementwise(dynamic_tile_kernel<false>, kThreads * sizeof(float));
  if (name == "dynamic_tile_overrun")
    return elementwise(dynamic_tile_kernel<true>, kThreads * sizeof(float));
  if (name == "warp_sum") return scalar(warp_sum_kernel<false>);
  if (name == "warp_sum_early_return") return scalar(warp_sum_kernel<true>);
  if (name == "copy_stride2") return elementwise(copy_stride2_kernel);
  if (name == "bank_conflict") return elementwise(bank_conflict_kernel);
  if (name == "broadcast") return elementwise(broadcast_kernel);
  if (name == "neighbour_sum") return elementwise(neighbour_sum_kernel);
  if (name == "sweep_twice") return elementwise(sweep_twice_kernel);
  TORCH_CHECK(false, "fastwarp_harness: unknown kernel ", name);
}

// Launches an empty kernel with this configuration; `optin_bytes` > 0 first raises the
// kernel's dynamic shared memory limit to that.
void launch_config(const at::Tensor& like, int64_t threads, int64_t shared_bytes, int64_t optin_bytes) {
  [[maybe_unused]] const auto guard = cuda::device_guard(like);
  if (optin_bytes > 0) cuda::set_max_dynamic_shared_memory(noop_kernel, static_cast<size_t>(optin_bytes));
  cuda::launch(noop_kernel, dim3(1), dim3(static_cast<unsigned int>(threads)),
               static_cast<size_t>(shared_bytes), cuda::current_stream(), nullptr);
}

}  // namespace
}  // namespace harness
}  // namespace fastwarp

TORCH_LIBRARY(fastwarp_harness, m) {
  m.def("primitives(Tensor like, int grid_x, int grid_y, int block_y) -> Tensor");
  m.def("run(str name, Tensor input) -> Tensor");
  m.def("launch_config(Tensor like, int threads, int shared_bytes, int optin_bytes) -> ()");
}

TORCH_LIBRARY_IMPL(fastwarp_harness, FASTWARP_CUDA_DISPATCH_KEY, m) {
  m.impl("primitives", &fastwarp::harness::primitives);
  m.impl("run", &fastwarp::harness::run);
  m.impl("launch_config", &fastwarp::harness::launch_config);
}
