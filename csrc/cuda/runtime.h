// What the CUDA files (csrc/cuda/*.cu) use of the CUDA runtime and of c10's CUDA glue, behind
// one small interface with two implementations:
//
//   * nvcc (the real GPU build): c10's device guard and current stream, and
//     kernel<<<grid, block, shared, stream>>>(args...) followed by the launch check;
//   * FASTWARP_CUDA_EMU (the test build, compiled by the host compiler): the emulated
//     launch of csrc/emu/cuda_emu.h on CPU threads, CPU tensors, no guard, no stream.
//
// Kernels are launched only through fastwarp::cuda::launch, and the .cu files register
// their ops only through FASTWARP_CUDA_LIBRARY_IMPL, so one source serves both builds.
#pragma once

#include <cstdlib>

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstddef>
#include <utility>

#if defined(FASTWARP_CUDA_EMU)
#include "../emu/cuda_emu.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
// Dynamic shared memory: `FASTWARP_DYNAMIC_SHARED(float, tile);` declares `float* tile`.
#define FASTWARP_DYNAMIC_SHARED(T, name)                                      \
  extern __shared__ __align__(16) unsigned char fastwarp_dynamic_shared_[]; \
  T* name = reinterpret_cast<T*>(fastwarp_dynamic_shared_)
#endif

namespace fastwarp {
namespace cuda {

#if defined(FASTWARP_CUDA_EMU)

struct NoGuard {};
inline NoGuard device_guard(const at::Tensor&) { return {}; }
// Where scratch tensors of the CUDA code live.
inline at::Device current_device() { return at::Device(at::kCPU); }
inline cudaStream_t current_stream() { return nullptr; }

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
            cudaStream_t /*stream*/, Args&&... args) {
  emu::launch(kernel, grid, block, shared_bytes, std::forward<Args>(args)...);
}

// The emulated device is an H200's: 132 multiprocessors, 227 KiB of shared memory per block
// with the opt-in. FASTWARP_EMU_SM_COUNT sets another multiprocessor count, so that a test
// can shape the launches a grid sized by it gets (e.g. the NCC's one long chunk per volume,
// which an H200 gives a batch of large volumes) on inputs small enough to emulate.
inline int multiprocessor_count() {
  const char* sm = std::getenv("FASTWARP_EMU_SM_COUNT");
  return sm != nullptr && std::atoi(sm) > 0 ? std::atoi(sm) : 132;
}
inline size_t max_shared_memory_per_block() { return emu::kMaxDynamicSharedOptin; }

// Blocks of a kernel one multiprocessor holds at once, with sm_90's limits (4 register-file
// sub-partitions of 16,384, allocated per warp in units of 256; 2048 threads, 32 blocks, 228 KiB of shared
// memory of which 1 KiB is reserved per block). The emulation cannot know the kernel's
// registers: the caller states them (`registers`, per thread, as ptxas's report has them; a
// test holds the statement to the report), or they are not counted (0).
template <typename... Params>
int resident_blocks(void (*)(Params...), int threads, size_t shared_bytes, int registers = 0) {
  const int warps = (threads + 31) / 32;
  const int by_threads = 2048 / threads;
  const int by_shared = static_cast<int>((228 * 1024) / (shared_bytes + 1024));
  const int by_registers = registers > 0 ? 4 * (16384 / (((registers * 32 + 255) / 256) * 256)) / warps : 32;
  return std::max(1, std::min({32, by_threads, by_shared, by_registers}));
}

#else

inline c10::cuda::CUDAGuard device_guard(const at::Tensor& t) {
  return c10::cuda::CUDAGuard(t.device());
}
inline at::Device current_device() {
  return at::Device(at::kCUDA, c10::cuda::current_device());
}
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
            cudaStream_t stream, Args&&... args) {
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

inline int device_attribute(cudaDeviceAttr attribute) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, c10::cuda::current_device()));
  return value;
}
inline int multiprocessor_count() { return device_attribute(cudaDevAttrMultiProcessorCount); }
// Dynamic shared memory a block may have after set_max_dynamic_shared_memory.
inline size_t max_shared_memory_per_block() {
  return static_cast<size_t>(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin));
}

// Blocks of `kernel` one multiprocessor holds at once (the occupancy API: registers, shared
// memory, threads); call after set_max_dynamic_shared_memory. `registers`: the emulation's
// (the API knows them).
template <typename... Params>
int resident_blocks(void (*kernel)(Params...), int threads, size_t shared_bytes, int /*registers*/ = 0) {
  int blocks = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, shared_bytes));
  return blocks > 0 ? blocks : 1;
}

#endif

// Allows `kernel` up to `bytes` of dynamic shared memory per block (above the default
// 48 KiB needs this opt-in on sm_70 and later).
template <typename... Params>
void set_max_dynamic_shared_memory(void (*kernel)(Params...), size_t bytes) {
#if defined(FASTWARP_CUDA_EMU)
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                       static_cast<int>(bytes));
#else
  C10_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
#endif
}

}  // namespace cuda
}  // namespace fastwarp

// Registers the CUDA backend of the ops: for the CUDA dispatch key of fastwarp::, or, in the
// emulated test build, as the CPU kernels of the private twin namespace fastwarp_emu::
// (csrc/emu/emu_ops.cpp), which the tests reach through fastwarp._emu.
#if defined(FASTWARP_CUDA_EMU)
#define FASTWARP_CUDA_DISPATCH_KEY CPU
#define FASTWARP_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(fastwarp_emu, CPU, m)
#else
#define FASTWARP_CUDA_DISPATCH_KEY CUDA
#define FASTWARP_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(fastwarp, CUDA, m)
#endif
