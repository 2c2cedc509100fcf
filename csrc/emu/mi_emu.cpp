// csrc/cuda/mi_cuda.cu compiled by the host compiler over the emulated CUDA launch
// (csrc/emu/cuda_emu.h): the same kernels and launchers, registered as fastwarp_emu::.
#include "../cuda/mi_cuda.cu"
