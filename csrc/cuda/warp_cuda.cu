// CUDA kernels of fastwarp::warp and fastwarp::grid_sample: one thread per (coordinate
// batch, output point), 32-bit index math whenever every offset fits, and the accumulation
// policy of the image gradient. The per-point math is csrc/common/sampling.h, the same
// code the CPU kernels run.
#include <ATen/Context.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
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

// Note [Tiled point order]
// ~~~~~~~~~~~~~~~~~~~~~~~~
// The forward and backward kernels give a block a tile of output points, 32 x 4 x 2 in 3-D
// (x, y, z) and 32 x 8 in 2-D, not 256 consecutive ones. A warp is still 32 consecutive x
// (coalesced loads of the displacement, stores of the output), and the block's corner
// gathers now share their y and z neighbours: each output row reads 2 x 2 rows of the image
// per channel, which the rows and planes beside it read too. With 256 consecutive points
// (two rows of a 128-wide volume) those neighbours were read again by the next block, on
// another SM, from the L2 (the counting build's L1 saw 61-65 % of the gathers' sectors hit;
// the model's L2 traffic was 2-5x the DRAM's). Tiles past the volume's edge idle their
// threads: sizes that are not multiples of the tile pay for it.
template <int NDIM>
struct PointTile {
  static constexpr int kX = 32;
  static constexpr int kY = NDIM >= 3 ? 4 : (NDIM == 2 ? kThreads / 32 : 1);
  static constexpr int kZ = NDIM >= 3 ? kThreads / (32 * 4) : 1;
  static_assert(NDIM == 1 || kX * kY * kZ == kThreads, "a tile is one block");
};

// Tiles along the output's last (x), second-to-last (y) and third-to-last (z) axes.
template <int NDIM>
struct TileGrid {
  int64_t x = 1, y = 1, z = 1;
};

template <int NDIM>
TileGrid<NDIM> tile_grid(const SampleParams<NDIM>& P) {
  using Tile = PointTile<NDIM>;
  TileGrid<NDIM> g;
  g.x = (P.out_size[NDIM - 1] + Tile::kX - 1) / Tile::kX;
  if constexpr (NDIM >= 2) g.y = (P.out_size[NDIM - 2] + Tile::kY - 1) / Tile::kY;
  if constexpr (NDIM >= 3) g.z = (P.out_size[NDIM - 3] + Tile::kZ - 1) / Tile::kZ;
  return g;
}

// The block's tile and the thread's point in it (Note [Tiled point order]); false past the
// output's edge. 1-D outputs (and any axis above z) take consecutive points.
template <typename index_t, int NDIM>
__device__ __forceinline__ bool tile_point(const SampleParams<NDIM>& P, const TileGrid<NDIM>& g,
                                           int64_t points, index_t* nd, index_t (&pos)[NDIM]) {
  using Tile = PointTile<NDIM>;
  if constexpr (NDIM < 2) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
    if (i >= points * P.coord_batch) return false;
    *nd = static_cast<index_t>(i / points);
    unravel_point(P, static_cast<index_t>(i % points), pos);
    return true;
  } else {
    int64_t b = blockIdx.x;
    const int64_t bx = b % g.x;
    b /= g.x;
    const int64_t by = b % g.y;
    b /= g.y;
    const int64_t bz = b % g.z;
    const int64_t outer = b / g.z;  // (coordinate batch, axes above z)
    const int t = static_cast<int>(threadIdx.x);
    const int64_t x = bx * Tile::kX + t % Tile::kX;
    const int64_t y = by * Tile::kY + (t / Tile::kX) % Tile::kY;
    const int64_t z = bz * Tile::kZ + t / (Tile::kX * Tile::kY);
    if (x >= P.out_size[NDIM - 1] || y >= P.out_size[NDIM - 2]) return false;
    pos[NDIM - 1] = static_cast<index_t>(x);
    pos[NDIM - 2] = static_cast<index_t>(y);
    if constexpr (NDIM >= 3) {
      if (z >= P.out_size[NDIM - 3]) return false;
      pos[NDIM - 3] = static_cast<index_t>(z);
      int64_t rest = outer;
FASTWARP_UNROLL
      for (int k = NDIM - 4; k >= 0; --k) {
        pos[k] = static_cast<index_t>(rest % P.out_size[k]);
        rest /= P.out_size[k];
      }
      *nd = static_cast<index_t>(rest);
    } else {
      *nd = static_cast<index_t>(outer);
    }
    return true;
  }
}

template <int NDIM>
unsigned int tile_blocks(const SampleParams<NDIM>& P, const TileGrid<NDIM>& g, int64_t points) {
  if constexpr (NDIM < 2) {
    return num_blocks(points * P.coord_batch);
  } else {
    int64_t outer = P.coord_batch;
    for (int k = 0; k + 3 <= NDIM - 1; ++k) outer *= P.out_size[k];
    return static_cast<unsigned int>(g.x * g.y * g.z * outer);
  }
}

// The kernels' bodies, for DynamicConfig (warp_*_kernel) and AffineConfig (affine_*_kernel:
// Note [Affine sampling], instantiated apart so that the warp's kernels keep their registers).
template <typename Cfg, typename scalar_t, typename coord_t, typename index_t, int NDIM>
__device__ __forceinline__ void fwd_body(const SampleParams<NDIM>& P, const scalar_t* __restrict__ image,
                                         const coord_t* __restrict__ coords, scalar_t* __restrict__ out,
                                         scalar_t* __restrict__ jac, const TileGrid<NDIM>& g,
                                         int64_t points) {
  using T = at::opmath_type<coord_t>;
  index_t nd, pos[NDIM];
  if (!tile_point(P, g, points, &nd, pos)) return;
  forward_point<Cfg, scalar_t, T, coord_t, index_t, NDIM>(P, image, coords, out, jac, nd, pos);
}

template <typename scalar_t, typename coord_t, typename index_t, int NDIM>
__global__ void __launch_bounds__(kThreads)
    warp_fwd_kernel(const SampleParams<NDIM> P, const scalar_t* __restrict__ image,
                    const coord_t* __restrict__ coords, scalar_t* __restrict__ out,
                    scalar_t* __restrict__ jac, const TileGrid<NDIM> g, int64_t points) {
  fwd_body<DynamicConfig, scalar_t, coord_t, index_t, NDIM>(P, image, coords, out, jac, g, points);
}

template <typename scalar_t, typename coord_t, typename index_t, int NDIM>
__global__ void __launch_bounds__(kThreads)
    affine_fwd_kernel(const SampleParams<NDIM> P, const scalar_t* __restrict__ image,
                      const coord_t* __restrict__ coords, scalar_t* __restrict__ out,
                      scalar_t* __restrict__ jac, const TileGrid<NDIM> g, int64_t points) {
  fwd_body<AffineConfig, scalar_t, coord_t, index_t, NDIM>(P, image, coords, out, jac, g, points);
}

struct AtomicAdd {
  template <typename T>
  __device__ __forceinline__ void operator()(T* p, T v) const {
    atomicAdd(p, v);
  }
};

template <typename Cfg, typename scalar_t, typename index_t, int NDIM>
__device__ __forceinline__ void bwd_body(const SampleParams<NDIM>& P, const scalar_t* __restrict__ grad_out,
                                         const scalar_t* __restrict__ image,
                                         const scalar_t* __restrict__ coords,
                                         at::opmath_type<scalar_t>* __restrict__ grad_image,
                                         scalar_t* __restrict__ grad_coords, const TileGrid<NDIM>& g,
                                         int64_t points) {
  using T = at::opmath_type<scalar_t>;
  index_t nd, pos[NDIM];
  if (!tile_point(P, g, points, &nd, pos)) return;
  backward_point<Cfg, scalar_t, T, scalar_t, index_t, NDIM>(P, grad_out, image, coords, grad_image,
                                                            grad_coords, nd, pos, AtomicAdd{});
}

template <typename scalar_t, typename index_t, int NDIM>
__global__ void __launch_bounds__(kThreads)
    warp_bwd_kernel(const SampleParams<NDIM> P, const scalar_t* __restrict__ grad_out,
                    const scalar_t* __restrict__ image, const scalar_t* __restrict__ coords,
                    at::opmath_type<scalar_t>* __restrict__ grad_image,
                    scalar_t* __restrict__ grad_coords, const TileGrid<NDIM> g, int64_t points) {
  bwd_body<DynamicConfig, scalar_t, index_t, NDIM>(P, grad_out, image, coords, grad_image, grad_coords, g,
                                                   points);
}

template <typename scalar_t, typename index_t, int NDIM>
__global__ void __launch_bounds__(kThreads)
    affine_bwd_kernel(const SampleParams<NDIM> P, const scalar_t* __restrict__ grad_out,
                      const scalar_t* __restrict__ image, const scalar_t* __restrict__ coords,
                      at::opmath_type<scalar_t>* __restrict__ grad_image,
                      scalar_t* __restrict__ grad_coords, const TileGrid<NDIM> g, int64_t points) {
  bwd_body<AffineConfig, scalar_t, index_t, NDIM>(P, grad_out, image, coords, grad_image, grad_coords, g,
                                                  points);
}

// Note [Deterministic image gradient on the GPU]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// The default image gradient scatters with atomicAdd, whose order (and so the rounding
// of the sum) varies run to run, like grid_sample's. Under
// torch.use_deterministic_algorithms(True) we instead
//   1. let one thread per (image n, output point) m build its corners once and write, for
//      each corner b, a key, the flat index n*S + voxel of the voxel it adds to (S voxels
//      per image; kNoKey for a corner outside), and its weight, at [b * M + m] (M: the
//      (image, point) pairs; corner-major, so that every store is coalesced);
//   2. stable-sort the keys (at::sort), which groups the contributions of every voxel in
//      a fixed order;
//   3. let the first entry of each group sum weight * grad_out over the group serially,
//      per channel, and write the voxel once.
// The result is bitwise reproducible. Keys are 32-bit whenever N*S < 2^31 - 1 (half the
// sort's bytes and radix passes; FASTWARP_DETERMINISTIC_KEYS=64 forces 64-bit ones, which
// the tests use). Scratch per (point, corner): the key (4 or 8 bytes), the
// weight (4, or 8 for double), the sort's permutation (8) and sorted keys.
template <typename key_t>
constexpr key_t kNoKey = std::numeric_limits<key_t>::max();

template <typename Cfg, typename scalar_t, typename key_t, int NDIM>
__device__ __forceinline__ void det_keys_body(const SampleParams<NDIM>& P, const scalar_t* __restrict__ coords,
                                              key_t* __restrict__ keys,
                                              at::opmath_type<scalar_t>* __restrict__ weights,
                                              int64_t points, int64_t voxels, int64_t pairs) {
  using T = at::opmath_type<scalar_t>;
  const int64_t m = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (m >= pairs) return;
  const int64_t n = m / points;
  int64_t nd, pos[NDIM];
  thread_point(P, m % points, points, &nd, pos);
  nd = P.coord_batch == 1 ? 0 : n;
  PointSample<T, NDIM> ps;
  const bool any = compute_point<Cfg, T>(P, coords, nd, pos, &ps);
  Corners<T, int64_t, NDIM> cs;
  make_corners<Cfg>(P, ps, any, P.gimg_stride, &cs);
FASTWARP_UNROLL
  for (int b = 0; b < (1 << NDIM); ++b) {
    const bool in = cs.in[b] && b < cs.count;
    keys[b * pairs + m] = in ? static_cast<key_t>(n * voxels + cs.off[b]) : kNoKey<key_t>;
    weights[b * pairs + m] = cs.w[b];
  }
}

template <typename scalar_t, typename key_t, int NDIM>
__global__ void __launch_bounds__(kThreads)
    det_keys_kernel(const SampleParams<NDIM> P, const scalar_t* __restrict__ coords,
                    key_t* __restrict__ keys, at::opmath_type<scalar_t>* __restrict__ weights,
                    int64_t points, int64_t voxels, int64_t pairs) {
  det_keys_body<DynamicConfig, scalar_t, key_t, NDIM>(P, coords, keys, weights, points, voxels, pairs);
}

template <typename scalar_t, typename key_t, int NDIM>
__global__ void __launch_bounds__(kThreads)
    affine_det_keys_kernel(const SampleParams<NDIM> P, const scalar_t* __restrict__ coords,
                           key_t* __restrict__ keys, at::opmath_type<scalar_t>* __restrict__ weights,
                           int64_t points, int64_t voxels, int64_t pairs) {
  det_keys_body<AffineConfig, scalar_t, key_t, NDIM>(P, coords, keys, weights, points, voxels, pairs);
}

template <typename scalar_t, typename key_t, int NDIM>
__global__ void __launch_bounds__(kThreads)
    det_reduce_kernel(const SampleParams<NDIM> P, const scalar_t* __restrict__ grad_out,
                      const key_t* __restrict__ keys, const int64_t* __restrict__ order,
                      const at::opmath_type<scalar_t>* __restrict__ weights,
                      at::opmath_type<scalar_t>* grad_image, int64_t points, int64_t voxels,
                      int64_t pairs, int64_t total) {
  using T = at::opmath_type<scalar_t>;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= total) return;
  const key_t key = keys[i];
  if (key == kNoKey<key_t> || (i > 0 && keys[i - 1] == key)) return;
  const int64_t n = static_cast<int64_t>(key) / voxels;
  const int64_t voxel = static_cast<int64_t>(key) % voxels;
  for (int64_t c = 0; c < P.C; ++c) {
    T acc = T(0);
    for (int64_t j = i; j < total && keys[j] == key; ++j) {
      const int64_t e = order[j];
      int64_t nd, pos[NDIM];  // (nd unused: n is the key's)
      thread_point(P, e, points, &nd, pos);  // pairs is a multiple of points
      acc += weights[e] * static_cast<T>(grad_out[n * P.out_stride_n + c * P.out_stride_c +
                                                  spatial_offset(pos, P.out_stride)]);
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
    const bool narrow = params_fit_int32(P, total);
    const auto kernel = P.affine != nullptr
                            ? (narrow ? affine_fwd_kernel<scalar_t, coord_t, int32_t, NDIM>
                                      : affine_fwd_kernel<scalar_t, coord_t, int64_t, NDIM>)
                            : (narrow ? warp_fwd_kernel<scalar_t, coord_t, int32_t, NDIM>
                                      : warp_fwd_kernel<scalar_t, coord_t, int64_t, NDIM>);
    const TileGrid<NDIM> g = tile_grid(P);
    cuda::launch(kernel, tile_blocks(P, g, points), kThreads, 0, cuda::current_stream(), P, image,
                 coords, out, jac, g, points);
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
      const bool narrow = params_fit_int32(P, total);
      const auto kernel = P.affine != nullptr ? (narrow ? affine_bwd_kernel<scalar_t, int32_t, NDIM>
                                                        : affine_bwd_kernel<scalar_t, int64_t, NDIM>)
                                              : (narrow ? warp_bwd_kernel<scalar_t, int32_t, NDIM>
                                                        : warp_bwd_kernel<scalar_t, int64_t, NDIM>);
      const TileGrid<NDIM> g = tile_grid(P);
      cuda::launch(kernel, tile_blocks(P, g, points), kThreads, 0, cuda::current_stream(), P,
                   grad_out, image, coords, scatter_target, grad_coords, g, points);
    }
    if (deterministic) deterministic_image_grad(P, grad_out, coords, grad_image, points);
  }

  template <typename scalar_t, int NDIM>
  static void deterministic_image_grad(const SampleParams<NDIM>& P, const scalar_t* grad_out,
                                       const scalar_t* coords,
                                       at::opmath_type<scalar_t>* grad_image, int64_t points) {
    int64_t voxels = 1;
    for (int k = 0; k < NDIM; ++k) voxels *= P.in_size[k];
    // FASTWARP_DETERMINISTIC_KEYS=64 takes the 64-bit keys at any size (for the tests)
    const char* bits = std::getenv("FASTWARP_DETERMINISTIC_KEYS");
    const bool wide = bits != nullptr && std::strcmp(bits, "64") == 0;
    if (!wide && P.N * voxels < std::numeric_limits<int32_t>::max())
      deterministic_image_grad<scalar_t, int32_t, NDIM>(P, grad_out, coords, grad_image, points, voxels);
    else
      deterministic_image_grad<scalar_t, int64_t, NDIM>(P, grad_out, coords, grad_image, points, voxels);
  }

  template <typename scalar_t, typename key_t, int NDIM>
  static void deterministic_image_grad(const SampleParams<NDIM>& P, const scalar_t* grad_out,
                                       const scalar_t* coords,
                                       at::opmath_type<scalar_t>* grad_image, int64_t points,
                                       int64_t voxels) {
    using T = at::opmath_type<scalar_t>;
    const int64_t pairs = P.N * points, total = pairs * (1 << NDIM);
    const auto stream = cuda::current_stream();
    const auto on_device = at::TensorOptions().device(cuda::current_device());
    at::Tensor keys = at::empty({total}, on_device.dtype(c10::CppTypeToScalarType<key_t>::value));
    at::Tensor weights = at::empty({total}, on_device.dtype(c10::CppTypeToScalarType<T>::value));
    const auto keys_kernel = P.affine != nullptr ? affine_det_keys_kernel<scalar_t, key_t, NDIM>
                                                 : det_keys_kernel<scalar_t, key_t, NDIM>;
    cuda::launch(keys_kernel, num_blocks(pairs), kThreads, 0, stream, P,
                 coords, keys.mutable_data_ptr<key_t>(), weights.mutable_data_ptr<T>(), points,
                 voxels, pairs);
    auto [sorted, order] = keys.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
    keys.reset();
    cuda::launch(det_reduce_kernel<scalar_t, key_t, NDIM>, num_blocks(total), kThreads, 0, stream,
                 P, grad_out, sorted.const_data_ptr<key_t>(), order.const_data_ptr<int64_t>(),
                 weights.const_data_ptr<T>(), grad_image, points, voxels, pairs, total);
  }
};

}  // namespace

FASTWARP_CUDA_LIBRARY_IMPL(m) { register_sample_ops<CudaBackend>(m); }

}  // namespace fastwarp
