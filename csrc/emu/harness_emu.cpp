// csrc/emu/harness_kernels.cu (test-only kernels: the emulator's primitives and planted
// bugs) compiled by the host compiler over the emulated CUDA launch, as fastwarp_harness::.
#include "harness_kernels.cu"
