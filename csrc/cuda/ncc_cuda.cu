// CUDA kernels of fastwarp::ncc: one streaming kernel that box-sums quantities of its
// source arrays over the window and hands each voxel's sums to an epilogue (Note [Tiled NCC
// on the GPU]). The forward is one launch of it; the backward two (the coefficient maps,
// then their box sums turned into the gradients). The algebra is csrc/common/ncc.h.
// Windows wider than the lanes' reach take the elementwise fallback at the end of this file.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../common/ncc_host.h"
#include "runtime.h"

namespace fastwarp {
namespace {

// Note [Tiled NCC on the GPU]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~
// A volume is seen as (Z, Y, X): 3-D (D, H, W); 2-D (1, H, W). One kernel, `box_kernel`,
// box-sums kQ quantities of kIn source arrays over the window at every voxel, and gives each
// voxel's kQ sums to an epilogue:
//   * forward: sources a, b; quantities a', b', a'^2, b'^2, a'b' of values shifted by the
//     block's references (Note [Shifted window sums]); epilogue: cc, written or added to the
//     block's total for the "mean" and "batch" reductions;
//   * backward, pass 1: the same sums; epilogue: the coefficients f_X(p) (Note [Windowed
//     NCC]), written unshifted as 3 (one gradient) or 5 (both) scratch maps;
//   * backward, pass 2: sources the maps, summed as they are; epilogue: the gradients.
// The maps are the only scratch: 3 (or 5) of the inputs' size, for the backward's duration.
// A block owns a region of 16 rows (y) by 128 positions (x) of a chunk of consecutive
// planes (z), and writes the voxels whose window lies in the region: the middle 120
// positions and the middle 16 - 2 h_y rows. 512 threads, 16 warps; warp w owns region row w,
// each lane 4 consecutive positions of it (a row of 128 floats is one 512-byte line: one
// 16-byte vector load per lane and source where the layout allows, scalar loads otherwise).
// For each output plane z:
//   1. x and z, in registers. Each thread keeps, for its 4 region columns, the kQ sums over
//      x (the window's 2 h_x + 1 positions) and over z (its 2 h_z + 1 planes). Moving from
//      plane z - 1 to z adds the x sums of plane z + h_z and subtracts those of plane
//      z - h_z - 1, each recomputed from the sources (the leaving plane is read again, from
//      the L2: nothing is kept of it). A lane's x window reaches its neighbours' 4 points
//      (h_x <= 4), which the warp passes through a staging row in shared memory (one
//      16-byte store and two 16-byte loads per lane; 8 shuffles would cost two thirds of
//      that on the GPU, but synchronize the warp 16 times per row, which the emulated launch
//      pays in fiber switches); lanes 0 and 31 only lend theirs. Every 64 planes the sums
//      restart from the window's planes, so that rounding cannot drift along a long chunk.
//   2. y, through shared memory: the region's x-z sums (kQ x 16 x 128 doubles, 80 KiB for
//      kQ = 5) are stored, and one thread per position (the first 128) slides down the
//      column's 16 rows, adding the row that enters the y window and subtracting the one
//      that leaves, and hands each output row's sums to the epilogue, while the other warps
//      go on to the next plane's x sums. Positions are swizzled in 16-byte pairs (swizzle())
//      so that both the lanes' 2 x 16-byte stores and the column threads' 8-byte loads are
//      free of bank conflicts.
// So the sources are read from DRAM once (the halos and the leaving planes again from the
// L2), shared memory carries the lanes' halos and the y exchange (3.1 wavefronts per voxel
// counted at 160x192x224 and a window of 9, against 7.3 in the direct tiled sums this
// replaced; 4.7 at 128^3, whose 128 columns take a second x tile for 8 of them), and no ring
// of planes is kept. The registers (the 4 x kQ double sums per thread) cap a block at 512
// threads and 128 registers: one block per multiprocessor, 25% occupancy.
//
// Chunks: a volume's z range is split into c chunks, each of which first sums the 2 h_z
// planes before its first output plane: splitting costs those planes again, and not
// splitting leaves multiprocessors idle. With B blocks per chunk-less volume set (tiles times
// volumes) and R blocks resident on the whole GPU at once (the occupancy API times the
// multiprocessors), the launch takes about ceil(c B / R) waves of blocks that each march
// ceil(Z / c) + overlap planes; c minimizes that product (no chunk shorter than max(8,
// overlap) planes).
//
// Arithmetic: float64 sums for every input dtype (Note [Shifted window sums] in ncc.h says
// why float32 is not enough); the sources are read in their dtype (float for half and
// bfloat16) and widened once per point. The backward's scratch maps are float32 (float64 for
// float64 inputs), each coefficient rounded once and box-summed in float64 again. The
// gradient B[f_I](q) + 2 I(q) B[f_II](q) + J(q) B[f_IJ](q) is a difference of terms |I| / |I -
// mean| times larger than itself, which multiplies the maps' rounding: 2e-5 of the largest
// gradient on a +-1000 step with noise 1 (tests/test_ncc.py holds 1e-3), 4e-7 on CT-like
// data. That needs the flat windows exact (Note [Shifted window sums]): with ~1e-9 of
// rounding in a flat window's cross, float32 maps were off by 100 times the gradient. The
// maps are unshifted, so the two passes may tile differently.
//
// Reach: h_x <= 4 (x windows up to 9) and h_y <= 7 (y windows up to 15); any z window.
// Larger windows take the elementwise fallback at the end of this file.

constexpr int kThreads = 512;  // see the Note: registers, not shared memory, set this
constexpr int kWarps = kThreads / 32;
constexpr int kRegionRows = 16;
constexpr int kRowsPerWarp = kRegionRows / kWarps;
constexpr int kPoints = 4;                    // consecutive positions per lane
constexpr int kSpan = 32 * kPoints;           // positions of a region row
constexpr int kHalo = kPoints;                // positions [0, 4) and [124, 128) only lend
constexpr int kTileX = kSpan - 2 * kHalo;     // output positions per region row
constexpr int kMaxHx = kHalo;
constexpr int kMaxHy = (kRegionRows - 2) / 2;  // at least 2 output rows per region
constexpr int kRefresh = 64;                  // planes between restarts of the running sums

// What the sources are read as: float, or double for double.
template <typename T>
using load_t = typename std::conditional<std::is_same<T, double>::value, double, float>::type;

// The scratch maps' dtype: float, or double for double (see "Arithmetic" above).
template <typename T>
using map_t = load_t<T>;

// Strides of a (N, C, Z, Y, X) view of an input, output or gradient.
struct Strides {
  int64_t n, c, z, y, x;
};

// A source array: its base, its strides, and whether a lane may read its 4 points with one
// vector load (unit x stride, every other stride and the base aligned to 4 elements).
template <typename T>
struct Source {
  const T* p;
  Strides s;
  bool vec;
};

template <typename T>
struct alignas(sizeof(T) * kPoints) Points {
  T v[kPoints];
};

struct alignas(16) Pair {
  double v[2];
};

// An aligned access of 8, 16 or 32 bytes as the GPU makes it: one vector instruction per 16
// bytes (nvcc emits ld/st .v2/.v4 for these aligned structs). The host compiler of the
// emulated launch would split the struct into scalar accesses, which the counting build
// would count as that many requests, so there the bytes go through 16-byte vector types.
template <typename V>
__device__ __forceinline__ V load_aligned(const V* p) {
#if defined(FASTWARP_CUDA_EMU)
  static_assert(sizeof(V) == 8 || sizeof(V) == 16 || sizeof(V) == 32, "8, 16 or 32 bytes");
  V out;
  if constexpr (sizeof(V) == 8) {
    const uint64_t w = *reinterpret_cast<const uint64_t*>(p);
    memcpy(&out, &w, sizeof w);
  } else {
    typedef long long chunk __attribute__((vector_size(16)));
    for (size_t c = 0; c < sizeof(V) / 16; ++c) {
      const chunk w = reinterpret_cast<const chunk*>(p)[c];
      memcpy(reinterpret_cast<char*>(&out) + 16 * c, &w, sizeof w);
    }
  }
  return out;
#else
  return *p;
#endif
}

template <typename V>
__device__ __forceinline__ void store_aligned(V* p, const V& v) {
#if defined(FASTWARP_CUDA_EMU)
  static_assert(sizeof(V) == 8 || sizeof(V) == 16 || sizeof(V) == 32, "8, 16 or 32 bytes");
  if constexpr (sizeof(V) == 8) {
    uint64_t w;
    memcpy(&w, &v, sizeof w);
    *reinterpret_cast<uint64_t*>(p) = w;
  } else {
    typedef long long chunk __attribute__((vector_size(16)));
    for (size_t c = 0; c < sizeof(V) / 16; ++c) {
      chunk w;
      memcpy(&w, reinterpret_cast<const char*>(&v) + 16 * c, sizeof w);
      reinterpret_cast<chunk*>(p)[c] = w;
    }
  }
#else
  *p = v;
#endif
}

struct NccGrid {
  int64_t Z, Y, X;
  int hz, hy, hx;   // window halves, clamped to the extent - 1 (the same sums)
  int ty;           // output rows per region: kRegionRows - 2 hy
  int64_t n_window;  // the nominal window's voxel count n
  double inv_n, eps, g_scale;
  int64_t C;                    // channels: volume m is (m / C, m % C)
  int64_t tiles_y, tiles_x, chunks, chunk;
};

struct BlockTile {
  int64_t m, z0, z1, y0, x0;  // volume; output planes [z0, z1); first output row and x
};

__device__ __forceinline__ BlockTile block_tile(const NccGrid& G) {
  int64_t r = blockIdx.x;
  BlockTile t;
  t.x0 = (r % G.tiles_x) * kTileX;
  r /= G.tiles_x;
  t.y0 = (r % G.tiles_y) * G.ty;
  r /= G.tiles_y;
  t.z0 = (r % G.chunks) * G.chunk;
  t.m = r / G.chunks;
  t.z1 = t.z0 + G.chunk < G.Z ? t.z0 + G.chunk : G.Z;
  return t;
}

FASTWARP_HD int64_t volume_offset(const Strides& s, int64_t m, int64_t C) {
  return (m / C) * s.n + (m % C) * s.c;
}

FASTWARP_HD int64_t voxel_offset(const Strides& s, int64_t z, int64_t y, int64_t x) {
  return z * s.z + y * s.y + x * s.x;
}

// The physical index of position p in a region row of the y exchange: 16-byte pairs of
// positions swizzled so that 16 consecutive pairs, and every other one of 64, fill the 8
// pair slots of the 32 banks evenly.
__device__ __forceinline__ int swizzle(int p) {
  const int pair = p >> 1;
  return 2 * (pair ^ ((pair >> 3) & 1)) + (p & 1);
}

// ------------------------------------------------------------------ quantities

// The forward's and the backward's first pass: a', b', a'^2, b'^2, a'b'.
struct Moments {
  static constexpr int kIn = 2, kQ = 5;
  static constexpr bool kSeparable = false;  // a quantity needs both sources
  static FASTWARP_HD void add(const double (&v)[kIn], double (&s)[kQ]) {
    s[0] += v[0];
    s[1] += v[1];
    s[2] = fma(v[0], v[0], s[2]);
    s[3] = fma(v[1], v[1], s[3]);
    s[4] = fma(v[0], v[1], s[4]);
  }
};

// The backward's second pass: the NQ coefficient maps as they are.
template <int NQ>
struct Identity {
  static constexpr int kIn = NQ, kQ = NQ;
  static constexpr bool kSeparable = true;  // quantity q is source q alone
  static FASTWARP_HD void add(const double (&v)[kIn], double (&s)[kQ]) {
FASTWARP_UNROLL
    for (int q = 0; q < NQ; ++q) s[q] += v[q];
  }
};

// ------------------------------------------------------------------ the x pass

// Staging rows per warp: one per source, or one for all when they are summed one at a time.
template <class Q>
constexpr int staged() {
  return Q::kSeparable ? 1 : Q::kIn;
}

// The lane's window of positions: its left neighbour's 4 points, its own, its right one's.
template <class Q, typename L>
struct LaneWindow {
  L w[Q::kIn][3 * kPoints];
};

// acc[k] += sign * (the x sums of the lane's point k) = sign * (P(k + 4 + HX + 1) -
// P(k + 4 - HX)), with P(j) the sum of the quantities of window positions [0, j): one running
// sum over the 12 positions, each point's quantities computed once and consumed at once
// (which keeps the registers to the sums and the accumulators).
template <int HX, class Q, typename L>
__device__ __forceinline__ void add_row_sums(const LaneWindow<Q, L>& W, const double (&shift)[Q::kIn],
                                             double sign, double (&acc)[kPoints][Q::kQ]) {
  double P[Q::kQ];
FASTWARP_UNROLL
  for (int q = 0; q < Q::kQ; ++q) P[q] = 0.0;
FASTWARP_UNROLL
  for (int j = kPoints - HX; j <= 2 * kPoints - 1 + HX; ++j) {
    const int k_leave = j - (kPoints - HX);  // output k whose window starts at j
    if (k_leave < kPoints) {
FASTWARP_UNROLL
      for (int q = 0; q < Q::kQ; ++q) acc[k_leave][q] = fma(-sign, P[q], acc[k_leave][q]);
    }
    double v[Q::kIn];
FASTWARP_UNROLL
    for (int i = 0; i < Q::kIn; ++i) v[i] = static_cast<double>(W.w[i][j]) - shift[i];
    Q::add(v, P);
    const int k_enter = j - (kPoints + HX);  // output k whose window ends at j
    if (k_enter >= 0) {
FASTWARP_UNROLL
      for (int q = 0; q < Q::kQ; ++q) acc[k_enter][q] = fma(sign, P[q], acc[k_enter][q]);
    }
  }
}

// The separable case: acc[k][q] += sign * (the x sums of source q alone), one source at a
// time, so that only one source's window is in registers (add_row_sums holds them all).
template <int HX, int NQ, typename L>
__device__ __forceinline__ void add_line_sums(const L (&w)[3 * kPoints], int q, double sign,
                                              double (&acc)[kPoints][NQ]) {
  double P = 0.0;
FASTWARP_UNROLL
  for (int j = kPoints - HX; j <= 2 * kPoints - 1 + HX; ++j) {
    const int k_leave = j - (kPoints - HX);
    if (k_leave < kPoints) acc[k_leave][q] = fma(-sign, P, acc[k_leave][q]);
    P += static_cast<double>(w[j]);
    const int k_enter = j - (kPoints + HX);
    if (k_enter >= 0) acc[k_enter][q] = fma(sign, P, acc[k_enter][q]);
  }
}

// The lane's 4 points of one row of a source (`base`: the row's offset; `x`: the image x of
// the first point); points outside the image read `fill`.
template <typename T>
__device__ __forceinline__ void load_points(const Source<T>& src, int64_t base, int64_t x, int64_t X,
                                            load_t<T> fill, load_t<T> (&v)[kPoints]) {
  if (src.vec && x >= 0 && x + kPoints <= X) {
    const Points<T> q = load_aligned(reinterpret_cast<const Points<T>*>(src.p + base + x));
FASTWARP_UNROLL
    for (int k = 0; k < kPoints; ++k) v[k] = static_cast<load_t<T>>(q.v[k]);
    return;
  }
FASTWARP_UNROLL
  for (int k = 0; k < kPoints; ++k) {
    const int64_t xk = x + k;
    v[k] = xk >= 0 && xk < X ? static_cast<load_t<T>>(src.p[base + xk * src.s.x]) : fill;
  }
}

// f(std::integral_constant<int, HX>{}) for the x half-window `hx` (0 .. kMaxHx): the x sums
// are unrolled for each.
template <class F>
__device__ __forceinline__ void with_hx(int hx, F&& f) {
  static_assert(kMaxHx == 4, "with_hx: one case per x half-window");
  switch (hx) {
    case 0: f(std::integral_constant<int, 0>{}); break;
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, 4>{}); break;
  }
}

// The lane lends its points to its neighbours: one 16-byte store to its warp's staging row.
template <typename L>
__device__ __forceinline__ void lend(L* row, int lane, const Points<L>& mine) {
  store_aligned(reinterpret_cast<Points<L>*>(row + kPoints * lane), mine);
}

// ... and, after a __syncwarp, borrows its neighbours' (`left`, `right`: their offsets in the
// row) around its own: w = [left's 4 points, its own (already there), right's 4].
template <typename L>
__device__ __forceinline__ void borrow(const L* row, int left, int right, L (&w)[3 * kPoints]) {
  const Points<L> l = load_aligned(reinterpret_cast<const Points<L>*>(row + left));
  const Points<L> r = load_aligned(reinterpret_cast<const Points<L>*>(row + right));
FASTWARP_UNROLL
  for (int k = 0; k < kPoints; ++k) {
    w[k] = l.v[k];
    w[2 * kPoints + k] = r.v[k];
  }
}

// acc += sign * the x sums of plane z over the warp's region rows. Rows and planes outside
// the image add nothing (zero padding); both are the same for the whole warp. The lanes
// lend their points to their neighbours through the warp's staging rows in shared memory
// (`staging`: staged<Q>() rows of kSpan values): one 16-byte store and two 16-byte loads per
// lane and source, which cost 1.5 times the 8 shuffles they replace on the GPU but
// synchronize the warp twice per row instead of 16 times (the emulated launch's cost). A
// point outside the image reads the shift: its shifted value is exactly 0.
template <class Q, typename T>
__device__ void add_plane(const NccGrid& G, const BlockTile& t, const Source<T> (&src)[Q::kIn],
                          const int64_t (&vol)[Q::kIn], const double (&shift)[Q::kIn], int64_t z,
                          double sign, load_t<T>* staging, double (&acc)[kRowsPerWarp][kPoints][Q::kQ]) {
  using L = load_t<T>;
  if (z < 0 || z >= G.Z) return;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int64_t x = t.x0 - kHalo + kPoints * lane;
  const int left = kPoints * (lane > 0 ? lane - 1 : 0), right = kPoints * (lane < 31 ? lane + 1 : 31);
FASTWARP_UNROLL
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t y = t.y0 - G.hy + warp + kWarps * r;
    if (y < 0 || y >= G.Y) continue;
    if constexpr (Q::kSeparable) {  // one source at a time, through one staging row
FASTWARP_UNROLL
      for (int i = 0; i < Q::kIn; ++i) {
        L w[3 * kPoints];
        Points<L> mine;
        __syncwarp();  // the warp's reads of the previous source are done
        load_points(src[i], vol[i] + z * src[i].s.z + y * src[i].s.y, x, G.X, static_cast<L>(shift[i]), mine.v);
        lend(staging, lane, mine);
FASTWARP_UNROLL
        for (int k = 0; k < kPoints; ++k) w[kPoints + k] = mine.v[k];
        __syncwarp();
        borrow(staging, left, right, w);
        with_hx(G.hx, [&](auto hx) { add_line_sums<decltype(hx)::value>(w, i, sign, acc[r]); });
      }
    } else {  // all sources at once, a staging row each
      LaneWindow<Q, L> W;
      __syncwarp();  // the warp's reads of the previous row are done
FASTWARP_UNROLL
      for (int i = 0; i < Q::kIn; ++i) {
        Points<L> mine;
        load_points(src[i], vol[i] + z * src[i].s.z + y * src[i].s.y, x, G.X, static_cast<L>(shift[i]), mine.v);
        lend(staging + i * kSpan, lane, mine);
FASTWARP_UNROLL
        for (int k = 0; k < kPoints; ++k) W.w[i][kPoints + k] = mine.v[k];
      }
      __syncwarp();
FASTWARP_UNROLL
      for (int i = 0; i < Q::kIn; ++i) borrow(staging + i * kSpan, left, right, W.w[i]);
      with_hx(G.hx, [&](auto hx) { add_row_sums<decltype(hx)::value>(W, shift, sign, acc[r]); });
    }
  }
}

// ------------------------------------------------------------------ the march

// Runs Note [Tiled NCC on the GPU] for one block: `out(s, z, y, x)` gets the kQ window sums
// of each output voxel of the tile, in order of z, then of y, by the first kSpan threads.
// Shared memory: the exchange, then the warps' staging rows (march_bytes()).
template <class Q, typename T, class Out>
__device__ void march(const NccGrid& G, const BlockTile& t, const Source<T> (&src)[Q::kIn],
                      const int64_t (&vol)[Q::kIn], const double (&shift)[Q::kIn], Out& out) {
  FASTWARP_DYNAMIC_SHARED(double, exchange);  // [q][region row][swizzled position]
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  load_t<T>* staging = reinterpret_cast<load_t<T>*>(exchange + Q::kQ * kRegionRows * kSpan) + warp * staged<Q>() * kSpan;
  double acc[kRowsPerWarp][kPoints][Q::kQ];
  for (int64_t z = t.z0; z < t.z1; ++z) {
    if (z == t.z0 || (z - t.z0) % kRefresh == 0) {  // (re)start from the window's planes
FASTWARP_UNROLL
      for (int r = 0; r < kRowsPerWarp; ++r)
FASTWARP_UNROLL
        for (int k = 0; k < kPoints; ++k)
FASTWARP_UNROLL
          for (int q = 0; q < Q::kQ; ++q) acc[r][k][q] = 0.0;
      for (int64_t zi = z - G.hz; zi <= z + G.hz; ++zi) add_plane<Q>(G, t, src, vol, shift, zi, 1.0, staging, acc);
    } else {
      add_plane<Q>(G, t, src, vol, shift, z + G.hz, 1.0, staging, acc);
      add_plane<Q>(G, t, src, vol, shift, z - G.hz - 1, -1.0, staging, acc);
    }
    __syncthreads();  // the previous plane's y pass is done with the exchange
    if (lane > 0 && lane < 31) {  // lanes 0 and 31 hold only halo positions
FASTWARP_UNROLL
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const int row = warp + kWarps * r;
FASTWARP_UNROLL
        for (int q = 0; q < Q::kQ; ++q) {
          double* line = exchange + (q * kRegionRows + row) * kSpan;
FASTWARP_UNROLL
          for (int h = 0; h < kPoints / 2; ++h) {
            const Pair pair{{acc[r][2 * h][q], acc[r][2 * h + 1][q]}};
            store_aligned(reinterpret_cast<Pair*>(line + swizzle(kPoints * lane + 2 * h)), pair);
          }
        }
      }
    }
    __syncthreads();
    const int p = tid;  // the y pass: one thread per output position
    const int64_t x = t.x0 - kHalo + p;
    if (p < kHalo || p >= kSpan - kHalo || x >= G.X) continue;
    const int at = swizzle(p);
    double s[Q::kQ];
FASTWARP_UNROLL
    for (int q = 0; q < Q::kQ; ++q) {
      s[q] = 0.0;
      for (int r = 0; r <= 2 * G.hy; ++r) s[q] += exchange[(q * kRegionRows + r) * kSpan + at];
    }
    for (int o = 0; o < G.ty && t.y0 + o < G.Y; ++o) {
      if (o > 0) {
FASTWARP_UNROLL
        for (int q = 0; q < Q::kQ; ++q)
          s[q] += exchange[(q * kRegionRows + o + 2 * G.hy) * kSpan + at] -
                  exchange[(q * kRegionRows + o - 1) * kSpan + at];
      }
      out(s, z, t.y0 + o, x);
    }
  }
}

__device__ __forceinline__ WindowFrame<double> window_frame(const NccGrid& G, int64_t z, int64_t y, int64_t x,
                                                            double ca, double cb) {
  const int64_t m = window_inside(z, G.hz, G.Z) * window_inside(y, G.hy, G.Y) * window_inside(x, G.hx, G.X);
  return WindowFrame<double>{ca, cb, static_cast<double>(m), static_cast<double>(G.n_window - m) * G.inv_n,
                             static_cast<double>(G.n_window)};
}

// Sum of a double over the block (kThreads threads), valid in thread 0.
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

// A reference value of few bits near v: v in float with all but the top 8 significant bits
// cleared (bfloat16's). Shifting by it keeps the shifted values as short as the inputs (CT's
// air at -1024 shifted by 53.25 is -1077.25, not -1077.2871...), so that the window sums'
// products stay exact where the inputs are (Note [Shifted window sums]).
FASTWARP_HD double coarse(double v) {
  float f = static_cast<float>(v);
  uint32_t bits;
  memcpy(&bits, &f, sizeof bits);
  bits &= 0xffff0000u;
  memcpy(&f, &bits, sizeof bits);
  return static_cast<double>(f);
}

// The block's references: its first output voxel's values, coarsened.
template <typename T>
__device__ __forceinline__ void references(const NccGrid& G, const BlockTile& t, const Source<T> (&src)[2],
                                           const int64_t (&vol)[2], double (&shift)[2]) {
  for (int i = 0; i < 2; ++i)
    shift[i] = coarse(static_cast<double>(src[i].p[vol[i] + voxel_offset(src[i].s, t.z0, t.y0, t.x0)]));
}

// ------------------------------------------------------------------ forward

template <typename scalar_t>
struct ForwardOut {
  const NccGrid& G;
  double ca, cb;
  scalar_t* out;  // null: add to total
  Strides so;
  int64_t out_volume;
  double total;
  __device__ __forceinline__ void operator()(const double (&s)[5], int64_t z, int64_t y, int64_t x) {
    const WindowSums<double> sums{s[0], s[1], s[2], s[3], s[4]};
    const double cc = ncc_value(sums, G.inv_n, G.eps, window_frame(G, z, y, x, ca, cb));
    if (out != nullptr) {
      out[out_volume + voxel_offset(so, z, y, x)] = static_cast<scalar_t>(cc);
    } else {
      total += cc;
    }
  }
};

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    ncc_forward_kernel(const NccGrid G, const Source<scalar_t> a, const Source<scalar_t> b,
                       scalar_t* __restrict__ out, const Strides so, double* __restrict__ partial) {
  const BlockTile t = block_tile(G);
  const Source<scalar_t> src[2] = {a, b};
  const int64_t vol[2] = {volume_offset(a.s, t.m, G.C), volume_offset(b.s, t.m, G.C)};
  double shift[2];
  references(G, t, src, vol, shift);
  ForwardOut<scalar_t> o{G, shift[0], shift[1], out, so, out != nullptr ? volume_offset(so, t.m, G.C) : 0, 0.0};
  march<Moments>(G, t, src, vol, shift, o);
  if (partial != nullptr) {
    const double total = block_sum(o.total);
    if (threadIdx.x == 0) partial[blockIdx.x] = total;
  }
}

// ------------------------------------------------------------------ backward

// Which coefficient maps the backward keeps, by the gradients wanted (kMask: 1 for a, 2 for
// b, 3 for both): their count and the index of each (-1 when not kept).
template <int kMask>
struct Kept {
  static constexpr int NQ = kMask == 3 ? 5 : 3;
  static constexpr int i = kMask & 1 ? 0 : -1;
  static constexpr int ii = kMask == 3 ? 2 : (kMask == 1 ? 1 : -1);
  static constexpr int j = kMask == 3 ? 1 : (kMask == 2 ? 0 : -1);
  static constexpr int jj = kMask == 3 ? 3 : (kMask == 2 ? 1 : -1);
  static constexpr int ij = NQ - 1;
};

// Pass 1: the coefficients f_X(p) = g(p) d(cc)/d(s_X), unshifted (Note [Shifted window
// sums]: the gradient at q is B[f_I](q) + 2 I(q) B[f_II](q) + J(q) B[f_IJ](q) with
// f_I = f'_I - 2 c_I f_II - c_J f_IJ, where f'_I is the coefficient of the shifted sum).
template <typename scalar_t, int kMask>
struct CoefficientsOut {
  using K = Kept<kMask>;
  const NccGrid& G;
  double ca, cb;
  const scalar_t* g;
  Strides sg;
  int64_t g_volume, map_volume, map_stride;  // map k of voxel v: maps[k * map_stride + v]
  map_t<scalar_t>* maps;
  __device__ __forceinline__ void operator()(const double (&s)[5], int64_t z, int64_t y, int64_t x) {
    const WindowSums<double> sums{s[0], s[1], s[2], s[3], s[4]};
    const double gp = G.g_scale * static_cast<double>(g[g_volume + voxel_offset(sg, z, y, x)]);
    const Coefficients<double> f = ncc_coefficients(sums, G.inv_n, G.eps, gp, window_frame(G, z, y, x, ca, cb));
    map_t<scalar_t>* at = maps + map_volume + (z * G.Y + y) * G.X + x;
    if (K::i >= 0) at[K::i * map_stride] = static_cast<map_t<scalar_t>>(f.i - 2.0 * ca * f.ii - cb * f.ij);
    if (K::j >= 0) at[K::j * map_stride] = static_cast<map_t<scalar_t>>(f.j - 2.0 * cb * f.jj - ca * f.ij);
    if (K::ii >= 0) at[K::ii * map_stride] = static_cast<map_t<scalar_t>>(f.ii);
    if (K::jj >= 0) at[K::jj * map_stride] = static_cast<map_t<scalar_t>>(f.jj);
    at[K::ij * map_stride] = static_cast<map_t<scalar_t>>(f.ij);
  }
};

template <typename scalar_t, int kMask>
__global__ void __launch_bounds__(kThreads)
    ncc_coefficients_kernel(const NccGrid G, const Source<scalar_t> a, const Source<scalar_t> b,
                            const scalar_t* __restrict__ g, const Strides sg, map_t<scalar_t>* __restrict__ maps,
                            int64_t map_stride) {
  const BlockTile t = block_tile(G);
  const Source<scalar_t> src[2] = {a, b};
  const int64_t vol[2] = {volume_offset(a.s, t.m, G.C), volume_offset(b.s, t.m, G.C)};
  double shift[2];
  references(G, t, src, vol, shift);
  CoefficientsOut<scalar_t, kMask> o{G, shift[0], shift[1], g, sg, volume_offset(sg, t.m, G.C),
                                     t.m * G.Z * G.Y * G.X, map_stride, maps};
  march<Moments>(G, t, src, vol, shift, o);
}

// Pass 2: the box-summed maps and the inputs at q give the gradients (Note [Windowed NCC]).
template <typename scalar_t, int kMask>
struct GradientOut {
  using K = Kept<kMask>;
  static constexpr int NQ = K::NQ;
  const NccGrid& G;
  const scalar_t* a;
  const scalar_t* b;
  Strides sa, sb, sga, sgb;
  int64_t va, vb, vga, vgb;  // volume offsets
  scalar_t* grad_a;
  scalar_t* grad_b;
  __device__ __forceinline__ void operator()(const double (&s)[NQ], int64_t z, int64_t y, int64_t x) {
    const double ia = static_cast<double>(a[va + voxel_offset(sa, z, y, x)]);
    const double ib = static_cast<double>(b[vb + voxel_offset(sb, z, y, x)]);
    if (kMask & 1)
      grad_a[vga + voxel_offset(sga, z, y, x)] =
          static_cast<scalar_t>(ncc_input_grad(s[K::i >= 0 ? K::i : 0], s[K::ii >= 0 ? K::ii : 0], s[K::ij], ia, ib));
    if (kMask & 2)
      grad_b[vgb + voxel_offset(sgb, z, y, x)] =
          static_cast<scalar_t>(ncc_input_grad(s[K::j >= 0 ? K::j : 0], s[K::jj >= 0 ? K::jj : 0], s[K::ij], ib, ia));
  }
};

template <typename scalar_t, int kMask>
__global__ void __launch_bounds__(kThreads)
    ncc_gradient_kernel(const NccGrid G, const Source<map_t<scalar_t>> maps, int64_t map_stride,
                        const scalar_t* __restrict__ a, const Strides sa, const scalar_t* __restrict__ b,
                        const Strides sb, scalar_t* __restrict__ grad_a, const Strides sga,
                        scalar_t* __restrict__ grad_b, const Strides sgb) {
  using K = Kept<kMask>;
  constexpr int NQ = K::NQ;
  const BlockTile t = block_tile(G);
  Source<map_t<scalar_t>> src[NQ];
  int64_t vol[NQ];
  double shift[NQ];
FASTWARP_UNROLL
  for (int q = 0; q < NQ; ++q) {
    src[q] = maps;
    src[q].p = maps.p + q * map_stride;
    vol[q] = volume_offset(maps.s, t.m, G.C);
    shift[q] = 0.0;
  }
  GradientOut<scalar_t, kMask> o{G, a, b, sa, sb, sga, sgb,
                                 volume_offset(sa, t.m, G.C), volume_offset(sb, t.m, G.C),
                                 (kMask & 1) ? volume_offset(sga, t.m, G.C) : 0,
                                 (kMask & 2) ? volume_offset(sgb, t.m, G.C) : 0, grad_a, grad_b};
  march<Identity<NQ>>(G, t, src, vol, shift, o);
}

// ------------------------------------------------------------------ host side

// (N, C, Z, Y, X) strides: 2-D inputs are (N, C, 1, H, W).
Strides strides_of(const at::Tensor& t) {
  if (t.dim() == 5) return {t.stride(0), t.stride(1), t.stride(2), t.stride(3), t.stride(4)};
  return {t.stride(0), t.stride(1), 0, t.stride(2), t.stride(3)};
}

template <typename T>
Source<T> source_of(const at::Tensor& t) {
  const Strides s = strides_of(t);
  const bool aligned = reinterpret_cast<uintptr_t>(t.const_data_ptr()) % sizeof(Points<T>) == 0;
  const bool vec = aligned && s.x == 1 && s.y % kPoints == 0 && s.z % kPoints == 0 && s.c % kPoints == 0 &&
                   s.n % kPoints == 0;
  return Source<T>{t.const_data_ptr<T>(), s, vec};
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The grid of a and b for a window, one chunk per volume until split_chunks.
NccGrid make_grid(const at::Tensor& a, at::IntArrayRef window, double eps) {
  NccGrid G{};
  const bool three_d = a.dim() == 5;
  G.Z = three_d ? a.size(2) : 1;
  G.Y = a.size(-2);
  G.X = a.size(-1);
  G.hz = three_d ? static_cast<int>(std::min<int64_t>(window[0] / 2, G.Z - 1)) : 0;
  G.hy = static_cast<int>(std::min<int64_t>(window[window.size() - 2] / 2, G.Y - 1));
  G.hx = static_cast<int>(std::min<int64_t>(window.back() / 2, G.X - 1));
  G.ty = kRegionRows - 2 * G.hy;
  G.n_window = 1;
  for (int64_t w : window) G.n_window *= w;
  G.inv_n = 1.0 / static_cast<double>(G.n_window);
  G.eps = eps;
  G.g_scale = 1.0;
  G.C = a.size(1);
  G.tiles_y = ceil_div(G.Y, std::max(1, G.ty));
  G.tiles_x = ceil_div(G.X, kTileX);
  G.chunk = G.Z;
  G.chunks = 1;
  return G;
}

// Whether the streaming kernel reaches the window (else: the elementwise fallback).
bool tiled(const NccGrid& G) { return G.hx <= kMaxHx && G.hy <= kMaxHy; }

// Splits each volume's z range into the chunks that minimize waves times planes per block
// (see Chunks above); `resident` is the kernel's resident blocks per multiprocessor.
void split_chunks(NccGrid* G, const at::Tensor& a, int z_overlap, int resident) {
  const int64_t base = a.size(0) * a.size(1) * G->tiles_y * G->tiles_x;
  const int64_t slots = static_cast<int64_t>(resident) * cuda::multiprocessor_count();
  const int64_t most = std::max<int64_t>(1, G->Z / std::max<int64_t>(8, z_overlap));
  int64_t best = 1, best_cost = -1;
  for (int64_t c = 1; c <= most; ++c) {
    const int64_t cost = ceil_div(c * base, slots) * (ceil_div(G->Z, c) + z_overlap);
    if (best_cost < 0 || cost < best_cost) best = c, best_cost = cost;
  }
  G->chunk = ceil_div(G->Z, best);
  G->chunks = ceil_div(G->Z, G->chunk);
}

int64_t num_blocks(const at::Tensor& a, const NccGrid& G) {
  const int64_t blocks = a.size(0) * a.size(1) * G.chunks * G.tiles_y * G.tiles_x;
  TORCH_CHECK(blocks < (int64_t{1} << 31), "fastwarp::ncc: too many volumes for one launch");
  return blocks;
}

// The dynamic shared memory of a march: the y exchange of its kQ quantities, then the warps'
// staging rows (staged<Q>() each).
template <class Q, typename T>
constexpr size_t march_bytes() {
  return sizeof(double) * Q::kQ * kRegionRows * kSpan + sizeof(load_t<T>) * kWarps * staged<Q>() * kSpan;
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

// The march kernels' registers per thread, for the emulated occupancy (the GPU's API knows
// them): __launch_bounds__(kThreads) allows 65536 / kThreads, and ptxas's report has each
// above half that (tests/test_emu_count.py holds it), so one block per multiprocessor.
constexpr int kMarchRegisters = 65536 / kThreads;

// The forward's static shared memory: block_sum's warp totals.
constexpr size_t kForwardStaticShared = kThreads / 32 * sizeof(double);

// Runs the march's launch: the chunks for its occupancy, the grid, the kernel.
template <typename Kernel, typename... Args>
int64_t launch_march(Kernel kernel, NccGrid& G, const at::Tensor& a, size_t bytes, Args&&... args) {
  split_chunks(&G, a, 2 * G.hz, cuda::resident_blocks(kernel, kThreads, bytes, kMarchRegisters));
  const int64_t blocks = num_blocks(a, G);
  cuda::launch(kernel, dim3(static_cast<unsigned int>(blocks)), dim3(kThreads), bytes, cuda::current_stream(),
               G, std::forward<Args>(args)...);
  return blocks;
}

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
    NccGrid G = make_grid(a, window, eps);
    const auto kernel = ncc_forward_kernel<scalar_t>;
    const size_t bytes = march_bytes<Moments, scalar_t>();
    if (!tiled(G) || !prepare_shared_memory(kernel, bytes, kForwardStaticShared)) {
      result = reduce_ncc_map(fallback_forward(a, b, window, eps), r);
      return;
    }
    // the grid (and so the partial sums' count) depends on the chunks
    split_chunks(&G, a, 2 * G.hz, cuda::resident_blocks(kernel, kThreads, bytes, kMarchRegisters));
    const int64_t blocks = num_blocks(a, G);
    at::Tensor out, partial;
    Strides so{};
    if (r == NccReduction::None) {
      out = at::empty(a.sizes(), a.options());
      so = strides_of(out);
    } else {
      partial = at::empty({blocks}, a.options().dtype(at::kDouble));
    }
    cuda::launch(kernel, dim3(static_cast<unsigned int>(blocks)), dim3(kThreads), bytes, cuda::current_stream(), G,
                 source_of<scalar_t>(a), source_of<scalar_t>(b),
                 out.defined() ? out.mutable_data_ptr<scalar_t>() : nullptr, so,
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
    auto run = [&](auto mask_tag) {
      constexpr int kMask = decltype(mask_tag)::value;
      constexpr int NQ = Kept<kMask>::NQ;
      using map_type = map_t<scalar_t>;
      NccGrid G = make_grid(a, window, eps);
      G.g_scale = up.scale;
      const auto coefficients = ncc_coefficients_kernel<scalar_t, kMask>;
      const auto gradient = ncc_gradient_kernel<scalar_t, kMask>;
      const size_t bytes1 = march_bytes<Moments, scalar_t>(), bytes2 = march_bytes<Identity<NQ>, map_type>();
      if (!tiled(G) || !prepare_shared_memory(coefficients, bytes1, 0) ||
          !prepare_shared_memory(gradient, bytes2, 0)) {
        std::tie(grad_a, grad_b) = fallback_backward(up, a, b, window, eps, output_mask);
        return;
      }
      // the coefficient maps, (NQ, N, C, *spatial) contiguous
      const int64_t numel = a.numel();
      at::Tensor maps = at::empty({NQ * numel}, a.options().dtype(c10::CppTypeToScalarType<map_type>::value));
      NccGrid G1 = G;
      launch_march(coefficients, G1, a, bytes1, source_of<scalar_t>(a), source_of<scalar_t>(b),
                   up.grad.const_data_ptr<scalar_t>(), strides_of(up.grad), maps.mutable_data_ptr<map_type>(),
                   numel);
      const int64_t Z = G.Z, Y = G.Y, X = G.X, C = a.size(1);
      const Strides sm{C * Z * Y * X, Z * Y * X, Y * X, X, 1};
      const bool aligned = X % kPoints == 0 && numel % kPoints == 0;
      const Source<map_type> ms{maps.const_data_ptr<map_type>(), sm, aligned};
      launch_march(gradient, G, a, bytes2, ms, numel, a.const_data_ptr<scalar_t>(), strides_of(a),
                   b.const_data_ptr<scalar_t>(), strides_of(b),
                   (kMask & 1) ? grad_a.mutable_data_ptr<scalar_t>() : nullptr,
                   (kMask & 1) ? strides_of(grad_a) : Strides{},
                   (kMask & 2) ? grad_b.mutable_data_ptr<scalar_t>() : nullptr,
                   (kMask & 2) ? strides_of(grad_b) : Strides{});
    };
    if (mask == 1) run(std::integral_constant<int, 1>{});
    if (mask == 2) run(std::integral_constant<int, 2>{});
    if (mask == 3) run(std::integral_constant<int, 3>{});
  });
  return {grad_a, grad_b};
}

// ------------------------------------------------------------------ large-window fallback
//
// Windows beyond the streaming kernel's reach (x wider than 9, y wider than 15): the five
// sums of every voxel in double, by separable running sums along whole lines
// (csrc/common/ncc.h box_sum_line), one thread per element or per line. It keeps six volumes
// of doubles, which the streaming kernel exists to avoid.

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
    off += (i % g.size[j]) * (g.ndim == 3 ? *st[j] : (j == 0 ? s.y : s.x));
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
