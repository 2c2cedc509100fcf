// The CUDA execution model on the CPU, so that the kernels of csrc/cuda/*.cu compile with
// the host compiler, unchanged, and run in CI on machines without a GPU (the test build,
// FASTWARP_CUDA_EMU=1; csrc/emu/README.md). No torch here: C++20 and POSIX ucontext.
// Include it after every torch header: it defines CUDA's keywords as macros.
//
// Note [CUDA emulation]
// ~~~~~~~~~~~~~~~~~~~~~
// What is emulated, and how:
//   * A launch runs its blocks one after another on the calling thread. Every CUDA thread
//     of the running block is its own execution context (a fiber: its own stack and
//     registers, ucontext), started in thread order and run until it returns or waits at a
//     barrier; a barrier that all its participants have reached releases them. Switching
//     only at barriers costs about a microsecond per CUDA thread, where an OS thread per
//     CUDA thread cost milliseconds per block on two cores.
//   * ThreadSanitizer sees each CUDA thread as a thread of its own: every fiber has its own
//     TSan context, fibers switch without synchronizing (__tsan_switch_to_fiber_no_sync),
//     and the only happens-before edges are the ones CUDA guarantees: a barrier (release
//     on arrival, acquire on leaving), and the end of a block before the start of the next.
//     So a missing __syncthreads between a write and a read of shared memory by different
//     threads is a reported data race, whatever order the fibers happened to run in. The
//     emulator's own bookkeeping is not instrumented (FASTWARP_EMU_INTERNAL).
//     AddressSanitizer is told of every stack switch (__sanitizer_*_switch_fiber).
//   * threadIdx / blockIdx / blockDim / gridDim read the running fiber's indices; warpSize
//     is 32 and the warps of a block are its consecutive runs of 32 linear thread indices.
//   * __syncthreads() waits for the block's threads that have not returned (a thread that
//     returns leaves the barrier, as exited threads do on the GPU); __syncthreads_count,
//     _and, _or too. Threads that wait for each other forever are reported as a deadlock.
//   * Static __shared__ variables are function-local statics: one copy, which is correct
//     because one block of one launch runs at a time (launches are serialized). Dynamic
//     shared memory (FASTWARP_DYNAMIC_SHARED) is a heap buffer of exactly the launch's size,
//     so AddressSanitizer flags any access past it; it is filled with 0xFF bytes (NaN in
//     every float type) before each block, as a GPU leaves it uninitialized.
//   * atomicAdd/Sub/Exch/Min/Max/And/Or/Xor/CAS are relaxed std::atomic_ref operations.
//   * __syncwarp, __shfl_sync / _up / _down / _xor, __ballot_sync, __any_sync, __all_sync
//     exchange through a per-warp buffer between two barriers of exactly the lanes in the
//     mask. A mask naming a lane that has returned or does not exist, a calling lane outside
//     its own mask, or lanes that disagree on the mask, are reported as errors (undefined
//     behaviour on the GPU).
//   * Launch configuration limits are checked as the GPU does (sm_90): at most 1024 threads
//     per block (z at most 64), grid y and z at most 65535, no empty grid or block, dynamic
//     shared memory at most 48 KiB unless raised with cudaFuncSetAttribute
//     (cudaFuncAttributeMaxDynamicSharedMemorySize), and never above 227 KiB.
//   * Errors (a bad configuration, a broken warp mask, a deadlock, __trap) stop the launch,
//     unwind every thread of the block, and make the launch throw std::runtime_error, which
//     torch turns into a Python RuntimeError.
//
// What the emulation cannot see (scripts/gpu_check.sh checks these on a real GPU):
//   * The GPU memory model: every emulated access is coherent, so a missing __threadfence,
//     a flag polled across blocks, or reliance on an order between blocks would pass here.
//     Blocks never overlap and each happens before the next, so races *between* blocks of a
//     launch (as opposed to within one) are invisible to ThreadSanitizer.
//   * One interleaving per run: threads switch only at barriers, in a fixed order. Races are
//     found by ThreadSanitizer's happens-before analysis, not by the schedule.
//   * Arithmetic: the host compiler neither contracts a*b+c into FMA as nvcc does by default
//     nor uses the GPU's approximate intrinsics; compare with tolerances.
//   * Resource limits that depend on the compiled kernel: registers per thread, static
//     shared memory, local memory spills, and whether __launch_bounds__ can be met.
//   * Reads of uninitialized *static* shared memory (a function-local static keeps the
//     previous block's values).
//   * Performance and occupancy. The counting build (FASTWARP_EMU_COUNT, count.h) counts
//     what a GPU would see of the memory traffic (coalescing, DRAM sectors, bank conflicts,
//     atomics, barriers: Note [Counting the emulated launch]); time is the model's
//     (fastwarp/app/bench/gpu_model.py), never measured here.
#pragma once

#include <ucontext.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

// The emulator's own bookkeeping: not instrumented by ThreadSanitizer (its state is touched
// by every fiber of one OS thread; the edges CUDA guarantees are annotated instead).
#if defined(__SANITIZE_THREAD__)
#define FASTWARP_EMU_INTERNAL __attribute__((no_sanitize_thread, noinline))
#elif defined(FASTWARP_EMU_COUNT)
// ... and not counted (Note [Counting the emulated launch]): never inlined into a kernel.
#define FASTWARP_EMU_INTERNAL __attribute__((no_sanitize("coverage"), noinline))
#else
#define FASTWARP_EMU_INTERNAL
#endif

// ------------------------------------------------------------------ language extensions

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__ static
#define __align__(n) __attribute__((aligned(n)))

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
      : x(vx), y(vy), z(vz) {}
};

using cudaStream_t = struct CUstream_st*;

enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

constexpr int warpSize = 32;

namespace fastwarp {
namespace emu {

// sm_90 (Hopper) limits.
constexpr unsigned int kMaxThreadsPerBlock = 1024;
constexpr unsigned int kMaxBlockDimZ = 64;
constexpr unsigned int kMaxGridDimYZ = 65535;
constexpr unsigned int kMaxGridDimX = 2147483647u;
constexpr size_t kDefaultDynamicShared = 48 * 1024;
constexpr size_t kMaxDynamicSharedOptin = 227 * 1024;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr size_t kFiberStack = 1024 * 1024;
#else
constexpr size_t kFiberStack = 256 * 1024;
#endif

// Thrown inside a fiber to unwind the kernel when the launch has failed.
struct LaunchAborted {};

// ------------------------------------------------------------------ contexts

// An execution context: the host's (the scheduler) or a fiber's.
struct Context {
  ucontext_t uc;
  const void* stack_bottom = nullptr;  // for AddressSanitizer; the host's is learnt on switch
  size_t stack_size = 0;
  void* tsan = nullptr;  // ThreadSanitizer's context
};

// Switches from `from` to `to`; returns when something switches back to `from`.
FASTWARP_EMU_INTERNAL inline void switch_context(Context& from, Context& to) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(nullptr, to.stack_bottom, to.stack_size);
#endif
#if defined(__SANITIZE_THREAD__)
  __tsan_switch_to_fiber(to.tsan, __tsan_switch_to_fiber_no_sync);
#endif
  swapcontext(&from.uc, &to.uc);
#if defined(__SANITIZE_ADDRESS__)
  // back in `from`: tells ASan which stack we came from (unused)
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
}

// Happens-before annotations (no-ops without ThreadSanitizer).
FASTWARP_EMU_INTERNAL inline void hb_release(void* addr) {
#if defined(__SANITIZE_THREAD__)
  __tsan_release(addr);
#else
  (void)addr;
#endif
}
FASTWARP_EMU_INTERNAL inline void hb_acquire(void* addr) {
#if defined(__SANITIZE_THREAD__)
  __tsan_acquire(addr);
#else
  (void)addr;
#endif
}

class Launch;

// One CUDA thread's context, its stack (with a guard page below it) kept for reuse.
struct Fiber {
  Context ctx;
  void* mapping = nullptr;
  size_t mapping_size = 0;
  // the CUDA thread it runs in the current block
  Launch* launch = nullptr;
  unsigned int linear = 0;
  uint3 thread_idx{0, 0, 0};
  enum class State { Ready, Waiting, Done } state = State::Done;
  int sync_phase = 0;  // which of the block's counters the next __syncthreads_count uses

  FASTWARP_EMU_INTERNAL Fiber() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    mapping_size = kFiberStack + page;
    mapping = mmap(nullptr, mapping_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mapping == MAP_FAILED) throw std::runtime_error("CUDA emulation: cannot map a fiber stack");
    mprotect(mapping, page, PROT_NONE);  // a stack overflow faults instead of corrupting
    ctx.stack_bottom = static_cast<char*>(mapping) + page;
    ctx.stack_size = kFiberStack;
#if defined(__SANITIZE_THREAD__)
    ctx.tsan = __tsan_create_fiber(0);
#endif
  }
  Fiber(const Fiber&) = delete;
  Fiber& operator=(const Fiber&) = delete;
};

// What the code running now belongs to.
struct Current {
  Launch* launch = nullptr;
  Fiber* fiber = nullptr;
};
inline thread_local Current current_state;

}  // namespace emu
}  // namespace fastwarp

#if defined(FASTWARP_EMU_COUNT)
#include "count.h"
#endif

namespace fastwarp {
namespace emu {

FASTWARP_EMU_INTERNAL inline Fiber& current_fiber() {
  if (current_state.fiber == nullptr)
    throw std::runtime_error("CUDA emulation: a device function was called outside a kernel");
  return *current_state.fiber;
}

// ------------------------------------------------------------------ barriers

// __syncthreads: the block's threads that have not returned.
class BlockBarrier {
 public:
  FASTWARP_EMU_INTERNAL void reset(int participants) {
    expected_ = participants;
    arrived_ = 0;
  }
  inline void arrive();  // defined after Launch
  inline void leave();

 private:
  inline void complete();
  int expected_ = 0;
  int arrived_ = 0;  // also the number of waiters_
  uint64_t generation_ = 0;
  Fiber* waiters_[kMaxThreadsPerBlock] = {};
  char sync_[2] = {};  // happens-before addresses of even and odd generations
};

// The lanes of one warp: a barrier of exactly the lanes named by a mask, and the buffer
// the shuffles exchange their values through.
class WarpGroup {
 public:
  FASTWARP_EMU_INTERNAL void reset(uint32_t lanes) {
    live_ = lanes;
    exists_ = lanes;
    arrived_ = 0;
    mask_ = 0;
    waiting_ = 0;
  }
  inline void sync(uint32_t mask);
  inline void leave(int lane);
  uint32_t live() const { return live_; }
  uint64_t* slots() { return slots_; }

 private:
  uint32_t live_ = 0, exists_ = 0, arrived_ = 0, mask_ = 0;
  uint64_t generation_ = 0;
  int waiting_ = 0;
  Fiber* waiters_[warpSize] = {};
  char sync_[2] = {};
  uint64_t slots_[32] = {};
};

// ------------------------------------------------------------------ a launch

// Note: the emulator's shared bookkeeping (barriers, the ready queue) lives in plain arrays
// touched only by FASTWARP_EMU_INTERNAL functions: a std::vector or std::deque member
// function would be instrumented even when called from them, and ThreadSanitizer would
// report the fibers' unsynchronized updates of the emulator's own state.

class Launch {
 public:
  FASTWARP_EMU_INTERNAL Launch(dim3 grid, dim3 block, size_t shared_bytes,
                               std::function<void()> body)
      : grid_(grid),
        block_(block),
        body_(std::move(body)),
        threads_(block.x * block.y * block.z),
        warps_((threads_ + warpSize - 1) / warpSize),
        blocks_(static_cast<uint64_t>(grid.x) * grid.y * grid.z),
        shared_bytes_(shared_bytes),
        warp_groups_(warps_) {
    if (shared_bytes > 0) dynamic_shared_.reset(new unsigned char[shared_bytes]);
  }

  // Runs every block, in order, on the calling thread over `fibers` (at least threads()).
  FASTWARP_EMU_INTERNAL void run(std::vector<std::unique_ptr<Fiber>>& fibers) {
#if defined(__SANITIZE_THREAD__)
    host_.tsan = __tsan_get_current_fiber();
#endif
    for (unsigned int t = 0; t < threads_; ++t) {
      Fiber& f = *fibers[t];
      f.launch = this;
      f.linear = t;
      f.thread_idx = uint3{t % block_.x, (t / block_.x) % block_.y, t / (block_.x * block_.y)};
    }
    for (uint64_t b = 0; b < blocks_ && !aborted(); ++b) {
      block_idx_ = uint3{static_cast<unsigned int>(b % grid_.x),
                         static_cast<unsigned int>((b / grid_.x) % grid_.y),
                         static_cast<unsigned int>(b / (static_cast<uint64_t>(grid_.x) * grid_.y))};
#if defined(FASTWARP_EMU_COUNT)
      if (count::counter().enabled()) {
        if (!count::counter().run_block(b)) continue;
        count::counter().begin_block(threads_, dynamic_shared_.get(), shared_bytes_);
      }
#endif
      start_block();
      for (unsigned int t = 0; t < threads_; ++t) {
        Fiber& f = *fibers[t];
        getcontext(&f.ctx.uc);
        f.ctx.uc.uc_stack.ss_sp = const_cast<void*>(f.ctx.stack_bottom);
        f.ctx.uc.uc_stack.ss_size = f.ctx.stack_size;
        f.ctx.uc.uc_link = nullptr;
        makecontext(&f.ctx.uc, &Launch::fiber_main, 0);
        f.state = Fiber::State::Ready;
        f.sync_phase = 0;
        make_ready(&f);
      }
      hb_release(&block_start_sync_);  // the host's writes happen before the block
      run_ready();
      if (!aborted()) {
        bool stuck = false;
        for (unsigned int t = 0; t < threads_; ++t) stuck |= fibers[t]->state != Fiber::State::Done;
        if (stuck)
          record_failure(
              "deadlock: threads of a block wait at __syncthreads or a warp-synchronous call that "
              "the others never reach");
      }
      if (aborted()) {  // wake every waiting thread, which then unwinds
        for (unsigned int t = 0; t < threads_; ++t)
          if (fibers[t]->state == Fiber::State::Waiting) make_ready(fibers[t].get());
        run_ready();
      }
      hb_acquire(&block_end_sync_);  // the block happens before the host goes on
#if defined(FASTWARP_EMU_COUNT)
      if (count::counter().enabled()) count::counter().flush(false);
#endif
    }
    current_state = Current{};
  }

  unsigned int threads() const { return threads_; }
  bool aborted() const { return failed_; }
  const std::string& error() const { return error_; }

  [[noreturn]] FASTWARP_EMU_INTERNAL void fail(const std::string& message) {
    record_failure(message);
    throw LaunchAborted{};
  }

  FASTWARP_EMU_INTERNAL void record_failure(const std::string& message) {
    if (!failed_) error_ = message;
    failed_ = true;
  }

  // The running fiber waits until make_ready: switch to the host.
  FASTWARP_EMU_INTERNAL void wait(Fiber& f) {
    f.state = Fiber::State::Waiting;
    switch_context(f.ctx, host_);
    current_state = Current{this, &f};
  }

  FASTWARP_EMU_INTERNAL void make_ready(Fiber* f) {
    f->state = Fiber::State::Ready;
    ready_[(ready_head_ + ready_count_) % kMaxThreadsPerBlock] = f;
    ++ready_count_;  // each fiber is queued at most once: never more than a block's threads
  }

  BlockBarrier& syncthreads_barrier() { return syncthreads_; }
  WarpGroup& warp(unsigned int linear_thread) { return warp_groups_[linear_thread / warpSize]; }
  std::atomic<int>* block_counters() { return block_counters_; }
  unsigned char* dynamic_shared() { return dynamic_shared_.get(); }
  uint3 block_idx() const { return block_idx_; }
  dim3 block_dim() const { return block_; }
  dim3 grid_dim() const { return grid_; }

 private:
  FASTWARP_EMU_INTERNAL void start_block() {
    syncthreads_.reset(static_cast<int>(threads_));
    for (unsigned int w = 0; w < warps_; ++w) {
      const unsigned int lanes = std::min<unsigned int>(warpSize, threads_ - w * warpSize);
      warp_groups_[w].reset(lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u));
    }
    for (auto& c : block_counters_) c.store(0, std::memory_order_relaxed);
    if (shared_bytes_ > 0) std::memset(dynamic_shared_.get(), 0xFF, shared_bytes_);
  }

  FASTWARP_EMU_INTERNAL void run_ready() {
    while (ready_count_ > 0) {
      Fiber* f = ready_[ready_head_];
      ready_head_ = (ready_head_ + 1) % kMaxThreadsPerBlock;
      --ready_count_;
      current_state = Current{this, f};
#if defined(FASTWARP_EMU_COUNT)
      if (count::counter().enabled()) count::running = f;
#endif
      switch_context(host_, f->ctx);
#if defined(FASTWARP_EMU_COUNT)
      count::running = nullptr;
#endif
      current_state = Current{};
    }
  }

  // The body of every fiber: one CUDA thread, then back to the host for good.
  FASTWARP_EMU_INTERNAL static void fiber_main() {
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(nullptr, &current_state.launch->host_.stack_bottom,
                                    &current_state.launch->host_.stack_size);
#endif
    Fiber* f = current_state.fiber;
    Launch* l = f->launch;
    hb_acquire(&l->block_start_sync_);
    l->run_thread(*f);
    f->state = Fiber::State::Done;
    hb_release(&l->block_end_sync_);
    switch_context(f->ctx, l->host_);  // never resumed: the next block remakes the context
    __builtin_unreachable();
  }

  FASTWARP_EMU_INTERNAL void run_thread(Fiber& f) {
    bool returned = false;
    try {
      body_();
      returned = true;
    } catch (const LaunchAborted&) {
    } catch (const std::exception& e) {
      record_failure(e.what());
    } catch (...) {
      record_failure("an exception escaped the kernel");
    }
    if (returned) {  // the thread has exited: it no longer takes part in any barrier
      syncthreads_.leave();
      warp(f.linear).leave(static_cast<int>(f.linear % warpSize));
    }
  }

  dim3 grid_, block_;
  std::function<void()> body_;
  unsigned int threads_, warps_;
  uint64_t blocks_;
  size_t shared_bytes_;
  std::vector<WarpGroup> warp_groups_;
  std::unique_ptr<unsigned char[]> dynamic_shared_;
  uint3 block_idx_{0, 0, 0};
  BlockBarrier syncthreads_;
  std::atomic<int> block_counters_[3] = {};
  Fiber* ready_[kMaxThreadsPerBlock] = {};  // a ring: ready_count_ fibers from ready_head_
  unsigned int ready_head_ = 0, ready_count_ = 0;
  Context host_;
  bool failed_ = false;
  std::string error_;
  char block_start_sync_ = 0, block_end_sync_ = 0;
};

FASTWARP_EMU_INTERNAL inline Launch& current() {
  Fiber& f = current_fiber();
  return *f.launch;
}

[[noreturn]] inline void device_error(const std::string& message) { current().fail(message); }

FASTWARP_EMU_INTERNAL inline void BlockBarrier::complete() {
  Launch& l = current();
  for (int i = 0; i < arrived_; ++i) {
    if (waiters_[i] != nullptr) l.make_ready(waiters_[i]);
  }
  arrived_ = 0;
  ++generation_;
#if defined(FASTWARP_EMU_COUNT)
  count::barrier();
#endif
}

FASTWARP_EMU_INTERNAL inline void BlockBarrier::arrive() {
  Fiber& f = current_fiber();
  Launch& l = *f.launch;
  const uint64_t generation = generation_;
  char* sync = &sync_[generation & 1];
  hb_release(sync);
  waiters_[arrived_] = nullptr;  // the completing thread is not waiting
  if (++arrived_ == expected_) {
    complete();
  } else {
    waiters_[arrived_ - 1] = &f;
    l.wait(f);
    if (generation_ == generation) throw LaunchAborted{};  // woken only to unwind
  }
  hb_acquire(sync);
}

FASTWARP_EMU_INTERNAL inline void BlockBarrier::leave() {
  --expected_;
  if (arrived_ > 0 && arrived_ == expected_) complete();
}

FASTWARP_EMU_INTERNAL inline void WarpGroup::sync(uint32_t mask) {
  Fiber& f = current_fiber();
  Launch& l = *f.launch;
  const uint32_t bit = 1u << (f.linear % warpSize);
  if (!(mask & bit))
    l.fail("a warp-synchronous call whose mask does not include the calling lane");
  if (mask & ~exists_)
    l.fail("a warp mask names lanes that do not exist in this block (the block size is not a "
           "multiple of 32)");
  if (mask & ~live_) l.fail("a warp mask names a lane that has already returned from the kernel");
  if (arrived_ == 0) {
    mask_ = mask;
  } else if (mask_ != mask) {
    l.fail("lanes of one warp called warp-synchronous functions with different masks at once");
  }
  const uint64_t generation = generation_;
  char* sync = &sync_[generation & 1];
  hb_release(sync);
  arrived_ |= bit;
  if (arrived_ == mask_) {
    arrived_ = 0;
    ++generation_;
    for (int i = 0; i < waiting_; ++i) l.make_ready(waiters_[i]);
    waiting_ = 0;
  } else {
    waiters_[waiting_++] = &f;
    l.wait(f);
    if (generation_ == generation) throw LaunchAborted{};
  }
  hb_acquire(sync);
}

FASTWARP_EMU_INTERNAL inline void WarpGroup::leave(int lane) {
  live_ &= ~(1u << lane);
  if (arrived_ != 0 && (mask_ & (1u << lane)))
    current().record_failure(
        "a lane returned from the kernel while other lanes of its warp waited for it in a "
        "warp-synchronous call");
}

// ------------------------------------------------------------------ launching

// Per-kernel attributes set through cudaFuncSetAttribute.
inline std::unordered_map<const void*, size_t>& max_dynamic_shared() {
  static std::unordered_map<const void*, size_t> table;
  return table;
}

inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

// The fibers of the calling OS thread, kept across launches.
FASTWARP_EMU_INTERNAL inline std::vector<std::unique_ptr<Fiber>>& fiber_pool(unsigned int n) {
  static thread_local std::vector<std::unique_ptr<Fiber>> pool;
  while (pool.size() < n) pool.push_back(std::make_unique<Fiber>());
  return pool;
}

inline void check_configuration(const void* kernel, dim3 grid, dim3 block, size_t shared) {
  auto bad = [](const std::string& what) {
    throw std::runtime_error("CUDA emulation: invalid launch configuration: " + what);
  };
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) bad("empty grid");
  if (block.x == 0 || block.y == 0 || block.z == 0) bad("empty block");
  if (grid.x > kMaxGridDimX) bad("gridDim.x above 2^31 - 1");
  if (grid.y > kMaxGridDimYZ || grid.z > kMaxGridDimYZ) bad("gridDim.y or .z above 65535");
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (threads > kMaxThreadsPerBlock || block.x > kMaxThreadsPerBlock ||
      block.y > kMaxThreadsPerBlock)
    bad("more than 1024 threads per block (" + std::to_string(threads) + ")");
  if (block.z > kMaxBlockDimZ) bad("blockDim.z above 64");
  size_t limit = kDefaultDynamicShared;
  auto it = max_dynamic_shared().find(kernel);
  if (it != max_dynamic_shared().end()) limit = it->second;
  if (shared > limit)
    bad(std::to_string(shared) + " bytes of dynamic shared memory, above the kernel's limit of " +
        std::to_string(limit) +
        (limit == kDefaultDynamicShared
             ? " (48 KiB without cudaFuncSetAttribute(..., "
               "cudaFuncAttributeMaxDynamicSharedMemorySize, bytes))"
             : ""));
}

// In the counting build, the thread's start (reading the closure and copying the launch's
// parameters, which the GPU passes in a constant bank) is not counted, and the kernel's
// own code is never inlined into it.
#if defined(FASTWARP_EMU_COUNT)
#define FASTWARP_EMU_UNCOUNTED __attribute__((no_sanitize("coverage"), noinline))
#define FASTWARP_EMU_COUNTED_CALL __attribute__((noinline))
#else
#define FASTWARP_EMU_UNCOUNTED
#define FASTWARP_EMU_COUNTED_CALL inline
#endif

template <typename Kernel, typename Tuple>
FASTWARP_EMU_COUNTED_CALL void call_kernel(Kernel kernel, Tuple& params) {
  std::apply(kernel, params);
}

// The emulated kernel<<<grid, block, shared, stream>>>(args...). The arguments are
// converted to the kernel's parameter types once, as a launch copies them, and every
// thread calls the kernel with its own copy.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared, Args&&... args) {
  std::lock_guard<std::mutex> serial(launch_mutex());
  check_configuration(reinterpret_cast<const void*>(kernel), grid, block, shared);
  using Tuple = std::tuple<std::decay_t<Params>...>;
  Tuple params(std::forward<Args>(args)...);
  Launch run(grid, block, shared, [&params, kernel]() FASTWARP_EMU_UNCOUNTED {
    Tuple copy = params;
    call_kernel(kernel, copy);
  });
#if defined(FASTWARP_EMU_COUNT)
  if (count::counter().enabled())
    count::counter().begin_launch(reinterpret_cast<const void*>(kernel), grid, block, shared,
                                  static_cast<uint64_t>(grid.x) * grid.y * grid.z);
#endif
  run.run(fiber_pool(run.threads()));
  if (run.aborted()) throw std::runtime_error("CUDA emulation: " + run.error());
}

FASTWARP_EMU_INTERNAL inline uint3 thread_idx() { return current_fiber().thread_idx; }
FASTWARP_EMU_INTERNAL inline uint3 block_idx() { return current().block_idx(); }
FASTWARP_EMU_INTERNAL inline dim3 block_dim() { return current().block_dim(); }
FASTWARP_EMU_INTERNAL inline dim3 grid_dim() { return current().grid_dim(); }
FASTWARP_EMU_INTERNAL inline unsigned int lane_id() { return current_fiber().linear % warpSize; }

template <typename T>
FASTWARP_EMU_INTERNAL T* dynamic_shared_memory() {
  return reinterpret_cast<T*>(current().dynamic_shared());
}

// `words`: the 32-bit shuffles the exchange is on the GPU (a double's is two), counted
// once per warp (by the lowest lane of the mask) in the counting build; 0 for the
// emulation's own exchanges (a ballot is one instruction, not 32 shuffles).
FASTWARP_EMU_INTERNAL inline uint64_t warp_exchange_bits(uint32_t mask, uint64_t bits,
                                                         int src_lane, unsigned int words) {
  Fiber& f = current_fiber();
  Launch& l = *f.launch;
  WarpGroup& w = l.warp(f.linear);
  const int lane = static_cast<int>(f.linear % warpSize);
#if defined(FASTWARP_EMU_COUNT)
  if (words != 0 && mask != 0 && count::counter().enabled() && lane == __builtin_ctz(mask))
    count::counter().shuffle(words);
#else
  (void)words;
#endif
  w.slots()[lane] = bits;
  w.sync(mask);
  uint64_t out = bits;
  if (src_lane != lane) {
    if (!(mask & (1u << src_lane)))
      l.fail("a shuffle read a lane that is not in its mask (undefined on the GPU)");
    out = w.slots()[src_lane];
  }
  w.sync(mask);  // nobody overwrites a slot before all have read
  return out;
}

template <typename T>
T warp_exchange(uint32_t mask, T value, int src_lane, bool counted = true) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable<T>::value,
                "CUDA emulation: shuffles of types up to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = warp_exchange_bits(mask, bits, src_lane, counted ? static_cast<unsigned int>((sizeof(T) + 3) / 4) : 0u);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace emu
}  // namespace fastwarp

#define threadIdx (::fastwarp::emu::thread_idx())
#define blockIdx (::fastwarp::emu::block_idx())
#define blockDim (::fastwarp::emu::block_dim())
#define gridDim (::fastwarp::emu::grid_dim())

// Dynamic shared memory: `FASTWARP_DYNAMIC_SHARED(float, tile);` declares `float* tile`.
#define FASTWARP_DYNAMIC_SHARED(T, name) T* name = ::fastwarp::emu::dynamic_shared_memory<T>()

// ------------------------------------------------------------------ runtime API subset

inline int cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attribute, int value) {
  using namespace fastwarp::emu;
  if (attribute == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || static_cast<size_t>(value) > kMaxDynamicSharedOptin)
      throw std::runtime_error(
          "CUDA emulation: cudaFuncAttributeMaxDynamicSharedMemorySize above 227 KiB");
    std::lock_guard<std::mutex> lock(launch_mutex());
    max_dynamic_shared()[kernel] = static_cast<size_t>(value);
  }
  return 0;
}

template <typename... Params>
int cudaFuncSetAttribute(void (*kernel)(Params...), cudaFuncAttribute attribute, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attribute, value);
}

// ------------------------------------------------------------------ block and warp sync

FASTWARP_EMU_INTERNAL inline void __syncthreads() {
  fastwarp::emu::current().syncthreads_barrier().arrive();
}

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

[[noreturn]] inline void __trap() { fastwarp::emu::device_error("__trap() called"); }

// __syncthreads_count and friends: the k-th call of a block counts into counter k % 3,
// which thread 0 cleared during call k - 1 (after every thread had read call k - 2's
// result, since they all passed barrier k - 1 before thread 0 could get there).
FASTWARP_EMU_INTERNAL inline int fastwarp_emu_block_count(bool predicate) {
  auto& f = fastwarp::emu::current_fiber();
  auto& l = *f.launch;
  std::atomic<int>* counters = l.block_counters();
  const int k = f.sync_phase;
  f.sync_phase = (k + 1) % 3;
  if (f.linear == 0) counters[(k + 1) % 3].store(0, std::memory_order_relaxed);
  if (predicate) counters[k].fetch_add(1, std::memory_order_relaxed);
  l.syncthreads_barrier().arrive();
  return counters[k].load(std::memory_order_relaxed);
}
inline int __syncthreads_count(int predicate) { return fastwarp_emu_block_count(predicate != 0); }
inline int __syncthreads_and(int predicate) {
  return fastwarp_emu_block_count(predicate == 0) == 0;
}
inline int __syncthreads_or(int predicate) { return fastwarp_emu_block_count(predicate != 0) > 0; }

FASTWARP_EMU_INTERNAL inline void __syncwarp(unsigned int mask = 0xffffffffu) {
  auto& f = fastwarp::emu::current_fiber();
  f.launch->warp(f.linear).sync(mask);
}

template <typename T>
T __shfl_sync(unsigned int mask, T var, int src_lane, int width = warpSize) {
  const int lane = static_cast<int>(fastwarp::emu::lane_id());
  const int src = (lane & ~(width - 1)) + (src_lane & (width - 1));
  return fastwarp::emu::warp_exchange(mask, var, src);
}

template <typename T>
T __shfl_up_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize) {
  const int lane = static_cast<int>(fastwarp::emu::lane_id());
  const int in_segment = lane & (width - 1);
  const int src = in_segment >= static_cast<int>(delta) ? lane - static_cast<int>(delta) : lane;
  return fastwarp::emu::warp_exchange(mask, var, src);
}

template <typename T>
T __shfl_down_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize) {
  const int lane = static_cast<int>(fastwarp::emu::lane_id());
  const int in_segment = lane & (width - 1);
  const int src =
      in_segment + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane;
  return fastwarp::emu::warp_exchange(mask, var, src);
}

template <typename T>
T __shfl_xor_sync(unsigned int mask, T var, int lane_mask, int width = warpSize) {
  const int lane = static_cast<int>(fastwarp::emu::lane_id());
  const int src = lane ^ lane_mask;
  // a later segment cannot be read: the thread keeps its own value
  const bool later = (src & ~(width - 1)) > (lane & ~(width - 1));
  return fastwarp::emu::warp_exchange(mask, var, later ? lane : src);
}

inline unsigned int __ballot_sync(unsigned int mask, int predicate) {
  // each lane publishes its bit, then reads every lane of the mask
  unsigned int ballot = 0;
  for (int src = 0; src < warpSize; ++src) {
    if (!(mask & (1u << src))) continue;
    if (fastwarp::emu::warp_exchange(mask, predicate != 0 ? 1 : 0, src, false)) ballot |= 1u << src;
  }
  return ballot;
}

inline int __any_sync(unsigned int mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned int mask, int predicate) {
  return __ballot_sync(mask, predicate) == mask;
}

// Every lane of the warp that has not returned (the emulation has no divergence to track).
FASTWARP_EMU_INTERNAL inline unsigned int __activemask() {
  auto& f = fastwarp::emu::current_fiber();
  return f.launch->warp(f.linear).live();
}

// ------------------------------------------------------------------ atomics

// In the counting build each atomic is one counted access of its caller's instruction
// (the RMW itself is not a load or store the trace callbacks see).
#if defined(FASTWARP_EMU_COUNT)
#define FASTWARP_EMU_ATOMIC inline __attribute__((no_sanitize("coverage"), noinline))
#define FASTWARP_EMU_COUNT_ATOMIC(a)                                                              \
  ::fastwarp::emu::count::access(reinterpret_cast<uintptr_t>(__builtin_return_address(0)), (a), \
                                 sizeof(*(a)), true, true)
#else
#define FASTWARP_EMU_ATOMIC inline
#define FASTWARP_EMU_COUNT_ATOMIC(a) ((void)0)
#endif

template <typename T>
T fastwarp_emu_atomic_minmax(T* address, T value, bool is_min) {
  std::atomic_ref<T> a(*address);
  T old = a.load(std::memory_order_relaxed);
  for (;;) {
    const T next = is_min ? std::min(old, value) : std::max(old, value);
    if (a.compare_exchange_weak(old, next, std::memory_order_relaxed)) return old;
  }
}

#define FASTWARP_EMU_ATOMICS(T)                                                  \
  FASTWARP_EMU_ATOMIC T atomicAdd(T* a, T v) {                                   \
    FASTWARP_EMU_COUNT_ATOMIC(a);                                                \
    return std::atomic_ref<T>(*a).fetch_add(v, std::memory_order_relaxed);       \
  }                                                                              \
  FASTWARP_EMU_ATOMIC T atomicExch(T* a, T v) {                                  \
    FASTWARP_EMU_COUNT_ATOMIC(a);                                                \
    return std::atomic_ref<T>(*a).exchange(v, std::memory_order_relaxed);        \
  }

FASTWARP_EMU_ATOMICS(int)
FASTWARP_EMU_ATOMICS(unsigned int)
FASTWARP_EMU_ATOMICS(unsigned long long)
FASTWARP_EMU_ATOMICS(float)
FASTWARP_EMU_ATOMICS(double)
#undef FASTWARP_EMU_ATOMICS

#define FASTWARP_EMU_INTEGER_ATOMICS(T)                                                \
  FASTWARP_EMU_ATOMIC T atomicSub(T* a, T v) {                                         \
    FASTWARP_EMU_COUNT_ATOMIC(a);                                                      \
    return std::atomic_ref<T>(*a).fetch_sub(v, std::memory_order_relaxed);             \
  }                                                                                    \
  FASTWARP_EMU_ATOMIC T atomicMin(T* a, T v) {                                         \
    FASTWARP_EMU_COUNT_ATOMIC(a);                                                      \
    return fastwarp_emu_atomic_minmax(a, v, true);                                     \
  }                                                                                    \
  FASTWARP_EMU_ATOMIC T atomicMax(T* a, T v) {                                         \
    FASTWARP_EMU_COUNT_ATOMIC(a);                                                      \
    return fastwarp_emu_atomic_minmax(a, v, false);                                    \
  }                                                                                    \
  FASTWARP_EMU_ATOMIC T atomicAnd(T* a, T v) {                                         \
    FASTWARP_EMU_COUNT_ATOMIC(a);                                                      \
    return std::atomic_ref<T>(*a).fetch_and(v, std::memory_order_relaxed);             \
  }                                                                                    \
  FASTWARP_EMU_ATOMIC T atomicOr(T* a, T v) {                                          \
    FASTWARP_EMU_COUNT_ATOMIC(a);                                                      \
    return std::atomic_ref<T>(*a).fetch_or(v, std::memory_order_relaxed);              \
  }                                                                                    \
  FASTWARP_EMU_ATOMIC T atomicXor(T* a, T v) {                                         \
    FASTWARP_EMU_COUNT_ATOMIC(a);                                                      \
    return std::atomic_ref<T>(*a).fetch_xor(v, std::memory_order_relaxed);             \
  }                                                                                    \
  FASTWARP_EMU_ATOMIC T atomicCAS(T* a, T compare, T v) {                              \
    FASTWARP_EMU_COUNT_ATOMIC(a);                                                      \
    std::atomic_ref<T>(*a).compare_exchange_strong(compare, v, std::memory_order_relaxed); \
    return compare; /* the old value either way */                                     \
  }

FASTWARP_EMU_INTEGER_ATOMICS(int)
FASTWARP_EMU_INTEGER_ATOMICS(unsigned int)
FASTWARP_EMU_INTEGER_ATOMICS(unsigned long long)
#undef FASTWARP_EMU_INTEGER_ATOMICS

FASTWARP_EMU_ATOMIC long long atomicMin(long long* a, long long v) {
  FASTWARP_EMU_COUNT_ATOMIC(a);
  return fastwarp_emu_atomic_minmax(a, v, true);
}
FASTWARP_EMU_ATOMIC long long atomicMax(long long* a, long long v) {
  FASTWARP_EMU_COUNT_ATOMIC(a);
  return fastwarp_emu_atomic_minmax(a, v, false);
}

// ------------------------------------------------------------------ loads and math

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline double __drcp_rn(double a) { return 1.0 / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
inline double rsqrt(double a) { return 1.0 / std::sqrt(a); }
inline float __saturatef(float a) { return a < 0.f ? 0.f : (a > 1.f ? 1.f : a); }
inline int __float2int_rd(float a) { return static_cast<int>(std::floor(a)); }
inline int __float2int_rn(float a) { return static_cast<int>(std::nearbyint(a)); }
inline int __double2int_rd(double a) { return static_cast<int>(std::floor(a)); }
inline int __popc(unsigned int v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(static_cast<unsigned int>(v)); }
