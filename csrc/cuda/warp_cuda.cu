// CUDA kernels of fastwarp::warp and fastwarp::grid_sample: one thread per (coordinate
// batch, output point), 32-bit index math whenever every offset fits, and the accumulation
// policy of the image gradient. The per-point math is csrc/common/sampling.h, the same
// code the CPU kernels run.
#include <ATen/Context.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "../common/sample_op.h"
#include "runtime.h"

namespace fastwarp {
namespace {

// 256 threads: enough warps per block to hide the gather latency, small enough that the
// 3-D backward's registers (24 weight derivatives per point) do not limit occupancy.
constexpr int kThreads = 256;

inline unsigned int num_blocks(int64_t n) {
  return static_cast<unsigned int>((n + kThreads - 1) / kThreads);
}

template <int NDIM>
int64_t num_points(const SampleParams<NDIM>& P) {
  int64_t p = 1;
  for (int k = 0; k < NDIM; ++k) p *= P.out_size[k];
  return p;
}

template <typename index_t, int NDIM>
__device__ __forceinline__ void thread_point(const SampleParams<NDIM>& P, int64_t i,
                                             int64_t points, index_t* nd, index_t (&pos)[NDIM]) {
  const index_t p = static_cast<index_t>(i % points);
  *nd = static_cast<index_t>(i / points);
  unravel_point(P, p, pos);
}

template <typename scalar_t, typename coord_t, typename index_t, int NDIM>
__global__ void __launch_bounds__(kThreads)
    warp_fwd_kernel(const SampleParams<NDIM> P, const scalar_t* __restrict__ image,
                    const coord_t* __restrict__ coords, scalar_t* __restrict__ out,
                    scalar_t* __restrict__ jac, int64_t points, int64_t total) {
  using T = at::opmath_type<coord_t>;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= total) return;
  index_t nd, pos[NDIM];
  thread_point(P, i, points, &nd, pos);
  forward_point<DynamicConfig, scalar_t, T, coord_t, index_t, NDIM>(P, image, coords, out, jac,
                                                                   nd, pos);
}

struct AtomicAdd {
  template <typename T>
  __device__ __forceinline__ void operator()(T* p, T v) const {
    atomicAdd(p, v);
  }
};

template <typename scalar_t, typename index_t, int NDIM>
__global__ void __launch_bounds__(kThreads)
    warp_bwd_kernel(const SampleParams<NDIM> P, const scalar_t* __restrict__ grad_out,
                    const scalar_t* __restrict__ image, const scalar_t* __restrict__ coords,
                    at::opmath_type<scalar_t>* __restrict__ grad_image,
                    scalar_t* __restrict__ grad_coords, int64_t points, int64_t total) {
  using T = at::opmath_type<scalar_t>;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= total) return;
  index_t nd, pos[NDIM];
  thread_point(P, i, points, &nd, pos);
  backward_point<DynamicConfig, scalar_t, T, scalar_t, index_t, NDIM>(
      P, grad_out, image, coords, grad_image, grad_coords, nd, pos, AtomicAdd{});
}

// Note [Deterministic image gradient on the GPU]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// The default image gradient scatters with atomicAdd, whose order (and so the rounding
// of the sum) varies run to run, like grid_sample's. Under
// torch.use_deterministic_algorithms(True) we instead
//   1. write one key per (image n, output point, corner): the flat index n*S + voxel of
//      the voxel it adds to (S voxels per image), or kNoVoxel for a corner outside;
//   2. stable-sort the keys (at::sort), which groups the contributions of every voxel in
//      a fixed order;
//   3. let the first entry of each group sum the group serially, recomputing each
//      contribution's weight from the coordinates, and write the voxel once.
// The result is bitwise reproducible; it costs 24 bytes per (point, corner) of scratch.
constexpr int64_t kNoVoxel = std::numeric_limits<int64_t>::max();

// Corner b of cs, b known only at run time, by an unrolled select: indexing cs's arrays
// with b would put them on the stack (local memory).
template <typename T, typename index_t, int NDIM>
__device__ __forceinline__ void select_corner(const Corners<T, index_t, NDIM>& cs, int b,
                                              index_t* off, T* w, bool* in) {
  *off = cs.off[0];
  *w = cs.w[0];
  *in = cs.in[0] && cs.count > 0;
FASTWARP_UNROLL
  for (int j = 1; j < (1 << NDIM); ++j) {
    if (j == b) {
      *off = cs.off[j];
      *w = cs.w[j];
      *in = cs.in[j] && j < cs.count;
    }
  }
}

template <typename scalar_t, int NDIM>
__global__ void __launch_bounds__(kThreads)
    det_keys_kernel(const SampleParams<NDIM> P, const scalar_t* __restrict__ coords,
                    int64_t* __restrict__ keys, int64_t points, int64_t voxels, int64_t total) {
  using T = at::opmath_type<scalar_t>;
  constexpr int K = 1 << NDIM;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= total) return;
  const int b = static_cast<int>(e % K);
  const int64_t q = e / K;
  const int64_t n = q / points;
  int64_t nd, pos[NDIM];
  thread_point(P, q % points, points, &nd, pos);
  nd = P.coord_batch == 1 ? 0 : n;
  PointSample<T, NDIM> ps;
  const bool any = compute_point<DynamicConfig, T>(P, coords, nd, pos, &ps);
  Corners<T, int64_t, NDIM> cs;
  make_corners<DynamicConfig>(P, ps, any, P.gimg_stride, &cs);
  int64_t off;
  T w;
  bool in;
  select_corner(cs, b, &off, &w, &in);
  keys[e] = in ? n * voxels + off : kNoVoxel;
}

template <typename scalar_t, int NDIM>
__global__ void __launch_bounds__(kThreads)
    det_reduce_kernel(const SampleParams<NDIM> P, const scalar_t* __restrict__ grad_out,
                      const scalar_t* __restrict__ coords, const int64_t* __restrict__ keys,
                      const int64_t* __restrict__ order, at::opmath_type<scalar_t>* grad_image,
                      int64_t points, int64_t voxels, int64_t total) {
  using T = at::opmath_type<scalar_t>;
  constexpr int K = 1 << NDIM;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= total) return;
  const int64_t key = keys[i];
  if (key == kNoVoxel || (i > 0 && keys[i - 1] == key)) return;
  const int64_t n = key / voxels;
  const int64_t voxel = key % voxels;
  for (int64_t c = 0; c < P.C; ++c) {
    T acc = T(0);
    for (int64_t j = i; j < total && keys[j] == key; ++j) {
      const int64_t e = order[j];
      const int b = static_cast<int>(e % K);
      int64_t nd, pos[NDIM];
      thread_point(P, (e / K) % points, points, &nd, pos);
      nd = P.coord_batch == 1 ? 0 : n;
      PointSample<T, NDIM> ps;
      const bool any = compute_point<DynamicConfig, T>(P, coords, nd, pos, &ps);
      Corners<T, int64_t, NDIM> cs;
      make_corners<DynamicConfig>(P, ps, any, P.gimg_stride, &cs);
      const T g = static_cast<T>(grad_out[n * P.out_stride_n + c * P.out_stride_c +
                                          spatial_offset(pos, P.out_stride)]);
      int64_t off;
      T w;
      bool in;
      select_corner(cs, b, &off, &w, &in);
      acc += w * g;
    }
    grad_image[n * P.gimg_stride_n + c * P.gimg_stride_c + voxel] = acc;
  }
}

struct CudaBackend {
  static auto device_guard(const at::Tensor& t) { return cuda::device_guard(t); }

  template <typename scalar_t, typename coord_t, int NDIM>
  static void forward(const SampleParams<NDIM>& P, const scalar_t* image, const coord_t* coords,
                      scalar_t* out, scalar_t* jac) {
    const int64_t points = num_points(P);
    const int64_t total = points * P.coord_batch;
    const auto kernel = params_fit_int32(P, total)
                            ? warp_fwd_kernel<scalar_t, coord_t, int32_t, NDIM>
                            : warp_fwd_kernel<scalar_t, coord_t, int64_t, NDIM>;
    cuda::launch(kernel, num_blocks(total), kThreads, 0, cuda::current_stream(), P, image,
                 coords, out, jac, points, total);
  }

  template <typename scalar_t, int NDIM>
  static void backward(const SampleParams<NDIM>& P, const scalar_t* grad_out,
                       const scalar_t* image, const scalar_t* coords,
                       at::opmath_type<scalar_t>* grad_image, scalar_t* grad_coords) {
    const int64_t points = num_points(P);
    const int64_t total = points * P.coord_batch;
    const bool deterministic =
        grad_image != nullptr && at::globalContext().deterministicAlgorithms();
    auto* scatter_target = deterministic ? nullptr : grad_image;
    if (scatter_target != nullptr || grad_coords != nullptr) {
      const auto kernel = params_fit_int32(P, total) ? warp_bwd_kernel<scalar_t, int32_t, NDIM>
                                                     : warp_bwd_kernel<scalar_t, int64_t, NDIM>;
      cuda::launch(kernel, num_blocks(total), kThreads, 0, cuda::current_stream(), P, grad_out,
                   image, coords, scatter_target, grad_coords, points, total);
    }
    if (deterministic) deterministic_image_grad(P, grad_out, coords, grad_image, points);
  }

  template <typename scalar_t, int NDIM>
  static void deterministic_image_grad(const SampleParams<NDIM>& P, const scalar_t* grad_out,
                                       const scalar_t* coords,
                                       at::opmath_type<scalar_t>* grad_image, int64_t points) {
    constexpr int K = 1 << NDIM;
    int64_t voxels = 1;
    for (int k = 0; k < NDIM; ++k) voxels *= P.in_size[k];
    const int64_t total = P.N * points * K;
    const auto stream = cuda::current_stream();
    const auto options = at::TensorOptions().dtype(at::kLong).device(cuda::current_device());
    at::Tensor keys = at::empty({total}, options);
    cuda::launch(det_keys_kernel<scalar_t, NDIM>, num_blocks(total), kThreads, 0, stream, P,
                 coords, keys.mutable_data_ptr<int64_t>(), points, voxels, total);
    auto [sorted, order] = keys.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
    cuda::launch(det_reduce_kernel<scalar_t, NDIM>, num_blocks(total), kThreads, 0, stream, P,
                 grad_out, coords, sorted.const_data_ptr<int64_t>(),
                 order.const_data_ptr<int64_t>(), grad_image, points, voxels, total);
  }
};

}  // namespace

FASTWARP_CUDA_LIBRARY_IMPL(m) { register_sample_ops<CudaBackend>(m); }

}  // namespace fastwarp
