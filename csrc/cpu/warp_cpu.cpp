// CPU kernels of fastwarp::warp and fastwarp::grid_sample: how the points are looped
// (at::parallel_for over rows of the output) and how the image gradient is accumulated.
// The per-point math is csrc/common/sampling.h, shared with the CUDA kernels.
// GCC reports the unused source operand inside its own masked-gather intrinsics (in
// <immintrin.h>, which ATen includes first) as "may be used uninitialized" wherever the
// vector kernels inline them: a false positive, silenced for this file.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "../common/sample_op.h"
#include "sample_simd.h"

// The vector kernels, compiled once per instruction set (see sample_simd_kernels.h).
#if defined(FASTWARP_HAVE_X86_SIMD)
#pragma GCC push_options
#pragma GCC target("avx2")
#define FASTWARP_SIMD_NAMESPACE avx2
#include "sample_simd_kernels.h"
#undef FASTWARP_SIMD_NAMESPACE
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw")
#define FASTWARP_SIMD_NAMESPACE avx512
#include "sample_simd_kernels.h"
#undef FASTWARP_SIMD_NAMESPACE
#pragma GCC pop_options
#endif

namespace fastwarp {
namespace {

// Points per task: a 3-D trilinear point costs tens of nanoseconds, so this keeps the
// scheduling overhead of at::parallel_for well under 1%.
constexpr int64_t kPointsPerTask = 4096;

// Thread-private image-gradient buffers are capped at this many bytes in all (see
// Note [CPU image gradient]).
constexpr int64_t kMaxScratchBytes = int64_t(1) << 30;

// Rows are (coordinate batch, all output axes but the last); a row is a contiguous run of
// points along the last axis.
template <int NDIM>
int64_t num_rows(const SampleParams<NDIM>& P) {
  int64_t rows = P.coord_batch;
  for (int k = 0; k < NDIM - 1; ++k) rows *= P.out_size[k];
  return rows;
}

template <int NDIM>
int64_t rows_per_task(const SampleParams<NDIM>& P) {
  const int64_t per_row = P.out_size[NDIM - 1] * P.C * (P.coord_batch == 1 ? P.N : 1);
  return std::max<int64_t>(1, kPointsPerTask / std::max<int64_t>(1, per_row));
}

// Calls f(nd, pos) for every point of rows [r0, r1).
template <int NDIM, typename F>
void for_each_point(const SampleParams<NDIM>& P, int64_t r0, int64_t r1, const F& f) {
  int64_t pos[NDIM];
  for (int64_t r = r0; r < r1; ++r) {
    int64_t rest = r;
    for (int k = NDIM - 2; k >= 0; --k) {
      pos[k] = rest % P.out_size[k];
      rest /= P.out_size[k];
    }
    const int64_t nd = rest;
    for (int64_t w = 0; w < P.out_size[NDIM - 1]; ++w) {
      pos[NDIM - 1] = w;
      f(nd, pos);
    }
  }
}

// Calls f(Config) with a StaticConfig for linear interpolation of floating images (see
// Note [Sampling configurations]) and DynamicConfig otherwise.
template <typename scalar_t, int NDIM, typename F>
void dispatch_config(const SampleParams<NDIM>& P, const F& f) {
  if (P.affine != nullptr) {
    f(AffineConfig{});
    return;
  }
  if (std::is_integral<scalar_t>::value || P.interp != Interp::Linear || P.derivative) {
    f(DynamicConfig{});
    return;
  }
  auto with_padding = [&](auto displacement) {
    constexpr bool kDisp = decltype(displacement)::value;
    switch (P.padding) {
      case Padding::Zeros:
        f(StaticConfig<kDisp, Interp::Linear, Padding::Zeros>{});
        break;
      case Padding::Border:
        f(StaticConfig<kDisp, Interp::Linear, Padding::Border>{});
        break;
      case Padding::Reflection:
        f(StaticConfig<kDisp, Interp::Linear, Padding::Reflection>{});
        break;
    }
  };
  if (P.displacement) {
    with_padding(std::true_type{});
  } else {
    with_padding(std::false_type{});
  }
}

// Note [CPU SIMD level]
// ~~~~~~~~~~~~~~~~~~~~~
// 0: the scalar per-point code; 1: AVX2 lanes; 2: AVX-512 lanes (csrc/cpu/sample_simd.h).
// Chosen once from what the CPU supports (the build machine's flags do not matter: the
// vector code is compiled with per-function target attributes and only called after this
// check), capped by torch's ATEN_CPU_CAPABILITY (default / avx2 / avx512) when it is set, so
// one variable steers torch and fastwarp's warp alike. fastwarp::_cpu_simd_level sets it
// in-process (tests compare the paths; the benchmarks time them side by side).
//
// Why the NCC chooses its instruction set another way (function multiversioning, Note [NCC
// loops on the CPU's vector units]): the warp's lanes are hand-written intrinsics, a second
// implementation of sampling.h's formulas per instruction set, which the tests must hold
// against the scalar code and the benchmarks time against it, so the level is a run-time
// switch. The NCC's loops are its one scalar source, which the compiler vectorizes; their
// clones compute the same bits, so nothing needs to choose among them and the loader does.
int supported_simd_level() {
#if defined(FASTWARP_HAVE_X86_SIMD)
  __builtin_cpu_init();
  int level = 0;
  if (__builtin_cpu_supports("avx2")) level = 1;
  if (level == 1 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
    level = 2;
  if (const char* cap = std::getenv("ATEN_CPU_CAPABILITY")) {
    if (std::strcmp(cap, "default") == 0) level = 0;
    if (std::strcmp(cap, "avx2") == 0) level = std::min(level, 1);
  }
  return level;
#else
  return 0;
#endif
}

std::atomic<int>& simd_level() {
  static std::atomic<int> level{supported_simd_level()};
  return level;
}

int64_t cpu_simd_level(int64_t requested) {
  const int previous = simd_level().load();
  if (requested >= 0)
    simd_level().store(static_cast<int>(std::min<int64_t>(requested, supported_simd_level())));
  return previous;
}

// Whether the vector kernels serve this call (Note [Vectorized CPU sampling]).
// Linear: float32 images; nearest: float32 and integer images (whose coordinates may be
// float32 too); both at float32 coordinates.
template <typename scalar_t, typename coord_t, int NDIM>
bool use_simd(const SampleParams<NDIM>& P) {
  const bool types = std::is_same<coord_t, float>::value &&
                     (std::is_same<scalar_t, float>::value || P.interp == Interp::Nearest);
  return types && simd_level().load() > 0 && P.padding != Padding::Reflection && !P.derivative &&
         params_fit_int32(P, num_rows(P) * P.out_size[NDIM - 1]);
}

// The element type the nearest kernels copy a scalar_t as: float for every 32-bit element
// (one gather), else the unsigned integer of its size.
template <typename scalar_t>
using nearest_elem_t = std::conditional_t<
    sizeof(scalar_t) == 4, float,
    std::conditional_t<sizeof(scalar_t) == 1, uint8_t,
                       std::conditional_t<sizeof(scalar_t) == 2, uint16_t, uint64_t>>>;

#if defined(FASTWARP_HAVE_X86_SIMD)
// Calls f(level tag, displacement tag, padding tag) for a call that use_simd accepted.
template <int NDIM, typename F>
void dispatch_simd(const SampleParams<NDIM>& P, const F& f) {
  auto with_padding = [&](auto disp) {
    if (P.padding == Padding::Zeros) {
      f(disp, std::integral_constant<Padding, Padding::Zeros>{});
    } else {
      f(disp, std::integral_constant<Padding, Padding::Border>{});
    }
  };
  if (P.displacement) {
    with_padding(std::true_type{});
  } else {
    with_padding(std::false_type{});
  }
}
#endif

struct PlainAdd {
  template <typename T>
  void operator()(T* p, T v) const {
    *p += v;
  }
};

struct CpuBackend {
  struct NoGuard {};
  static NoGuard device_guard(const at::Tensor&) { return {}; }

  template <typename scalar_t, typename coord_t, int NDIM>
  static void forward(const SampleParams<NDIM>& P, const scalar_t* image, const coord_t* coords,
                      scalar_t* out, scalar_t* jac) {
    using T = at::opmath_type<coord_t>;
#if defined(FASTWARP_HAVE_X86_SIMD)
    if constexpr (std::is_same<coord_t, float>::value) {
      if (use_simd<scalar_t, coord_t>(P)) {
        const int level = simd_level().load();
        dispatch_simd(P, [&](auto disp, auto pad) {
          constexpr bool kDisp = decltype(disp)::value;
          constexpr Padding kPad = decltype(pad)::value;
          at::parallel_for(0, num_rows(P), rows_per_task(P), [&](int64_t r0, int64_t r1) {
            if (P.interp == Interp::Nearest) {
              using elem_t = nearest_elem_t<scalar_t>;
              const auto* img = reinterpret_cast<const elem_t*>(image);
              auto* dst = reinterpret_cast<elem_t*>(out);
              if (level >= 2) {
                simd::avx512::nearest_forward_rows<simd::Avx512, NDIM, kDisp, kPad>(P, img, coords, dst, r0, r1);
              } else {
                simd::avx2::nearest_forward_rows<simd::Avx2, NDIM, kDisp, kPad>(P, img, coords, dst, r0, r1);
              }
            } else if constexpr (std::is_same<scalar_t, float>::value) {
              if (level >= 2) {
                simd::avx512::forward_rows<simd::Avx512, NDIM, kDisp, kPad>(P, image, coords, out, jac, r0, r1);
              } else {
                simd::avx2::forward_rows<simd::Avx2, NDIM, kDisp, kPad>(P, image, coords, out, jac, r0, r1);
              }
            }
          });
        });
        return;
      }
    }
#endif
    dispatch_config<scalar_t>(P, [&](auto config) {
      using Cfg = decltype(config);
      at::parallel_for(0, num_rows(P), rows_per_task(P), [&](int64_t r0, int64_t r1) {
        for_each_point(P, r0, r1, [&](int64_t nd, const int64_t(&pos)[NDIM]) {
          forward_point<Cfg, scalar_t, T, coord_t, int64_t, NDIM>(P, image, coords, out, jac, nd,
                                                                  pos);
        });
      });
    });
  }

  // Note [CPU image gradient]
  // ~~~~~~~~~~~~~~~~~~~~~~~~~
  // The image gradient is a scatter: any output point may add to any voxel. Rather than
  // atomics (slow, and their order makes the result vary run to run), the rows are split
  // into one contiguous chunk per thread, each chunk adds into its own zeroed buffer
  // (chunk 0 straight into the result), and the buffers are summed at the end. The split
  // depends only on the shape and the thread count, so the result is reproducible for a
  // given number of threads, with or without torch.use_deterministic_algorithms. The
  // buffers are capped at kMaxScratchBytes, using fewer chunks (down to a serial loop) for
  // very large images.
  template <typename scalar_t, int NDIM>
  static void backward(const SampleParams<NDIM>& P, const scalar_t* grad_out,
                       const scalar_t* image, const scalar_t* coords,
                       at::opmath_type<scalar_t>* grad_image, scalar_t* grad_coords) {
    dispatch_config<scalar_t>(P, [&](auto config) {
      backward_loop<decltype(config)>(P, grad_out, image, coords, grad_image, grad_coords);
    });
  }

  template <typename Cfg, typename scalar_t, int NDIM>
  static void backward_loop(const SampleParams<NDIM>& P, const scalar_t* grad_out,
                            const scalar_t* image, const scalar_t* coords,
                            at::opmath_type<scalar_t>* grad_image, scalar_t* grad_coords) {
    using T = at::opmath_type<scalar_t>;
    const int64_t rows = num_rows(P);
    auto run_rows = [&](int64_t r0, int64_t r1, T* gi) {
#if defined(FASTWARP_HAVE_X86_SIMD)
      if constexpr (std::is_same<scalar_t, float>::value) {
        if (use_simd<scalar_t, scalar_t>(P)) {
          const int level = simd_level().load();
          dispatch_simd(P, [&](auto disp, auto pad) {
            constexpr bool kDisp = decltype(disp)::value;
            constexpr Padding kPad = decltype(pad)::value;
            if (P.interp == Interp::Nearest) {
              if (level >= 2) {
                simd::avx512::nearest_backward_rows<simd::Avx512, NDIM, kDisp, kPad>(P, grad_out, coords, gi,
                                                                                  grad_coords, r0, r1);
              } else {
                simd::avx2::nearest_backward_rows<simd::Avx2, NDIM, kDisp, kPad>(P, grad_out, coords, gi,
                                                                              grad_coords, r0, r1);
              }
            } else if (level >= 2) {
              simd::avx512::backward_rows<simd::Avx512, NDIM, kDisp, kPad>(P, grad_out, image, coords, gi,
                                                                        grad_coords, r0, r1);
            } else {
              simd::avx2::backward_rows<simd::Avx2, NDIM, kDisp, kPad>(P, grad_out, image, coords, gi,
                                                                    grad_coords, r0, r1);
            }
          });
          return;
        }
      }
#endif
      for_each_point(P, r0, r1, [&](int64_t nd, const int64_t(&pos)[NDIM]) {
        backward_point<Cfg, scalar_t, T, scalar_t, int64_t, NDIM>(
            P, grad_out, image, coords, gi, grad_coords, nd, pos, PlainAdd{});
      });
    };
    if (grad_image == nullptr) {
      at::parallel_for(0, rows, rows_per_task(P),
                       [&](int64_t r0, int64_t r1) { run_rows(r0, r1, nullptr); });
      return;
    }

    int64_t image_numel = P.N * P.C;
    for (int k = 0; k < NDIM; ++k) image_numel *= P.in_size[k];
    const int64_t work_chunks = (rows + rows_per_task(P) - 1) / rows_per_task(P);
    const int64_t memory_chunks =
        1 + kMaxScratchBytes / std::max<int64_t>(1, image_numel * int64_t(sizeof(T)));
    const int64_t chunks = std::min<int64_t>(
        {static_cast<int64_t>(at::get_num_threads()), work_chunks, memory_chunks});
    if (chunks <= 1 || at::in_parallel_region()) {
      run_rows(0, rows, grad_image);
      return;
    }
    const auto acc_options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
    at::Tensor scratch = at::zeros({chunks - 1, image_numel}, acc_options);
    T* scratch_ptr = scratch.mutable_data_ptr<T>();
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t ch = c0; ch < c1; ++ch) {
        T* dst = ch == 0 ? grad_image : scratch_ptr + (ch - 1) * image_numel;
        run_rows(rows * ch / chunks, rows * (ch + 1) / chunks, dst);
      }
    });
    at::from_blob(grad_image, {image_numel}, acc_options).add_(scratch.sum(0));
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastwarp, CPU, m) { register_sample_ops<CpuBackend>(m); }

TORCH_LIBRARY_IMPL(fastwarp, CompositeExplicitAutograd, m) {
  m.impl("_cpu_simd_level", &cpu_simd_level);
}

}  // namespace fastwarp
