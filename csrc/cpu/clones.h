// FASTWARP_CPU_CLONES: a CPU loop function compiled for baseline x86-64, AVX2 and AVX-512,
// the widest the CPU has chosen once by the loader.
#pragma once

// Note [CPU loop clones]
// ~~~~~~~~~~~~~~~~~~~~~~~
// The NCC's plane loops (ncc_cpu.cpp) and the MI's voxel loops (mi_cpu.cpp) vectorize as
// they are written. The extension is built for baseline x86-64 (two doubles per SSE2
// instruction); FASTWARP_CPU_CLONES compiles each loop function also for AVX2 and AVX-512,
// and the loader picks the widest one the CPU has (GCC/Clang function multiversioning: an
// ifunc resolved once). Only the function itself is cloned: what it calls and does not
// inline is the one ordinary copy, so nothing built for a wider target can reach a caller
// on a CPU without it. The clones compute the same values bit for bit: the operations are
// elementwise or summed in one fixed order (no reassociation) and the build has -ffp-contract=off (no fused
// multiply-add), so a lane does in its vector exactly what the scalar code does. Unlike the
// warp's lanes (Note [CPU SIMD level]), the choice does not follow ATEN_CPU_CAPABILITY: it
// is made by the loader, and no result depends on it.
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define FASTWARP_CPU_CLONES __attribute__((target_clones("default", "avx2", "avx512f"), flatten))
#else
#define FASTWARP_CPU_CLONES
#endif
