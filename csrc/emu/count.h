// The counting build of the emulated launch (FASTWARP_EMU_COUNT, module fastwarp._C_emu_count):
// the same kernels, compiled by clang with every load and store instrumented, and what a GPU
// would see of their memory traffic counted per launch. Included by cuda_emu.h.
//
// Note [Counting the emulated launch]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// clang's -fsanitize-coverage=inline-8bit-counters,trace-loads,trace-stores calls
// __sanitizer_cov_load<N>(addr) / __sanitizer_cov_store<N>(addr) before every load and
// store of the instrumented code (csrc/emu/count.cpp defines them); -fno-vectorize and
// -fno-slp-vectorize keep each CUDA thread's access a scalar access, as the kernel wrote it.
// No kernel source changes. What the callbacks do:
//   * Classify the address. The running fiber's stack is the thread's registers and local
//     memory: not counted (ptxas's report says which locals spill). The launch's dynamic
//     shared buffer and the module's static data (a kernel's __shared__ variables are
//     function-local statics) are shared memory. Everything else is global memory: the
//     tensors. Code outside a kernel (no running fiber) is not counted, and neither is the
//     emulator's own bookkeeping: FASTWARP_EMU_INTERNAL functions are not instrumented and
//     never inlined into a kernel.
//   * Log (instruction, address, size, kind) per CUDA thread, the instruction being the
//     callback's return address. Atomics are logged by the emulated atomic functions.
//   * When a block's threads meet at __syncthreads, and when the block ends, group each
//     warp's logs into requests as the SIMT hardware issues them: the k-th execution of an
//     instruction by each lane of the warp is one request (lanes that diverge and run a
//     loop a different number of times pair up by iteration, as after reconvergence).
//   * Global requests: the distinct 32-byte sectors their lanes touch (coalescing), and
//     the launch's distinct sectors read and written (DRAM traffic at first touch: what an
//     H100 moves when the working set is far above its 50 MB L2, and a lower bound where
//     neighbouring blocks re-read a halo that has left the L2). Atomics count both.
//   * Shared requests: wavefronts, as the 32 banks of 4-byte words serve them: lanes
//     reading the same word are one broadcast; distinct words in one bank serialize, so the
//     request takes as many wavefronts as the most-loaded bank has distinct words (an
//     8-byte access spans two banks, so a warp of doubles takes at least 2).
//   * Shuffles: warp-wide 32-bit shuffle instructions (a double's is two), which Hopper
//     issues through the same pipe as shared-memory requests.
//   * Barriers (__syncthreads completions), blocks, threads.
// Sampling: with a block stride s > 1 only every s-th run of r consecutive blocks runs
// (the others do nothing at all, so outputs are garbage); the counts are of the blocks run,
// and blocks_run says how many, for the caller to scale. Halos shared across the edge of
// a run count twice in the DRAM figure: runs should span several planes of the volume.
// The L1: each block's global loads also run through simulated L1 caches of 8, 16, 32, 64
// and 128 KiB (the model picks the one that matches the block's share of the SM's L1; Note [GPU
// cost model]), and the sectors that miss are what the L2 serves. The caches: 128-byte lines
// of four 32-byte sectors filled on demand, 8 ways, an xor-folded set index (the hardware's
// hash is not public; a plain modulo would alias planes a power of two apart), least recently
// used replacement. Loads allocate; stores write through and do not allocate; atomics bypass the
// L1 (as on sm_90). Each block starts cold (blocks that share an SM share its L1 in
// hardware: the hits between them are missed here). Requests run through it in their
// warp's program order (the latest lane's), warp after warp between two barriers: the
// interleaving of warps on the SM is not modeled.
// What it does not model: the L2 (a re-read of a sector within a launch counts once in the
// DRAM figure), instruction issue, latency, register pressure (see the occupancy report of
// fastwarp/app/bench/kernel_resources.py), and the order in which warps run.
#pragma once

#include <dlfcn.h>
#include <link.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <string>
#include <unordered_map>
#include <vector>

namespace fastwarp {
namespace emu {
namespace count {

enum class Kind : uint8_t { GlobalLoad, GlobalStore, GlobalAtomic, SharedLoad, SharedStore, SharedAtomic };

struct Access {
  uintptr_t pc;
  uintptr_t addr;
  uint32_t size;
  Kind kind;
};

// The launch's counts. Field names are the JSON keys (see Counter::json).
struct LaunchCounts {
  uintptr_t kernel_offset = 0;  // the kernel's address in its module (for its symbol name)
  std::string module;
  unsigned int grid[3] = {1, 1, 1}, block[3] = {1, 1, 1};
  uint64_t shared_bytes = 0, blocks = 0, blocks_run = 0, threads_run = 0, barriers = 0;
  uint64_t global_load_requests = 0, global_load_sectors = 0, global_load_bytes = 0;
  uint64_t global_store_requests = 0, global_store_sectors = 0, global_store_bytes = 0;
  uint64_t global_atomic_requests = 0, global_atomic_ops = 0, global_atomic_sectors = 0;
  uint64_t shared_load_requests = 0, shared_load_wavefronts = 0;
  uint64_t shared_store_requests = 0, shared_store_wavefronts = 0;
  uint64_t shared_atomic_requests = 0, shared_atomic_ops = 0;
  uint64_t shuffles = 0;  // warp-wide 32-bit shuffle instructions
  uint64_t dram_read_sectors = 0, dram_write_sectors = 0;
  uint64_t l1_miss_sectors[5] = {};  // global load sectors that miss the L1 of each size in kL1Bytes
};

// The simulated L1 sizes (bytes per block); JSON keys l1_miss_sectors_8k ... _128k.
inline constexpr uint64_t kL1Bytes[5] = {8 * 1024, 16 * 1024, 32 * 1024, 64 * 1024, 128 * 1024};

// One block's L1 (Note [Counting the emulated launch]).
class L1Cache {
 public:
  static constexpr int kWays = 8;
  static constexpr uint64_t kLineBytes = 128;

  FASTWARP_EMU_INTERNAL void reset(uint64_t bytes) {
    sets_ = bytes / (kLineBytes * kWays);  // a power of two
    bits_ = __builtin_ctzll(sets_);
    lines_.assign(sets_ * kWays, Line{});
    clock_ = 0;
  }

  // Looks `sector` (an address / 32) up, fills it on a miss; true on a hit.
  FASTWARP_EMU_INTERNAL bool load(uintptr_t sector) {
    const uint64_t line_index = sector >> 2, tag = line_index + 1;  // tag 0: an empty way
    const uint8_t bit = static_cast<uint8_t>(1u << (sector & 3));
    // the set: the xor of all the line index's bits_-wide digits, so that lines a power of
    // two apart spread, and an aligned run of sets_ lines still fills each set once
    uint64_t index = 0;
    for (uint64_t digits = line_index; digits != 0; digits >>= bits_) index ^= digits;
    Line* set = &lines_[(index & (sets_ - 1)) * kWays];
    ++clock_;
    Line* victim = set;
    for (int w = 0; w < kWays; ++w) {
      Line& line = set[w];
      if (line.tag == tag) {
        line.used = clock_;
        if (line.sectors & bit) return true;
        line.sectors |= bit;
        return false;
      }
      if (line.used < victim->used) victim = &line;  // empty ways have used == 0
    }
    *victim = Line{tag, clock_, bit};
    return false;
  }

 private:
  struct Line {
    uint64_t tag = 0, used = 0;
    uint8_t sectors = 0;
  };
  uint64_t sets_ = 1, bits_ = 0, clock_ = 0;
  std::vector<Line> lines_;
};

// Distinct 32-byte sectors, as a bitmap per 4 KiB page.
class SectorSet {
 public:
  FASTWARP_EMU_INTERNAL void add(uintptr_t sector) {
    auto& bits = pages_[sector >> 7];
    const uint64_t bit = uint64_t{1} << (sector & 63);
    uint64_t& word = bits[(sector >> 6) & 1];
    if (!(word & bit)) {
      word |= bit;
      ++size_;
    }
  }
  uint64_t size() const { return size_; }
  FASTWARP_EMU_INTERNAL void clear() {
    pages_.clear();
    size_ = 0;
  }

 private:
  std::unordered_map<uintptr_t, std::array<uint64_t, 2>> pages_;
  uint64_t size_ = 0;
};

class Counter {
 public:
  bool enabled() const { return enabled_; }
  uint64_t block_stride() const { return stride_; }

  FASTWARP_EMU_INTERNAL void begin(uint64_t stride, uint64_t run) {
    enabled_ = true;
    stride_ = stride < 1 ? 1 : stride;
    run_ = run < 1 ? 1 : run;
    launches_.clear();
  }

  FASTWARP_EMU_INTERNAL std::vector<LaunchCounts> end() {
    enabled_ = false;
    return std::move(launches_);
  }

  FASTWARP_EMU_INTERNAL void begin_launch(const void* kernel, dim3 grid, dim3 block,
                                          size_t shared_bytes, uint64_t blocks) {
    LaunchCounts c;
    Dl_info info{};
    if (dladdr(kernel, &info) != 0 && info.dli_fname != nullptr) {
      c.module = info.dli_fname;
      c.kernel_offset = reinterpret_cast<uintptr_t>(kernel) - reinterpret_cast<uintptr_t>(info.dli_fbase);
    }
    c.grid[0] = grid.x, c.grid[1] = grid.y, c.grid[2] = grid.z;
    c.block[0] = block.x, c.block[1] = block.y, c.block[2] = block.z;
    c.shared_bytes = shared_bytes;
    c.blocks = blocks;
    launches_.push_back(std::move(c));
    reads_.clear();
    writes_.clear();
    const unsigned int threads = block.x * block.y * block.z;
    if (logs_.size() < threads) logs_.resize(threads);
    for (auto& log : logs_) log.clear();
  }

  // Sampling runs blocks in runs of `run` consecutive ones (neighbours share halos and
  // corners, which the DRAM figure should see once), every stride-th run.
  FASTWARP_EMU_INTERNAL bool run_block(uint64_t b) const { return (b / run_) % stride_ == 0; }

  FASTWARP_EMU_INTERNAL void begin_block(unsigned int threads, const unsigned char* shared,
                                         size_t shared_bytes) {
    LaunchCounts& c = launches_.back();
    ++c.blocks_run;
    c.threads_run += threads;
    threads_ = threads;
    shared_begin_ = reinterpret_cast<uintptr_t>(shared);
    shared_end_ = shared_begin_ + shared_bytes;
    for (size_t k = 0; k < l1_.size(); ++k) l1_[k].reset(kL1Bytes[k]);
  }

  // All the block's threads are at a barrier (`barrier`) or done (the block's end).
  FASTWARP_EMU_INTERNAL void flush(bool barrier) {
    LaunchCounts& c = launches_.back();
    if (barrier) ++c.barriers;
    for (unsigned int w = 0; w * 32 < threads_; ++w) flush_warp(c, w * 32, std::min(threads_, w * 32 + 32));
    c.dram_read_sectors = reads_.size();
    c.dram_write_sectors = writes_.size();
  }

  // A warp's shuffle of `words` 32-bit words (counted by one lane of the warp).
  FASTWARP_EMU_INTERNAL void shuffle(unsigned int words) { launches_.back().shuffles += words; }

  // A load or store of the running CUDA thread (the trace callbacks, and the atomics).
  FASTWARP_EMU_INTERNAL void record(const Fiber& f, uintptr_t pc, const void* p, uint32_t size, bool store,
                                    bool atomic) {
    const auto addr = reinterpret_cast<uintptr_t>(p);
    const auto stack = reinterpret_cast<uintptr_t>(f.ctx.stack_bottom);
    if (addr >= stack && addr < stack + f.ctx.stack_size) return;  // registers, local memory
    const bool shared = (addr >= shared_begin_ && addr < shared_end_) || is_static(addr);
    Kind kind;
    if (atomic) {
      kind = shared ? Kind::SharedAtomic : Kind::GlobalAtomic;
    } else if (shared) {
      kind = store ? Kind::SharedStore : Kind::SharedLoad;
    } else {
      kind = store ? Kind::GlobalStore : Kind::GlobalLoad;
    }
    logs_[f.linear].push_back(Access{pc, addr, size, kind});
  }

  const std::vector<LaunchCounts>& launches() const { return launches_; }

 private:
  // The module's writable data: where a kernel's static __shared__ variables live.
  FASTWARP_EMU_INTERNAL bool is_static(uintptr_t addr) {
    if (static_end_ == 0) find_static_range();
    return addr >= static_begin_ && addr < static_end_;
  }

  FASTWARP_EMU_INTERNAL void find_static_range() {
    struct Search {
      uintptr_t probe, begin = 0, end = 0;
    } search{reinterpret_cast<uintptr_t>(&static_probe())};
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* data) -> int {
          auto* s = static_cast<Search*>(data);
          for (int i = 0; i < info->dlpi_phnum; ++i) {
            const ElfW(Phdr)& ph = info->dlpi_phdr[i];
            if (ph.p_type != PT_LOAD || !(ph.p_flags & PF_W)) continue;
            const uintptr_t lo = info->dlpi_addr + ph.p_vaddr, hi = lo + ph.p_memsz;
            if (s->probe >= lo && s->probe < hi) {
              s->begin = lo;
              s->end = hi;
              return 1;
            }
          }
          return 0;
        },
        &search);
    if (search.end == 0) throw std::runtime_error("CUDA emulation: counting cannot find the module's data");
    static_begin_ = search.begin;
    static_end_ = search.end;
  }

  static int& static_probe() {
    static int probe = 0;
    return probe;
  }

  struct Keyed {
    uintptr_t pc;
    uint32_t occurrence;
    Kind kind;
    unsigned int lane;
    uint32_t seq;  // the access's place in its lane's log
    uintptr_t addr;
    uint32_t size;
  };

  struct Request {
    uint32_t seq;  // the latest lane's place in its log: the warp's program order (after
                   // lanes that ran a branch or loop longer reconverge)
    size_t begin, end;
  };

  FASTWARP_EMU_INTERNAL void flush_warp(LaunchCounts& c, unsigned int first, unsigned int last) {
    keyed_.clear();
    for (unsigned int t = first; t < last; ++t) {
      occurrences_.clear();
      uint32_t seq = 0;
      for (const Access& a : logs_[t]) {
        const uint32_t k = occurrences_[a.pc ^ (static_cast<uintptr_t>(a.kind) << 60)]++;
        keyed_.push_back(Keyed{a.pc, k, a.kind, t - first, seq++, a.addr, a.size});
      }
      logs_[t].clear();
    }
    std::sort(keyed_.begin(), keyed_.end(), [](const Keyed& x, const Keyed& y) {
      return std::tie(x.pc, x.occurrence, x.kind, x.lane) < std::tie(y.pc, y.occurrence, y.kind, y.lane);
    });
    requests_.clear();
    for (size_t i = 0; i < keyed_.size();) {
      size_t j = i + 1;
      uint32_t seq = keyed_[i].seq;
      while (j < keyed_.size() && keyed_[j].pc == keyed_[i].pc && keyed_[j].occurrence == keyed_[i].occurrence &&
             keyed_[j].kind == keyed_[i].kind)
        seq = std::max(seq, keyed_[j++].seq);
      requests_.push_back(Request{seq, i, j});
      i = j;
    }
    // program order, for the L1 (the other counts do not depend on it)
    std::stable_sort(requests_.begin(), requests_.end(),
                     [](const Request& x, const Request& y) { return x.seq < y.seq; });
    for (const Request& r : requests_) request(c, r.begin, r.end);
  }

  // One warp-wide request: keyed_[i, j).
  FASTWARP_EMU_INTERNAL void request(LaunchCounts& c, size_t i, size_t j) {
    const Kind kind = keyed_[i].kind;
    if (kind == Kind::SharedLoad || kind == Kind::SharedStore || kind == Kind::SharedAtomic) {
      words_.clear();
      for (size_t k = i; k < j; ++k)
        for (uintptr_t w = keyed_[k].addr >> 2; w <= (keyed_[k].addr + keyed_[k].size - 1) >> 2; ++w)
          words_.push_back(w);
      std::sort(words_.begin(), words_.end());
      words_.erase(std::unique(words_.begin(), words_.end()), words_.end());
      uint32_t per_bank[32] = {};
      uint32_t wavefronts = 0;
      for (uintptr_t w : words_) wavefronts = std::max(wavefronts, ++per_bank[w & 31]);
      if (kind == Kind::SharedLoad) {
        ++c.shared_load_requests;
        c.shared_load_wavefronts += wavefronts;
      } else if (kind == Kind::SharedStore) {
        ++c.shared_store_requests;
        c.shared_store_wavefronts += wavefronts;
      } else {
        ++c.shared_atomic_requests;
        c.shared_atomic_ops += j - i;
      }
      return;
    }
    sectors_.clear();
    uint64_t bytes = 0;
    for (size_t k = i; k < j; ++k) {
      bytes += keyed_[k].size;
      for (uintptr_t s = keyed_[k].addr >> 5; s <= (keyed_[k].addr + keyed_[k].size - 1) >> 5; ++s)
        sectors_.push_back(s);
    }
    std::sort(sectors_.begin(), sectors_.end());
    sectors_.erase(std::unique(sectors_.begin(), sectors_.end()), sectors_.end());
    for (uintptr_t s : sectors_) {
      if (kind != Kind::GlobalStore) reads_.add(s);
      if (kind != Kind::GlobalLoad) writes_.add(s);
    }
    if (kind == Kind::GlobalLoad) {
      for (size_t k = 0; k < l1_.size(); ++k)
        for (uintptr_t s : sectors_) c.l1_miss_sectors[k] += !l1_[k].load(s);
      ++c.global_load_requests;
      c.global_load_sectors += sectors_.size();
      c.global_load_bytes += bytes;
    } else if (kind == Kind::GlobalStore) {
      ++c.global_store_requests;
      c.global_store_sectors += sectors_.size();
      c.global_store_bytes += bytes;
    } else {
      ++c.global_atomic_requests;
      c.global_atomic_ops += j - i;
      c.global_atomic_sectors += sectors_.size();
    }
  }

  bool enabled_ = false;
  uint64_t stride_ = 1, run_ = 1;
  std::vector<LaunchCounts> launches_;
  std::vector<std::vector<Access>> logs_;  // per thread of the running block
  unsigned int threads_ = 0;
  uintptr_t shared_begin_ = 0, shared_end_ = 0, static_begin_ = 0, static_end_ = 0;
  SectorSet reads_, writes_;
  std::vector<Keyed> keyed_;
  std::vector<Request> requests_;
  std::array<L1Cache, 5> l1_;
  std::unordered_map<uintptr_t, uint32_t> occurrences_;
  std::vector<uintptr_t> words_, sectors_;
};

FASTWARP_EMU_INTERNAL inline Counter& counter() {
  static Counter c;
  return c;
}

// The running CUDA thread while a count is on (else null), and whether the counter itself is
// working (the library code it calls, std::sort and the containers, is instrumented too,
// and its accesses are not the kernel's). Plain globals, not thread-locals: the callbacks
// run before every load and store of the module, host code included, and a thread-local's
// lookup in a shared object costs a call; launches are serialized (launch_mutex).
inline Fiber* running = nullptr;
inline bool busy = false;

struct BusyScope {
  bool was;
  FASTWARP_EMU_INTERNAL BusyScope() : was(busy) { busy = true; }
  FASTWARP_EMU_INTERNAL ~BusyScope() { busy = was; }
};

// Called by the trace callbacks and the atomics: counts the access when a kernel runs.
__attribute__((no_sanitize("coverage"), always_inline)) inline void access(uintptr_t pc, const void* addr,
                                                                        uint32_t size, bool store, bool atomic) {
  if (running == nullptr || busy) return;
  BusyScope scope;
  counter().record(*running, pc, addr, size, store, atomic);
}

// The block's threads all wait at a barrier (or have returned).
FASTWARP_EMU_INTERNAL inline void barrier() {
  BusyScope scope;
  Counter& c = counter();
  if (c.enabled()) c.flush(true);
}

}  // namespace count
}  // namespace emu
}  // namespace fastwarp
