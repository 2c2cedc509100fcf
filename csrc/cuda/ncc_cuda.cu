// CUDA kernels of fastwarp::ncc: one shared-memory tiled kernel per pass (forward,
// backward) that streams each volume along its slowest axis and stores nothing but its
// outputs (Note [Tiled NCC on the GPU]); the algebra is csrc/common/ncc.h. Windows too
// large for a tile take the elementwise fallback at the end of this file.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "../common/ncc_host.h"
#include "runtime.h"

namespace fastwarp {
namespace {

// Note [Tiled NCC on the GPU]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~
// A volume is seen as (Z, Y, X): 3-D (D, H, W); 2-D (H, 1, W). A block owns a tile of
// TY x TX columns of (y, x) (3-D: 8 x 32; 2-D: 1 x 256; one thread per column, 256 threads:
// 32 floats of x per row is one 128-byte line, and 8 warps hide the shared-memory latency)
// and a chunk of consecutive z; it marches along z one plane at a time:
//   1. load the plane's tile plus its x/y halo into shared memory (values shifted by the
//      block's reference values, zero outside the image: Note [Shifted window sums]);
//   2. sum the five quantities (I, J, I^2, J^2, IJ) along x over the window, then along y:
//      the plane's 2-D window sums at each column, in registers;
//   3. keep a running sum along z: add the plane's 2-D sums, subtract those of the plane
//      that leaves the window, read back from a ring of the last 2h_z + 1 planes that each
//      thread keeps in shared memory for its own column: O(1) per voxel whatever the
//      window's depth. Every 32 planes the running sum is recomputed exactly from the ring,
//      so that rounding cannot drift along a long chunk (even in float64 it would: after a
//      thousand planes of CT values, by enough to move cc in flat air by 1e-4).
//   4. when a plane's window is complete, turn its five sums into cc (ncc.h) and write it,
//      or, for the "mean" and "batch" reductions, add it to the thread's total: the block
//      reduces its totals and writes one partial sum, and no cc map is written at all.
// The x and y sums are direct (2h + 1 shared-memory reads per value): for the windows of
// registration (3 to 11) that is cheaper than the scans an O(1) method would need over
// rows this short; z, the long axis, is the running one.
//
// The backward needs, at every output voxel q, box sums over the window of q of the
// coefficients f_X(p) (Note [Windowed NCC]), and f(p) needs the five window sums at p. So
// it runs the march twice over, in one kernel: the first running sum gives the five sums at
// plane p over the tile *extended* by the x/y window halo (EY x EX columns, each thread
// owning several, in shared memory), which become f(p) on that extended tile; the f planes
// are box-summed in x and y onto the tile and kept as a second running sum along z, with
// its own ring; when plane q's sum is complete, the gradients of plane q follow and are
// written. The first running sum's ring (EY x EX columns deep) is kept when it fits, and
// otherwise the plane that leaves is summed again from the inputs (twice the loads of
// step 1-2, no ring). Only the inputs and the upstream gradient are read, only the
// gradients are written: nothing is stored between the passes, and the scratch is one
// partial sum per block for the reduced forward.
//
// Chunks: a volume's z range is split into c chunks, each of which first reads the 2 h_z
// (4 h_z in the backward) planes before it: splitting costs those planes again, and not
// splitting leaves multiprocessors idle. With B blocks per chunk-less volume set (tiles times
// volumes) and R blocks resident on the whole GPU at once (the occupancy API times the
// multiprocessors), the launch takes about ceil(c B / R) waves of blocks that each march
// ceil(Z / c) + overlap planes; c minimizes that product (no chunk shorter than max(8,
// overlap) planes). At 160x192x224, window 9, one block per multiprocessor: c = 3, where a
// grid sized for four blocks per multiprocessor took c = 4 and 17% more block-planes in the
// backward (fastwarp bench --device cuda-model). Shared memory: the forward's largest user is
// its ring, (2 h_z + 1) * 5 * 256 values (90 KiB for a window of 9 in float64; 120 KiB in
// all), the backward's its two rings and extended tiles (216 KiB at 9 without the first
// ring, with both gradients); above 48 KiB the kernels opt in with cudaFuncSetAttribute
// (Hopper allows 227 KiB per block, and the 228 KiB of an SM then hold one such block).
// Windows whose tile does not fit (about 21 in the forward, 9 in the backward, per axis)
// fall back to the elementwise path at the end of this file.
//
// Arithmetic: float64 sums for every input dtype (Note [Shifted window sums] in ncc.h says
// why float32 is not enough), which doubles the shared memory of the float32 layout above:
// 120 KiB for the forward at a window of 9, 216 KiB for the backward (one block per
// multiprocessor each), and the tiled backward's largest window is 9 (11 takes the fallback).
// Getting the float32 throughput back (register sliding sums, smaller rings) is the kernels'
// rebuild against the emulated launch's counts.

constexpr int kThreads = 256;
constexpr int kRefresh = 32;  // planes between exact re-sums of a running sum from its ring
constexpr int kQ = 5;         // I, J, I^2, J^2, IJ

template <typename scalar_t>
using acc_type = double;  // whatever scalar_t is: see "Arithmetic" above

// Strides of a (N, C, Z, Y, X) view of an input, output or gradient.
struct Strides {
  int64_t n, c, z, y, x;
};

template <typename acc_t>
struct NccTile {
  int64_t Z, Y, X;       // the volume as (Z, Y, X)
  int hz, hy, hx;        // window halves, clamped to the extent - 1 (the same sums)
  int64_t n_window;      // the nominal window's voxel count n
  acc_t inv_n, eps, g_scale;
  int64_t C;             // channels: volume m is (m / C, m % C)
  int64_t tiles_y, tiles_x, chunks, chunk;
  bool ring_s;           // backward: the first running sum keeps its ring
  Strides a, b, g, out, ga, gb;
};

// Offsets (in acc_t) of the shared-memory arrays, computed once for host and device.
template <int TY, int TX>
struct ForwardLayout {
  int64_t region, xpass, ring, total;
  FASTWARP_HD ForwardLayout(int hz, int hy, int hx) {
    const int64_t RY = TY + 2 * hy, RX = TX + 2 * hx;
    region = 0;
    xpass = region + 2 * RY * RX;
    ring = xpass + kQ * RY * TX;
    total = ring + (2 * hz + 1) * kQ * TY * TX;
  }
};

template <int TY, int TX, int NQ>
struct BackwardLayout {
  int64_t region, xpass, sacc, sring, fplane, fx, fring, total;
  FASTWARP_HD BackwardLayout(int hz, int hy, int hx, bool ring_s) {
    const int64_t RY = TY + 4 * hy, RX = TX + 4 * hx;  // inputs: tile + twice the halo
    const int64_t EY = TY + 2 * hy, EX = TX + 2 * hx;  // the extended tile
    const int64_t W = 2 * hz + 1;
    region = 0;
    xpass = region + 2 * RY * RX;
    sacc = xpass + kQ * RY * EX;
    sring = sacc + kQ * EY * EX;
    fplane = sring + (ring_s ? W * kQ * EY * EX : 0);
    fx = fplane + NQ * EY * EX;
    fring = fx + NQ * EY * TX;
    total = fring + W * NQ * TY * TX;
  }
};

struct BlockTile {
  int64_t m, z0, z1, y0, x0;
};

template <int TY, int TX, typename acc_t>
__device__ __forceinline__ BlockTile block_tile(const NccTile<acc_t>& P) {
  int64_t r = blockIdx.x;
  BlockTile t;
  t.x0 = (r % P.tiles_x) * TX;
  r /= P.tiles_x;
  t.y0 = (r % P.tiles_y) * TY;
  r /= P.tiles_y;
  t.z0 = (r % P.chunks) * P.chunk;
  t.m = r / P.chunks;
  t.z1 = t.z0 + P.chunk < P.Z ? t.z0 + P.chunk : P.Z;
  return t;
}

__device__ __forceinline__ int64_t volume_offset(const Strides& s, int64_t m, int64_t C) {
  return (m / C) * s.n + (m % C) * s.c;
}

__device__ __forceinline__ int64_t voxel_offset(const Strides& s, int64_t z, int64_t y, int64_t x) {
  return z * s.z + y * s.y + x * s.x;
}

// Loads plane z of the (RY x RX) rectangle at (ys, xs) of both inputs, shifted, zero outside.
template <typename scalar_t, typename acc_t>
__device__ void load_region(const NccTile<acc_t>& P, const scalar_t* a, const scalar_t* b,
                            int64_t z, int64_t ys, int64_t xs, int RY, int RX, acc_t ca,
                            acc_t cb, acc_t* Ra, acc_t* Rb) {
  for (int k = threadIdx.x; k < RY * RX; k += blockDim.x) {
    const int64_t y = ys + k / RX, x = xs + k % RX;
    acc_t va = acc_t(0), vb = acc_t(0);
    if (y >= 0 && y < P.Y && x >= 0 && x < P.X) {
      va = static_cast<acc_t>(a[voxel_offset(P.a, z, y, x)]) - ca;
      vb = static_cast<acc_t>(b[voxel_offset(P.b, z, y, x)]) - cb;
    }
    Ra[k] = va;
    Rb[k] = vb;
  }
}

// The five quantities summed along x over 2 hx + 1 columns: (rows x RX) -> kQ x (rows x OX).
template <typename acc_t>
__device__ void x_pass_inputs(const acc_t* Ra, const acc_t* Rb, int rows, int RX, int OX, int hx,
                              acc_t* XP) {
  const int plane = rows * OX;
  for (int k = threadIdx.x; k < plane; k += blockDim.x) {
    const acc_t* pa = Ra + (k / OX) * RX + k % OX;
    const acc_t* pb = Rb + (k / OX) * RX + k % OX;
    acc_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0;
    for (int d = 0; d <= 2 * hx; ++d) {
      const acc_t va = pa[d], vb = pb[d];
      s0 += va;
      s1 += vb;
      s2 += va * va;
      s3 += vb * vb;
      s4 += va * vb;
    }
    XP[k] = s0;
    XP[plane + k] = s1;
    XP[2 * plane + k] = s2;
    XP[3 * plane + k] = s3;
    XP[4 * plane + k] = s4;
  }
}

// NQ planes (rows x IX) summed along x over 2 h + 1 columns -> NQ planes (rows x OX).
template <int NQ, typename acc_t>
__device__ void x_pass_planes(const acc_t* src, int rows, int IX, int OX, int h, acc_t* dst) {
  for (int k = threadIdx.x; k < rows * OX; k += blockDim.x) {
    const int row = k / OX, ox = k % OX;
    for (int q = 0; q < NQ; ++q) {
      const acc_t* p = src + q * rows * IX + row * IX + ox;
      acc_t s = 0;
      for (int d = 0; d <= 2 * h; ++d) s += p[d];
      dst[q * rows * OX + k] = s;
    }
  }
}

// Sum along y of 2 h + 1 rows of one column of a plane with OX columns.
template <typename acc_t>
__device__ __forceinline__ acc_t y_sum(const acc_t* plane, int OX, int oy, int ox, int h) {
  acc_t s = 0;
  for (int d = 0; d <= 2 * h; ++d) s += plane[(oy + d) * OX + ox];
  return s;
}

template <typename acc_t>
__device__ __forceinline__ WindowFrame<acc_t> window_frame(const NccTile<acc_t>& P, int64_t z,
                                                           int64_t y, int64_t x, acc_t ca,
                                                           acc_t cb) {
  const int64_t m = window_inside(z, P.hz, P.Z) * window_inside(y, P.hy, P.Y) *
                    window_inside(x, P.hx, P.X);
  return WindowFrame<acc_t>{ca, cb, static_cast<acc_t>(m),
                            static_cast<acc_t>(P.n_window - m) * P.inv_n};
}

// Sum of a double over the block (256 threads), valid in thread 0.
__device__ double block_sum(double v) {
  __shared__ double warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  v = 0.0;
  if (threadIdx.x < 32) {
    v = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.0;
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

// ------------------------------------------------------------------ forward

template <typename scalar_t, int TY, int TX>
__global__ void __launch_bounds__(kThreads)
    ncc_forward_kernel(const NccTile<acc_type<scalar_t>> P, const scalar_t* __restrict__ a,
                       const scalar_t* __restrict__ b, scalar_t* __restrict__ out,
                       double* __restrict__ partial) {
  using acc_t = acc_type<scalar_t>;
  FASTWARP_DYNAMIC_SHARED(acc_t, smem);
  const ForwardLayout<TY, TX> L(P.hz, P.hy, P.hx);
  const int RY = TY + 2 * P.hy, RX = TX + 2 * P.hx, W = 2 * P.hz + 1;
  acc_t* Ra = smem + L.region;
  acc_t* Rb = Ra + RY * RX;
  acc_t* XP = smem + L.xpass;
  acc_t* ring = smem + L.ring;  // [slot][q][thread]
  const int tid = threadIdx.x, ty = tid / TX, tx = tid % TX;

  const BlockTile T = block_tile<TY, TX>(P);
  a += volume_offset(P.a, T.m, P.C);
  b += volume_offset(P.b, T.m, P.C);
  const acc_t ca = static_cast<acc_t>(a[voxel_offset(P.a, T.z0, T.y0, T.x0)]);
  const acc_t cb = static_cast<acc_t>(b[voxel_offset(P.b, T.z0, T.y0, T.x0)]);
  const int64_t y = T.y0 + ty, x = T.x0 + tx;
  const bool mine = y < P.Y && x < P.X;
  const int64_t first = T.z0 - P.hz;  // the first plane added

  for (int s = 0; s < W; ++s)
    for (int q = 0; q < kQ; ++q) ring[(s * kQ + q) * kThreads + tid] = acc_t(0);
  acc_t acc[kQ] = {0, 0, 0, 0, 0};
  double total = 0.0;

  for (int64_t zi = first; zi < T.z1 + P.hz; ++zi) {
    acc_t add[kQ] = {0, 0, 0, 0, 0};
    if (zi >= 0 && zi < P.Z) {  // the same for every thread of the block
      load_region(P, a, b, zi, T.y0 - P.hy, T.x0 - P.hx, RY, RX, ca, cb, Ra, Rb);
      __syncthreads();
      x_pass_inputs(Ra, Rb, RY, RX, TX, P.hx, XP);
      __syncthreads();
      for (int q = 0; q < kQ; ++q) add[q] = y_sum(XP + q * RY * TX, TX, ty, tx, P.hy);
    }
    const int slot = static_cast<int>((zi - first) % W);
    for (int q = 0; q < kQ; ++q) {
      acc[q] += add[q];
      ring[(slot * kQ + q) * kThreads + tid] = add[q];
    }
    if ((zi - first) % kRefresh == kRefresh - 1) {  // exact re-sum: the ring holds the window
      for (int q = 0; q < kQ; ++q) {
        acc_t s = 0;
        for (int k = 0; k < W; ++k) s += ring[(k * kQ + q) * kThreads + tid];
        acc[q] = s;
      }
    }
    const int64_t zo = zi - P.hz;
    if (zo < T.z0) continue;  // the window of zo is complete from here on
    if (mine) {
      const WindowSums<acc_t> sums{acc[0], acc[1], acc[2], acc[3], acc[4]};
      const acc_t cc = ncc_value(sums, P.inv_n, P.eps, window_frame(P, zo, y, x, ca, cb));
      if (out != nullptr) {
        out[volume_offset(P.out, T.m, P.C) + voxel_offset(P.out, zo, y, x)] = static_cast<scalar_t>(cc);
      } else {
        total += static_cast<double>(cc);
      }
    }
    const int leave = static_cast<int>((zo - P.hz - first) % W);  // plane zo - hz leaves
    if (zo - P.hz >= first)
      for (int q = 0; q < kQ; ++q) acc[q] -= ring[(leave * kQ + q) * kThreads + tid];
  }
  if (partial != nullptr) {
    total = block_sum(total);
    if (tid == 0) partial[blockIdx.x] = total;
  }
}

// ------------------------------------------------------------------ backward

// Which coefficient planes the backward keeps, by the gradients wanted (kMask: 1 for a,
// 2 for b, 3 for both): their count and the index of each (-1 when not kept).
template <int kMask>
struct Kept {
  static constexpr int NQ = kMask == 3 ? 5 : 3;
  static constexpr int i = kMask & 1 ? 0 : -1;
  static constexpr int ii = kMask == 3 ? 2 : (kMask == 1 ? 1 : -1);
  static constexpr int j = kMask == 3 ? 1 : (kMask == 2 ? 0 : -1);
  static constexpr int jj = kMask == 3 ? 3 : (kMask == 2 ? 1 : -1);
  static constexpr int ij = NQ - 1;
};

// The extended tile's five running sums: add (sign +1) or remove (-1) the 2-D window sums
// of plane z; with a ring, adding also stores them at `slot`, and removing reads them back.
template <typename scalar_t, typename acc_t, int TY, int TX, int NQ>
__device__ void extended_plane(const NccTile<acc_t>& P, const scalar_t* a, const scalar_t* b,
                               const BlockTile& T, acc_t ca, acc_t cb, acc_t* smem,
                               const BackwardLayout<TY, TX, NQ>& L, int64_t z, int sign,
                               int slot) {
  const int EY = TY + 2 * P.hy, EX = TX + 2 * P.hx, NE = EY * EX;
  acc_t* sacc = smem + L.sacc;
  acc_t* sring = smem + L.sring;  // [slot][q][column]
  if (sign < 0 && P.ring_s) {
    for (int e = threadIdx.x; e < NE; e += blockDim.x)
      for (int q = 0; q < kQ; ++q) sacc[q * NE + e] -= sring[(slot * kQ + q) * NE + e];
    return;
  }
  const bool inside = z >= 0 && z < P.Z;  // the same for every thread of the block
  const int RY = TY + 4 * P.hy, RX = TX + 4 * P.hx;
  acc_t* XP = smem + L.xpass;
  if (inside) {
    acc_t* Ra = smem + L.region;
    load_region(P, a, b, z, T.y0 - 2 * P.hy, T.x0 - 2 * P.hx, RY, RX, ca, cb, Ra, Ra + RY * RX);
    __syncthreads();
    x_pass_inputs(Ra, Ra + RY * RX, RY, RX, EX, P.hx, XP);
    __syncthreads();
  }
  for (int e = threadIdx.x; e < NE; e += blockDim.x) {
    const int ey = e / EX, ex = e % EX;
    for (int q = 0; q < kQ; ++q) {
      const acc_t v = inside ? y_sum(XP + q * RY * EX, EX, ey, ex, P.hy) : acc_t(0);
      sacc[q * NE + e] += sign > 0 ? v : -v;
      if (sign > 0 && P.ring_s) sring[(slot * kQ + q) * NE + e] = v;
    }
  }
}

template <typename scalar_t, int TY, int TX, int kMask>
__global__ void __launch_bounds__(kThreads)
    ncc_backward_kernel(const NccTile<acc_type<scalar_t>> P, const scalar_t* __restrict__ a,
                        const scalar_t* __restrict__ b, const scalar_t* __restrict__ g,
                        scalar_t* __restrict__ grad_a, scalar_t* __restrict__ grad_b) {
  using acc_t = acc_type<scalar_t>;
  using K = Kept<kMask>;
  constexpr int NQ = K::NQ;
  FASTWARP_DYNAMIC_SHARED(acc_t, smem);
  const BackwardLayout<TY, TX, NQ> L(P.hz, P.hy, P.hx, P.ring_s);
  const int EY = TY + 2 * P.hy, EX = TX + 2 * P.hx, NE = EY * EX, W = 2 * P.hz + 1;
  acc_t* sacc = smem + L.sacc;
  acc_t* sring = smem + L.sring;
  acc_t* fplane = smem + L.fplane;  // [q][EY][EX]
  acc_t* FX = smem + L.fx;          // [q][EY][TX]
  acc_t* fring = smem + L.fring;    // [slot][q][thread]
  const int tid = threadIdx.x, ty = tid / TX, tx = tid % TX;

  const BlockTile T = block_tile<TY, TX>(P);
  a += volume_offset(P.a, T.m, P.C);
  b += volume_offset(P.b, T.m, P.C);
  g += volume_offset(P.g, T.m, P.C);
  const acc_t ca = static_cast<acc_t>(a[voxel_offset(P.a, T.z0, T.y0, T.x0)]);
  const acc_t cb = static_cast<acc_t>(b[voxel_offset(P.b, T.z0, T.y0, T.x0)]);
  const int64_t y = T.y0 + ty, x = T.x0 + tx;
  const bool mine = y < P.Y && x < P.X;

  for (int e = tid; e < NE; e += kThreads) {
    for (int q = 0; q < kQ; ++q) {
      sacc[q * NE + e] = acc_t(0);
      if (P.ring_s)
        for (int s = 0; s < W; ++s) sring[(s * kQ + q) * NE + e] = acc_t(0);
    }
  }
  for (int s = 0; s < W; ++s)
    for (int q = 0; q < NQ; ++q) fring[(s * NQ + q) * kThreads + tid] = acc_t(0);
  acc_t facc[NQ];
  for (int q = 0; q < NQ; ++q) facc[q] = acc_t(0);

  const int64_t first_s = T.z0 - 2 * P.hz;  // the first input plane summed
  const int64_t first_f = T.z0 - P.hz;      // the first coefficient plane
  for (int64_t zi = first_s; zi < T.z1 + 2 * P.hz; ++zi) {
    const int s_slot = static_cast<int>((zi - first_s) % W);
    extended_plane<scalar_t>(P, a, b, T, ca, cb, smem, L, zi, +1, s_slot);
    if (P.ring_s && (zi - first_s) % kRefresh == kRefresh - 1) {
      for (int e = tid; e < NE; e += kThreads)
        for (int q = 0; q < kQ; ++q) {
          acc_t s = 0;
          for (int k = 0; k < W; ++k) s += sring[(k * kQ + q) * NE + e];
          sacc[q * NE + e] = s;
        }
    }
    const int64_t p = zi - P.hz;  // the window sums of plane p are complete from here on
    if (p < first_f) continue;

    // f(p) on the extended tile: zero outside the image
    for (int e = tid; e < NE; e += kThreads) {
      const int64_t ye = T.y0 - P.hy + e / EX, xe = T.x0 - P.hx + e % EX;
      Coefficients<acc_t> f{0, 0, 0, 0, 0};
      if (p >= 0 && p < P.Z && ye >= 0 && ye < P.Y && xe >= 0 && xe < P.X) {
        const WindowSums<acc_t> sums{sacc[e], sacc[NE + e], sacc[2 * NE + e], sacc[3 * NE + e],
                                     sacc[4 * NE + e]};
        const acc_t gp = P.g_scale * static_cast<acc_t>(g[voxel_offset(P.g, p, ye, xe)]);
        f = ncc_coefficients(sums, P.inv_n, P.eps, gp, window_frame(P, p, ye, xe, ca, cb));
      }
      if (K::i >= 0) fplane[K::i * NE + e] = f.i;
      if (K::j >= 0) fplane[K::j * NE + e] = f.j;
      if (K::ii >= 0) fplane[K::ii * NE + e] = f.ii;
      if (K::jj >= 0) fplane[K::jj * NE + e] = f.jj;
      fplane[K::ij * NE + e] = f.ij;
    }
    // plane p - hz leaves the first running sum
    extended_plane<scalar_t>(P, a, b, T, ca, cb, smem, L, zi - 2 * P.hz, -1,
                             static_cast<int>((zi - 2 * P.hz - first_s) % W));
    __syncthreads();  // fplane complete
    x_pass_planes<NQ>(fplane, EY, EX, TX, P.hx, FX);
    __syncthreads();
    const int f_slot = static_cast<int>((p - first_f) % W);
    for (int q = 0; q < NQ; ++q) {
      const acc_t v = y_sum(FX + q * EY * TX, TX, ty, tx, P.hy);
      facc[q] += v;
      fring[(f_slot * NQ + q) * kThreads + tid] = v;
    }
    if ((p - first_f) % kRefresh == kRefresh - 1) {
      for (int q = 0; q < NQ; ++q) {
        acc_t s = 0;
        for (int k = 0; k < W; ++k) s += fring[(k * NQ + q) * kThreads + tid];
        facc[q] = s;
      }
    }
    const int64_t zo = p - P.hz;  // B[f] of plane zo is complete from here on
    if (zo < T.z0) continue;
    if (mine) {
      const acc_t va = static_cast<acc_t>(a[voxel_offset(P.a, zo, y, x)]) - ca;
      const acc_t vb = static_cast<acc_t>(b[voxel_offset(P.b, zo, y, x)]) - cb;
      if (kMask & 1)
        grad_a[volume_offset(P.ga, T.m, P.C) + voxel_offset(P.ga, zo, y, x)] = static_cast<scalar_t>(
            ncc_input_grad(facc[K::i >= 0 ? K::i : 0], facc[K::ii >= 0 ? K::ii : 0], facc[K::ij], va, vb));
      if (kMask & 2)
        grad_b[volume_offset(P.gb, T.m, P.C) + voxel_offset(P.gb, zo, y, x)] = static_cast<scalar_t>(
            ncc_input_grad(facc[K::j >= 0 ? K::j : 0], facc[K::jj >= 0 ? K::jj : 0], facc[K::ij], vb, va));
    }
    const int leave = static_cast<int>((zo - P.hz - first_f) % W);  // plane zo - hz leaves
    if (zo - P.hz >= first_f)
      for (int q = 0; q < NQ; ++q) facc[q] -= fring[(leave * NQ + q) * kThreads + tid];
  }
}

// ------------------------------------------------------------------ host side

Strides strides_of(const at::Tensor& t) {
  if (t.dim() == 5) return {t.stride(0), t.stride(1), t.stride(2), t.stride(3), t.stride(4)};
  return {t.stride(0), t.stride(1), t.stride(2), 0, t.stride(3)};  // (H, 1, W)
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The tiling of a and b for a window, one chunk per volume until split_chunks; the caller
// fills the strides it needs.
template <typename acc_t>
NccTile<acc_t> make_tile(const at::Tensor& a, at::IntArrayRef window, double eps, int TY, int TX) {
  NccTile<acc_t> P{};
  const bool three_d = a.dim() == 5;
  P.Z = a.size(2);
  P.Y = three_d ? a.size(3) : 1;
  P.X = a.size(-1);
  P.hz = static_cast<int>(std::min<int64_t>(window[0] / 2, P.Z - 1));
  P.hy = three_d ? static_cast<int>(std::min<int64_t>(window[1] / 2, P.Y - 1)) : 0;
  P.hx = static_cast<int>(std::min<int64_t>(window.back() / 2, P.X - 1));
  P.n_window = 1;
  for (int64_t w : window) P.n_window *= w;
  P.inv_n = static_cast<acc_t>(1.0 / static_cast<double>(P.n_window));
  P.eps = static_cast<acc_t>(eps);
  P.g_scale = acc_t(1);
  P.C = a.size(1);
  P.tiles_y = ceil_div(P.Y, TY);
  P.tiles_x = ceil_div(P.X, TX);
  P.chunk = P.Z;
  P.chunks = 1;
  P.a = strides_of(a);
  return P;
}

// Splits each volume's z range into the chunks that minimize waves times planes per block
// (see Chunks above); `resident` is the kernel's resident blocks per multiprocessor.
template <typename acc_t>
void split_chunks(NccTile<acc_t>* P, const at::Tensor& a, int z_overlap, int resident) {
  const int64_t base = a.size(0) * a.size(1) * P->tiles_y * P->tiles_x;
  const int64_t slots = static_cast<int64_t>(resident) * cuda::multiprocessor_count();
  const int64_t most = std::max<int64_t>(1, P->Z / std::max<int64_t>(8, z_overlap));
  int64_t best = 1, best_cost = -1;
  for (int64_t c = 1; c <= most; ++c) {
    const int64_t cost = ceil_div(c * base, slots) * (ceil_div(P->Z, c) + z_overlap);
    if (best_cost < 0 || cost < best_cost) best = c, best_cost = cost;
  }
  P->chunk = ceil_div(P->Z, best);
  P->chunks = ceil_div(P->Z, P->chunk);
}

template <typename acc_t>
int64_t num_blocks(const at::Tensor& a, const NccTile<acc_t>& P) {
  return a.size(0) * a.size(1) * P.chunks * P.tiles_y * P.tiles_x;
}

// Calls f(std::integral_constant<int, TY>, std::integral_constant<int, TX>) for the tile
// shape of a's dimension.
template <typename F>
void dispatch_tile(const at::Tensor& a, const F& f) {
  if (a.dim() == 5) {
    f(std::integral_constant<int, 8>{}, std::integral_constant<int, 32>{});
  } else {
    f(std::integral_constant<int, 1>{}, std::integral_constant<int, 256>{});
  }
}

// Whether a launch with `bytes` of dynamic shared memory fits beside the kernel's
// `static_bytes` (its __shared__ arrays, which count against the same per-block limit);
// above 48 KiB the kernel opts in.
template <typename Kernel>
bool prepare_shared_memory(Kernel kernel, size_t bytes, size_t static_bytes) {
  if (bytes + static_bytes > cuda::max_shared_memory_per_block()) return false;
  if (bytes > 48 * 1024) cuda::set_max_dynamic_shared_memory(kernel, bytes);
  return true;
}

// The forward's static shared memory: block_sum's warp totals.
constexpr size_t kForwardStaticShared = kThreads / 32 * sizeof(double);

at::Tensor fallback_forward(const at::Tensor& a, const at::Tensor& b, at::IntArrayRef window, double eps);
std::tuple<at::Tensor, at::Tensor> fallback_backward(const NccUpstream& up, const at::Tensor& a,
                                                     const at::Tensor& b, at::IntArrayRef window,
                                                     double eps, std::array<bool, 2> mask);

at::Tensor ncc_forward_cuda(const at::Tensor& a, const at::Tensor& b, at::IntArrayRef window,
                            double eps, int64_t reduction) {
  check_ncc_args(a, b, window);
  const NccReduction r = to_ncc_reduction(reduction);
  if (a.numel() == 0) return ncc_of_nothing(a, r);
  [[maybe_unused]] const auto guard = cuda::device_guard(a);
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "fastwarp_ncc", [&] {
    using acc_t = acc_type<scalar_t>;
    dispatch_tile(a, [&](auto ty_tag, auto tx_tag) {
      constexpr int TY = decltype(ty_tag)::value, TX = decltype(tx_tag)::value;
      NccTile<acc_t> P = make_tile<acc_t>(a, window, eps, TY, TX);
      P.b = strides_of(b);
      const auto kernel = ncc_forward_kernel<scalar_t, TY, TX>;
      const size_t bytes = ForwardLayout<TY, TX>(P.hz, P.hy, P.hx).total * sizeof(acc_t);
      if (!prepare_shared_memory(kernel, bytes, kForwardStaticShared)) {
        result = reduce_ncc_map(fallback_forward(a, b, window, eps), r);
        return;
      }
      split_chunks(&P, a, 2 * P.hz, cuda::resident_blocks(kernel, kThreads, bytes));
      const int64_t blocks = num_blocks(a, P);
      TORCH_CHECK(blocks < (int64_t{1} << 31), "fastwarp::ncc: too many volumes for one launch");
      at::Tensor out, partial;
      if (r == NccReduction::None) {
        out = at::empty(a.sizes(), a.options());
        P.out = strides_of(out);
      } else {
        partial = at::empty({blocks}, a.options().dtype(at::kDouble));
      }
      cuda::launch(kernel, dim3(static_cast<unsigned int>(blocks)), dim3(kThreads), bytes,
                   cuda::current_stream(), P, a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
                   out.defined() ? out.mutable_data_ptr<scalar_t>() : nullptr,
                   partial.defined() ? partial.mutable_data_ptr<double>() : nullptr);
      if (r == NccReduction::None) {
        result = out;
      } else {
        const at::Tensor per_volume = partial.view({a.size(0) * a.size(1), -1}).sum(1);
        result = r == NccReduction::Batch
                     ? per_volume.div(static_cast<double>(a.numel() / (a.size(0) * a.size(1))))
                           .view({a.size(0), a.size(1)})
                     : per_volume.sum().div(static_cast<double>(a.numel()));
        result = result.to(a.scalar_type());
      }
    });
  });
  return result;
}

std::tuple<at::Tensor, at::Tensor> ncc_backward_cuda(const at::Tensor& grad_out, const at::Tensor& a,
                                                     const at::Tensor& b, at::IntArrayRef window,
                                                     double eps, int64_t reduction,
                                                     std::array<bool, 2> output_mask) {
  const NccBackward w = ncc_backward_setup(grad_out, a, b, window, reduction, output_mask);
  at::Tensor grad_a = w.grad_a, grad_b = w.grad_b;
  if (w.nothing) return {grad_a, grad_b};
  const NccUpstream& up = w.upstream;
  [[maybe_unused]] const auto guard = cuda::device_guard(a);
  const int mask = (w.want_a ? 1 : 0) | (w.want_b ? 2 : 0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "fastwarp_ncc_backward", [&] {
    using acc_t = acc_type<scalar_t>;
    dispatch_tile(a, [&](auto ty_tag, auto tx_tag) {
      constexpr int TY = decltype(ty_tag)::value, TX = decltype(tx_tag)::value;
      auto run = [&](auto mask_tag) {
        constexpr int kMask = decltype(mask_tag)::value;
        constexpr int NQ = Kept<kMask>::NQ;
        NccTile<acc_t> P = make_tile<acc_t>(a, window, eps, TY, TX);
        P.b = strides_of(b);
        P.g = strides_of(up.grad);
        P.g_scale = static_cast<acc_t>(up.scale);
        if (kMask & 1) P.ga = strides_of(grad_a);
        if (kMask & 2) P.gb = strides_of(grad_b);
        const auto kernel = ncc_backward_kernel<scalar_t, TY, TX, kMask>;
        P.ring_s = true;
        size_t bytes = BackwardLayout<TY, TX, NQ>(P.hz, P.hy, P.hx, true).total * sizeof(acc_t);
        if (bytes > cuda::max_shared_memory_per_block()) {
          P.ring_s = false;
          bytes = BackwardLayout<TY, TX, NQ>(P.hz, P.hy, P.hx, false).total * sizeof(acc_t);
        }
        if (!prepare_shared_memory(kernel, bytes, 0)) {
          std::tie(grad_a, grad_b) = fallback_backward(up, a, b, window, eps, output_mask);
          return;
        }
        split_chunks(&P, a, 4 * P.hz, cuda::resident_blocks(kernel, kThreads, bytes));
        const int64_t blocks = num_blocks(a, P);
        TORCH_CHECK(blocks < (int64_t{1} << 31), "fastwarp::ncc: too many volumes for one launch");
        cuda::launch(kernel, dim3(static_cast<unsigned int>(blocks)), dim3(kThreads), bytes,
                     cuda::current_stream(), P, a.const_data_ptr<scalar_t>(),
                     b.const_data_ptr<scalar_t>(), up.grad.const_data_ptr<scalar_t>(),
                     (kMask & 1) ? grad_a.mutable_data_ptr<scalar_t>() : nullptr,
                     (kMask & 2) ? grad_b.mutable_data_ptr<scalar_t>() : nullptr);
      };
      if (mask == 1) run(std::integral_constant<int, 1>{});
      if (mask == 2) run(std::integral_constant<int, 2>{});
      if (mask == 3) run(std::integral_constant<int, 3>{});
    });
  });
  return {grad_a, grad_b};
}

// ------------------------------------------------------------------ large-window fallback
//
// Windows whose tile does not fit in shared memory: the five sums of every voxel in
// double, by separable running sums along whole lines (csrc/common/ncc.h box_sum_line),
// one thread per element or per line. It keeps six volumes of doubles, which the tiled
// kernels exist to avoid; only windows of more than about 31 (forward) or 15 (backward)
// voxels per axis come here.

struct VolumeGeometry {
  int64_t ndim;
  int64_t size[3];
  int64_t stride[3];  // contiguous strides of one volume
  int64_t voxels;     // per volume
};

VolumeGeometry volume_geometry(const at::Tensor& t) {
  VolumeGeometry g{};
  g.ndim = t.dim() - 2;
  g.voxels = 1;
  for (int64_t k = g.ndim - 1; k >= 0; --k) {
    g.size[k] = t.size(2 + k);
    g.stride[k] = g.voxels;
    g.voxels *= g.size[k];
  }
  return g;
}

// First element of line `l` along axis k (lines enumerate (volume, other axes) in order).
FASTWARP_HD int64_t line_start(const VolumeGeometry& g, int k, int64_t l) {
  int64_t start = 0;
  for (int j = static_cast<int>(g.ndim) - 1; j >= 0; --j) {
    if (j == k) continue;
    start += (l % g.size[j]) * g.stride[j];
    l /= g.size[j];
  }
  return start + l * g.voxels;
}

// Element offset, in a strided (N, C, *size) tensor, of contiguous index i of the batch.
FASTWARP_HD int64_t strided_offset(const VolumeGeometry& g, const Strides& s, int64_t C, int64_t i) {
  int64_t off = 0;
  const int64_t* st[3] = {&s.z, &s.y, &s.x};
  for (int j = static_cast<int>(g.ndim) - 1; j >= 0; --j) {
    off += (i % g.size[j]) * (g.ndim == 3 ? *st[j] : (j == 0 ? s.z : s.x));
    i /= g.size[j];
  }
  return off + (i % C) * s.c + (i / C) * s.n;
}

template <typename F>
__global__ void __launch_bounds__(kThreads) elementwise_kernel(int64_t n, F f) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < n) f(i);
}

template <typename F>
void parallel_for(int64_t n, const F& f) {
  if (n == 0) return;
  cuda::launch(elementwise_kernel<F>, static_cast<unsigned int>(ceil_div(n, kThreads)), kThreads, 0,
               cuda::current_stream(), n, f);
}

// Box-sums `count` volumes in slots[0..count) in place, axis by axis, rotating through
// `spare`.
void box_sum_volumes(double** slots, int count, double*& spare, const VolumeGeometry& g,
                     int64_t volumes, at::IntArrayRef window) {
  for (int q = 0; q < count; ++q) {
    for (int k = 0; k < static_cast<int>(g.ndim); ++k) {
      const int64_t len = g.size[k], stride = g.stride[k], half = window[k] / 2;
      const double* src = slots[q];
      double* dst = spare;
      parallel_for(volumes * g.voxels / len, [=] FASTWARP_LAMBDA(int64_t l) {
        const int64_t start = line_start(g, k, l);
        box_sum_line(src + start, dst + start, len, stride, half);
      });
      std::swap(slots[q], spare);
    }
  }
}

template <typename scalar_t>
at::Tensor window_sums(const at::Tensor& a, const at::Tensor& b, at::IntArrayRef window,
                       double** slots, double*& spare) {
  const VolumeGeometry g = volume_geometry(a);
  const int64_t total = a.numel(), C = a.size(1);
  at::Tensor buffers = at::empty({6, total}, a.options().dtype(at::kDouble));
  double* base = buffers.mutable_data_ptr<double>();
  for (int q = 0; q < 5; ++q) slots[q] = base + q * total;
  spare = base + 5 * total;
  const Strides sa = strides_of(a), sb = strides_of(b);
  const scalar_t* pa = a.const_data_ptr<scalar_t>();
  const scalar_t* pb = b.const_data_ptr<scalar_t>();
  double *si = slots[0], *sj = slots[1], *sii = slots[2], *sjj = slots[3], *sij = slots[4];
  parallel_for(total, [=] FASTWARP_LAMBDA(int64_t i) {
    const double x = static_cast<double>(pa[strided_offset(g, sa, C, i)]);
    const double y = static_cast<double>(pb[strided_offset(g, sb, C, i)]);
    si[i] = x;
    sj[i] = y;
    sii[i] = x * x;
    sjj[i] = y * y;
    sij[i] = x * y;
  });
  box_sum_volumes(slots, 5, spare, g, total / g.voxels, window);
  return buffers;
}

at::Tensor fallback_forward(const at::Tensor& a, const at::Tensor& b, at::IntArrayRef window, double eps) {
  at::Tensor out = at::empty(a.sizes(), a.options());
  const double inv_n = inverse_window_size(window);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "fastwarp_ncc_fallback", [&] {
    double* slots[5];
    double* spare;
    const at::Tensor buffers = window_sums<scalar_t>(a, b, window, slots, spare);
    const double *si = slots[0], *sj = slots[1], *sii = slots[2], *sjj = slots[3], *sij = slots[4];
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    parallel_for(a.numel(), [=] FASTWARP_LAMBDA(int64_t i) {
      po[i] = static_cast<scalar_t>(ncc_value(NccSums{si[i], sj[i], sii[i], sjj[i], sij[i]}, inv_n, eps));
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> fallback_backward(const NccUpstream& up, const at::Tensor& a,
                                                     const at::Tensor& b, at::IntArrayRef window,
                                                     double eps, std::array<bool, 2> mask) {
  at::Tensor grad_a, grad_b;
  std::tie(grad_a, grad_b) = ncc_backward_outputs(a, b, window, mask);
  const bool want_a = mask[0], want_b = mask[1];
  const double inv_n = inverse_window_size(window), g_scale = up.scale;
  const VolumeGeometry g = volume_geometry(a);
  const Strides sg = strides_of(up.grad), sa = strides_of(a), sb = strides_of(b);
  const int64_t total = a.numel(), C = a.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "fastwarp_ncc_fallback_backward", [&] {
    double* slots[5];
    double* spare;
    const at::Tensor buffers = window_sums<scalar_t>(a, b, window, slots, spare);
    const scalar_t* pg = up.grad.const_data_ptr<scalar_t>();
    double *s0 = slots[0], *s1 = slots[1], *s2 = slots[2], *s3 = slots[3], *s4 = slots[4];
    parallel_for(total, [=] FASTWARP_LAMBDA(int64_t i) {  // the sums become the coefficients
      const double gi = g_scale * static_cast<double>(pg[strided_offset(g, sg, C, i)]);
      const NccCoefficients f = ncc_coefficients(NccSums{s0[i], s1[i], s2[i], s3[i], s4[i]}, inv_n, eps, gi);
      s0[i] = f.i;
      s1[i] = f.j;
      s2[i] = f.ii;
      s3[i] = f.jj;
      s4[i] = f.ij;
    });
    double* needed[5];
    int count = 0;
    if (want_a) needed[count++] = slots[0];
    if (want_b) needed[count++] = slots[1];
    if (want_a) needed[count++] = slots[2];
    if (want_b) needed[count++] = slots[3];
    needed[count++] = slots[4];
    double* spare_ptr = spare;
    box_sum_volumes(needed, count, spare_ptr, g, total / g.voxels, window);
    int q = 0;
    const double* b_i = want_a ? needed[q++] : nullptr;
    const double* b_j = want_b ? needed[q++] : nullptr;
    const double* b_ii = want_a ? needed[q++] : nullptr;
    const double* b_jj = want_b ? needed[q++] : nullptr;
    const double* b_ij = needed[q++];
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    scalar_t* ga = want_a ? grad_a.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gb = want_b ? grad_b.mutable_data_ptr<scalar_t>() : nullptr;
    parallel_for(total, [=] FASTWARP_LAMBDA(int64_t i) {
      const double x = static_cast<double>(pa[strided_offset(g, sa, C, i)]);
      const double y = static_cast<double>(pb[strided_offset(g, sb, C, i)]);
      if (ga != nullptr) ga[i] = static_cast<scalar_t>(ncc_input_grad(b_i[i], b_ii[i], b_ij[i], x, y));
      if (gb != nullptr) gb[i] = static_cast<scalar_t>(ncc_input_grad(b_j[i], b_jj[i], b_ij[i], y, x));
    });
  });
  return {grad_a, grad_b};
}

}  // namespace

FASTWARP_CUDA_LIBRARY_IMPL(m) {
  m.impl("ncc", &ncc_forward_cuda);
  m.impl("ncc_backward", &ncc_backward_cuda);
}

}  // namespace fastwarp
