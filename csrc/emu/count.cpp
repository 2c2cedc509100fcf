// The counting build's half outside the kernels (FASTWARP_EMU_COUNT; Note [Counting the
// emulated launch] in count.h): the callbacks clang's -fsanitize-coverage=trace-loads,
// trace-stores calls before every load and store, and the ops that start and end a count,
// fastwarp_emu_count::begin(stride, run) and ::end() -> JSON. An empty file in the other builds.
#if defined(FASTWARP_EMU_COUNT)
#include <torch/library.h>

#include <cstdint>
#include <sstream>
#include <string>

#include "../cuda/runtime.h"

namespace {

namespace count = fastwarp::emu::count;

#define FASTWARP_COUNT_CALLBACK(N, T, STORE)                                                  \
  extern "C" __attribute__((no_sanitize("coverage"))) void __sanitizer_cov_##N(T* addr) {    \
    count::access(reinterpret_cast<uintptr_t>(__builtin_return_address(0)), addr, sizeof(T), \
                  STORE, false);                                                             \
  }

}  // namespace

FASTWARP_COUNT_CALLBACK(load1, uint8_t, false)
FASTWARP_COUNT_CALLBACK(load2, uint16_t, false)
FASTWARP_COUNT_CALLBACK(load4, uint32_t, false)
FASTWARP_COUNT_CALLBACK(load8, uint64_t, false)
FASTWARP_COUNT_CALLBACK(load16, __int128, false)
FASTWARP_COUNT_CALLBACK(store1, uint8_t, true)
FASTWARP_COUNT_CALLBACK(store2, uint16_t, true)
FASTWARP_COUNT_CALLBACK(store4, uint32_t, true)
FASTWARP_COUNT_CALLBACK(store8, uint64_t, true)
FASTWARP_COUNT_CALLBACK(store16, __int128, true)

// inline-8bit-counters, the coverage kind the trace callbacks need beside them: unused.
extern "C" __attribute__((no_sanitize("coverage"))) void __sanitizer_cov_8bit_counters_init(char*, char*) {}

namespace {

void begin(int64_t block_stride, int64_t block_run) {
  TORCH_CHECK(block_stride >= 1 && block_run >= 1,
              "fastwarp_emu_count::begin: block_stride and block_run must be at least 1, got ", block_stride,
              " and ", block_run);
  count::BusyScope scope;
  count::counter().begin(static_cast<uint64_t>(block_stride), static_cast<uint64_t>(block_run));
}

std::string end() {
  count::BusyScope scope;
  std::ostringstream out;
  out << "[";
  bool first = true;
  for (const count::LaunchCounts& c : count::counter().end()) {
    out << (first ? "" : ",") << "{\"module\":\"" << c.module << "\",\"kernel_offset\":" << c.kernel_offset
        << ",\"grid\":[" << c.grid[0] << "," << c.grid[1] << "," << c.grid[2] << "],\"block\":["
        << c.block[0] << "," << c.block[1] << "," << c.block[2] << "]";
#define FIELD(name) out << ",\"" #name "\":" << c.name
    FIELD(shared_bytes); FIELD(blocks); FIELD(blocks_run); FIELD(threads_run); FIELD(barriers);
    FIELD(global_load_requests); FIELD(global_load_sectors); FIELD(global_load_bytes);
    FIELD(global_store_requests); FIELD(global_store_sectors); FIELD(global_store_bytes);
    FIELD(global_atomic_requests); FIELD(global_atomic_ops); FIELD(global_atomic_sectors);
    FIELD(shared_load_requests); FIELD(shared_load_wavefronts);
    FIELD(shared_store_requests); FIELD(shared_store_wavefronts);
    FIELD(shared_atomic_requests); FIELD(shared_atomic_ops); FIELD(shuffles);
    FIELD(dram_read_sectors); FIELD(dram_write_sectors);
#undef FIELD
    for (size_t k = 0; k < 5; ++k)
      out << ",\"l1_miss_sectors_" << count::kL1Bytes[k] / 1024 << "k\":" << c.l1_miss_sectors[k];
    out << "}";
    first = false;
  }
  out << "]";
  return out.str();
}

}  // namespace

TORCH_LIBRARY(fastwarp_emu_count, m) {
  m.def("begin(int block_stride, int block_run) -> ()", &begin);
  m.def("end() -> str", &end);
}
#endif
