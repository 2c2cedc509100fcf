// Host-device portability layer: the headers in csrc/common/ are compiled by g++ for the
// CPU kernels (csrc/cpu/*.cpp), by nvcc for the GPU (csrc/cuda/*.cu), and by g++ again for
// the same CUDA files over the emulated launch (csrc/emu/, the cuda_emu tests), so the math
// is one copy and the GPU's kernels are tested on machines without one.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTWARP_HD __host__ __device__ __forceinline__
#else
#define FASTWARP_HD inline
#endif

// Placed before a host-device template that calls a functor which may be device-only
// (the CUDA atomic accumulator): nvcc then checks the call only where it is instantiated.
#if defined(__CUDACC__)
#define FASTWARP_EXEC_CHECK_DISABLE _Pragma("nv_exec_check_disable")
#else
#define FASTWARP_EXEC_CHECK_DISABLE
#endif

// Full unrolling of the small fixed loops over axes and corners, so their arrays live in
// registers. (`#pragma unroll` is nvcc's and clang's spelling; gcc ignores it.)
#if defined(__CUDACC__) || defined(__clang__)
#define FASTWARP_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define FASTWARP_UNROLL _Pragma("GCC unroll 16")
#else
#define FASTWARP_UNROLL
#endif

// A lambda that runs on the host (CPU loops) and on the device (CUDA kernels): the NCC
// op bodies are written once as such lambdas (nvcc needs --extended-lambda).
#if defined(__CUDACC__)
#define FASTWARP_LAMBDA __host__ __device__
#else
#define FASTWARP_LAMBDA
#endif
