// The kernels of Note [Vectorized CPU sampling], written once over a lane type V (Avx2 or
// Avx512, csrc/cpu/sample_simd.h). No include guard: csrc/cpu/warp_cpu.cpp includes this file
// once per instruction set, inside `#pragma GCC target(...)` and a namespace of its own
// (FASTWARP_SIMD_NAMESPACE), so that every function here is compiled for that target and
// the lane operations inline into it. It includes nothing itself: a standard-library or
// torch function first defined under the pragma would be compiled for the target and could
// be picked by the linker for scalar callers too.

namespace fastwarp {
namespace simd {
namespace FASTWARP_SIMD_NAMESPACE {

// One axis of W points: the lane form of AxisSample (clamped neighbours, weights, the
// derivative of the source index, and which neighbours are inside).
template <typename V>
struct AxisLanes {
  typename V::I lower;   // floor of the source index (unclamped)
  typename V::I i0, i1;
  typename V::F w0, w1, dxdv;
  typename V::M in0, in1, valid;
};

// The coordinate map and padding of compute_point, for the lanes of one axis: the source
// index x and d(x)/d(v).
template <typename V, bool kDisp, Padding kPad, int NDIM>
FASTWARP_LANES_INLINE void source_lanes(const SampleParams<NDIM>& P, int k, typename V::F v,
                                        typename V::F position, typename V::F* x_out,
                                        typename V::F* dxdv_out) {
  using F = typename V::F;
  F x, dxdv;
  if (kDisp) {
    x = V::add(v, position);
    dxdv = V::set1(1.f);
  } else {  // unnormalize: ATen's operations in ATen's order (/ 2 and * 0.5 round alike)
    const F one = V::set1(1.f), half = V::set1(0.5f);
    if (P.align_corners) {
      x = V::mul(V::mul(V::add(v, one), half), V::set1(static_cast<float>(P.in_size[k] - 1)));
    } else {
      x = V::mul(V::sub(V::mul(V::add(v, one), V::set1(static_cast<float>(P.in_size[k]))), one), half);
    }
    dxdv = V::set1(P.scale_f[k]);
  }
  if (kPad == Padding::Border) {  // clip_coordinates_set_grad
    const F hi = V::set1(static_cast<float>(P.in_size[k] - 1));
    const typename V::M low = V::le(x, V::zero()), high = V::ge(x, hi);
    x = V::select(low, V::zero(), V::select(high, hi, x));
    dxdv = V::select(V::or_(low, high), V::zero(), dxdv);
  }
  *x_out = x;
  *dxdv_out = dxdv;
}

// axis_sample's linear branch, for the lanes of one axis.
template <typename V, bool kDisp, Padding kPad, int NDIM>
FASTWARP_LANES_INLINE AxisLanes<V> axis_lanes(const SampleParams<NDIM>& P, int k,
                                             typename V::F v, typename V::F position) {
  using F = typename V::F;
  F x, dxdv;
  source_lanes<V, kDisp, kPad, NDIM>(P, k, v, position, &x, &dxdv);
  AxisLanes<V> a;
  a.valid = V::and_(V::gt(x, V::set1(-2.f)), V::lt(x, V::set1(P.limit_f[k])));
  const F fl = V::floor(V::select(a.valid, x, V::zero()));
  const F t = V::sub(x, fl);
  a.w0 = V::select(a.valid, V::sub(V::set1(1.f), t), V::zero());
  a.w1 = V::select(a.valid, t, V::zero());
  const int size = static_cast<int>(P.in_size[k]);
  const typename V::I lo = V::to_int(fl), hi = V::addi(lo, V::set1i(1));
  a.in0 = V::and_(V::in_range(lo, size), a.valid);
  a.in1 = V::and_(V::in_range(hi, size), a.valid);
  a.lower = lo;
  a.i0 = V::clampi(lo, 0, size - 1);
  a.i1 = V::clampi(hi, 0, size - 1);
  a.dxdv = dxdv;
  return a;
}

// make_corners in lanes: element offsets (for `stride`), weights and inside masks, corner
// order as in sampling.h. A lane with any axis invalid has no corner inside.
template <typename V, int NDIM>
struct CornerLanes {
  static constexpr int K = 1 << NDIM;
  typename V::I off[K];
  typename V::F w[K];
  typename V::M in[K];
};

template <typename V, int NDIM>
FASTWARP_LANES_INLINE void corner_lanes(const AxisLanes<V> (&ax)[NDIM], typename V::M live,
                                       const int64_t (&stride)[NDIM], CornerLanes<V, NDIM>* cs) {
  typename V::M any = live;
  for (int k = 0; k < NDIM; ++k) any = V::and_(any, ax[k].valid);
  cs->off[0] = V::set1i(0);
  cs->w[0] = V::set1(1.f);
  cs->in[0] = any;
  for (int k = 0; k < NDIM; ++k) {
    const typename V::I o0 = V::muli(ax[k].i0, static_cast<int>(stride[k]));
    const typename V::I o1 = V::muli(ax[k].i1, static_cast<int>(stride[k]));
    for (int j = (1 << k) - 1; j >= 0; --j) {
      const typename V::I o = cs->off[j];
      const typename V::F w = cs->w[j];
      const typename V::M in = cs->in[j];
      cs->off[2 * j] = V::addi(o, o0);
      cs->w[2 * j] = V::mul(w, ax[k].w0);
      cs->in[2 * j] = V::and_(in, ax[k].in0);
      cs->off[2 * j + 1] = V::addi(o, o1);
      cs->w[2 * j + 1] = V::mul(w, ax[k].w1);
      cs->in[2 * j + 1] = V::and_(in, ax[k].in1);
    }
  }
}

// The corner values of one channel: masked gathers, or along a contiguous last axis of at
// least two voxels, one pair gather per corner pair (Note [Vectorized CPU sampling]).
template <typename V, int NDIM>
FASTWARP_LANES_INLINE void gather_corners(const float* img, const CornerLanes<V, NDIM>& cs,
                                          const AxisLanes<V>& last, int size, bool pairs,
                                          typename V::F (&v)[1 << NDIM]) {
  constexpr int K = 1 << NDIM;
  if (!pairs) {
    for (int b = 0; b < K; ++b) v[b] = V::gather(img, cs.off[b], cs.in[b]);
    return;
  }
  // pair start: lower clamped into [0, size - 2]; corner 2r is at lower clamped to [0, size-1]
  const typename V::I shift =
      V::addi(V::clampi(last.lower, 0, size - 2), V::muli(last.i0, -1));
  const typename V::M at_end = V::eqi(last.lower, size - 1), before = V::eqi(last.lower, -1);
  for (int r = 0; r < K / 2; ++r) {
    typename V::F first, second;
    V::gather_pairs(img, V::addi(cs.off[2 * r], shift), &first, &second);
    v[2 * r] = V::select(cs.in[2 * r], V::select(at_end, second, first), V::zero());
    v[2 * r + 1] = V::select(cs.in[2 * r + 1], V::select(before, first, second), V::zero());
  }
}

// weights_without_axis in lanes.
template <typename V, int NDIM>
FASTWARP_LANES_INLINE void weights_without_axis_lanes(const AxisLanes<V> (&ax)[NDIM], int k,
                                                     typename V::F (&w)[(1 << NDIM) / 2]) {
  w[0] = V::set1(1.f);
  int m = 1;
  for (int j = 0; j < NDIM; ++j) {
    if (j == k) continue;
    for (int i = m - 1; i >= 0; --i) {
      const typename V::F wi = w[i];
      w[2 * i] = V::mul(wi, ax[j].w0);
      w[2 * i + 1] = V::mul(wi, ax[j].w1);
    }
    m *= 2;
  }
}

template <typename V, int K>
FASTWARP_LANES_INLINE typename V::F tree_sum_lanes(typename V::F (&t)[K]) {
  for (int width = K / 2; width >= 1; width /= 2)
    for (int j = 0; j < width; ++j) t[j] = V::add(t[j], t[j + width]);
  return t[0];
}

template <typename V, int NDIM>
FASTWARP_LANES_INLINE typename V::F axis_derivative_lanes(const typename V::F (&wk)[(1 << NDIM) / 2],
                                                         const typename V::F (&v)[1 << NDIM], int k) {
  typename V::F terms[(1 << NDIM) / 2];
  for (int r = 0; r < (1 << NDIM) / 2; ++r)
    terms[r] = V::mul(wk[r], V::sub(v[insert_axis_bit<NDIM>(r, k, 1)], v[insert_axis_bit<NDIM>(r, k, 0)]));
  return tree_sum_lanes<V, (1 << NDIM) / 2>(terms);
}

// Where the row at pos (coordinate batch nd) starts: the images it serves [n0, n1) (all of
// them for a shared field, image_batch_range), and its offsets into the output (or grad_out)
// and the coordinate gradient.
struct RowStart {
  int64_t n0, n1, out, gcoord;
};

template <int NDIM>
FASTWARP_LANES_INLINE RowStart row_start(const SampleParams<NDIM>& P, int64_t nd, const int64_t (&pos)[NDIM]) {
  RowStart r{nd, nd + 1, 0, nd * P.gcoord_stride_n};
  if (P.coord_batch == 1) r.n0 = 0, r.n1 = P.N;
  for (int k = 0; k < NDIM - 1; ++k) {
    r.out += pos[k] * P.out_stride[k];
    r.gcoord += pos[k] * P.gcoord_stride[k];
  }
  return r;
}

// Affine sampling (Note [Affine sampling]): the source indices y = L (p + u(p)) + t of the
// lanes, in compute_point's order of operations; coords is null without a field.
template <typename V, int NDIM>
FASTWARP_LANES_INLINE void affine_source_lanes(const SampleParams<NDIM>& P, const float* coords,
                                              int64_t nd, int64_t base, const int64_t (&pos)[NDIM],
                                              int64_t w, typename V::M live,
                                              typename V::F (&y)[NDIM]) {
  constexpr int L = NDIM - 1;
  const float* A = static_cast<const float*>(P.affine) + nd * P.affine_stride_n;
  typename V::F q[NDIM];
  for (int j = 0; j < NDIM; ++j) {
    q[j] = j == L ? V::add(V::set1(static_cast<float>(w)), V::iota()) : V::set1(static_cast<float>(pos[j]));
    if (coords != nullptr) q[j] = V::add(q[j], V::load(coords + base + P.coord_axis_offset[j], P.coord_stride[L], live));
  }
  for (int k = 0; k < NDIM; ++k) {
    y[k] = V::set1(A[k * (NDIM + 1) + NDIM]);
    for (int j = 0; j < NDIM; ++j) y[k] = V::add(y[k], V::mul(V::set1(A[k * (NDIM + 1) + j]), q[j]));
  }
}

// The lanes of points [w, w + count) of a row: pos holds the row's other axes.
template <typename V, bool kDisp, Padding kPad, int NDIM>
FASTWARP_LANES_INLINE void point_lanes(const SampleParams<NDIM>& P, const float* coords, int64_t nd,
                                      const int64_t (&pos)[NDIM], int64_t w,
                                      typename V::M live, AxisLanes<V> (&ax)[NDIM]) {
  constexpr int L = NDIM - 1;
  int64_t base = nd * P.coord_stride_n + w * P.coord_stride[L];
  for (int k = 0; k < L; ++k) base += pos[k] * P.coord_stride[k];
  if (P.affine != nullptr) {  // the source index itself, taken as a displacement from 0
    typename V::F y[NDIM];
    affine_source_lanes<V, NDIM>(P, coords, nd, base, pos, w, live, y);
    for (int k = 0; k < NDIM; ++k) ax[k] = axis_lanes<V, true, kPad, NDIM>(P, k, y[k], V::zero());
    return;
  }
  for (int k = 0; k < NDIM; ++k) {
    const typename V::F v = V::load(coords + base + P.coord_axis_offset[k], P.coord_stride[L], live);
    const typename V::F position =
        k == L ? V::add(V::set1(static_cast<float>(w)), V::iota()) : V::set1(static_cast<float>(pos[k]));
    ax[k] = axis_lanes<V, kDisp, kPad, NDIM>(P, k, v, position);
  }
}

// forward_point for points [0, out_size[last]) of the row at pos (pos[last] unused).
template <typename V, bool kDisp, Padding kPad, int NDIM>
FASTWARP_LANES_INLINE void forward_row(const SampleParams<NDIM>& P, const float* image,
                                      const float* coords, float* out, float* jac, int64_t nd,
                                      const int64_t (&pos)[NDIM]) {
  constexpr int K = 1 << NDIM, L = NDIM - 1;
  const int64_t width = P.out_size[L];
  const RowStart row = row_start(P, nd, pos);
  const int64_t n0 = row.n0, n1 = row.n1, row_out = row.out;
  const int size_l = static_cast<int>(P.in_size[L]);
  const bool pairs = P.img_stride[L] == 1 && size_l >= 2;
  for (int64_t w = 0; w < width; w += V::W) {
    const typename V::M live = V::first(static_cast<int>(width - w < V::W ? width - w : V::W));
    AxisLanes<V> ax[NDIM];
    point_lanes<V, kDisp, kPad, NDIM>(P, coords, nd, pos, w, live, ax);
    CornerLanes<V, NDIM> cs;
    corner_lanes<V, NDIM>(ax, live, P.img_stride, &cs);
    typename V::F wk[NDIM][K / 2];
    if (jac != nullptr)
      for (int k = 0; k < NDIM; ++k) weights_without_axis_lanes<V, NDIM>(ax, k, wk[k]);
    const int64_t out_sp = row_out + w * P.out_stride[L];
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t c = 0; c < P.C; ++c) {
        const float* img_c = image + n * P.img_stride_n + c * P.img_stride_c;
        typename V::F v[K], terms[K];
        gather_corners<V, NDIM>(img_c, cs, ax[L], size_l, pairs, v);
        for (int b = 0; b < K; ++b) terms[b] = V::mul(cs.w[b], v[b]);
        V::store(out + n * P.out_stride_n + c * P.out_stride_c + out_sp, tree_sum_lanes<V, K>(terms), live);
        if (jac != nullptr) {
          float* j = jac + n * P.jac_stride_n + c * P.jac_stride_c + out_sp;
          for (int k = 0; k < NDIM; ++k)
            V::store(j + k * P.jac_stride_k, V::mul(ax[k].dxdv, axis_derivative_lanes<V, NDIM>(wk[k], v, k)), live);
        }
      }
    }
  }
}

// backward_point for the points of a row: the coordinate gradient in lanes, the image
// gradient scattered lane by lane (PlainAdd into the thread's buffer).
template <typename V, bool kDisp, Padding kPad, int NDIM>
FASTWARP_LANES_INLINE void backward_row(const SampleParams<NDIM>& P, const float* grad_out,
                                       const float* image, const float* coords, float* grad_image,
                                       float* grad_coords, int64_t nd, const int64_t (&pos)[NDIM]) {
  constexpr int K = 1 << NDIM, L = NDIM - 1;
  const int64_t width = P.out_size[L];
  const RowStart row = row_start(P, nd, pos);
  const int64_t n0 = row.n0, n1 = row.n1, row_out = row.out, row_gc = row.gcoord;
  const bool want_coord = grad_coords != nullptr;
  const int size_l = static_cast<int>(P.in_size[L]);
  const bool pairs = P.img_stride[L] == 1 && size_l >= 2;
  for (int64_t w = 0; w < width; w += V::W) {
    const int count = static_cast<int>(width - w < V::W ? width - w : V::W);
    const typename V::M live = V::first(count);
    AxisLanes<V> ax[NDIM];
    point_lanes<V, kDisp, kPad, NDIM>(P, coords, nd, pos, w, live, ax);
    CornerLanes<V, NDIM> cs, gs;
    if (want_coord) corner_lanes<V, NDIM>(ax, live, P.img_stride, &cs);
    if (grad_image != nullptr) corner_lanes<V, NDIM>(ax, live, P.gimg_stride, &gs);
    typename V::F wk[NDIM][K / 2], gx[NDIM];
    if (want_coord) {
      for (int k = 0; k < NDIM; ++k) {
        weights_without_axis_lanes<V, NDIM>(ax, k, wk[k]);
        gx[k] = V::zero();
      }
    }
    alignas(64) float gw[K][V::W];
    alignas(64) int32_t goff[K][V::W];
    unsigned gin[K] = {};
    if (grad_image != nullptr) {
      for (int b = 0; b < K; ++b) {
        V::to_array(gs.w[b], gw[b]);
        V::to_array(gs.off[b], goff[b]);
        gin[b] = V::bits(gs.in[b]);
      }
    }
    const int64_t go_sp = row_out + w * P.out_stride[L];
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t c = 0; c < P.C; ++c) {
        const typename V::F g =
            V::load(grad_out + n * P.out_stride_n + c * P.out_stride_c + go_sp, P.out_stride[L], live);
        if (grad_image != nullptr) {
          alignas(64) float gl[V::W];
          V::to_array(g, gl);
          float* gi = grad_image + n * P.gimg_stride_n + c * P.gimg_stride_c;
          for (int j = 0; j < count; ++j)
            for (int b = 0; b < K; ++b)
              if (gin[b] >> j & 1u) gi[goff[b][j]] += gw[b][j] * gl[j];
        }
        if (want_coord) {
          const float* img_c = image + n * P.img_stride_n + c * P.img_stride_c;
          typename V::F v[K];
          gather_corners<V, NDIM>(img_c, cs, ax[L], size_l, pairs, v);
          for (int k = 0; k < NDIM; ++k)
            gx[k] = V::add(gx[k], V::mul(g, axis_derivative_lanes<V, NDIM>(wk[k], v, k)));
        }
      }
    }
    if (want_coord) {
      typename V::M any = live;  // a point that touches no voxel gets 0, as in backward_point
      for (int k = 0; k < NDIM; ++k) any = V::and_(any, ax[k].valid);
      float* dst = grad_coords + row_gc + w * P.gcoord_stride[L];
      for (int k = 0; k < NDIM; ++k) {
        const typename V::F value = V::select(any, V::mul(gx[k], ax[k].dxdv), V::zero());
        if (P.gcoord_stride[L] == 1) {
          V::store(dst + P.gcoord_axis_offset[k], value, live);
        } else {
          alignas(64) float lanes[V::W];
          V::to_array(value, lanes);
          for (int j = 0; j < count; ++j) dst[P.gcoord_axis_offset[k] + j * P.gcoord_stride[L]] = lanes[j];
        }
      }
    }
  }
}

// Nearest interpolation: axis_sample's nearest branch and make_corners' single corner, in
// lanes. Returns the lanes whose voxel is inside (live, every axis valid, every index in
// range); index[k] is the voxel's index along axis k, clamped (safe to form offsets from).
template <typename V, bool kDisp, Padding kPad, int NDIM>
FASTWARP_LANES_INLINE typename V::M nearest_lanes(const SampleParams<NDIM>& P, const float* coords,
                                                 int64_t nd, const int64_t (&pos)[NDIM], int64_t w,
                                                 typename V::M live, typename V::I (&index)[NDIM]) {
  constexpr int L = NDIM - 1;
  int64_t base = nd * P.coord_stride_n + w * P.coord_stride[L];
  for (int k = 0; k < L; ++k) base += pos[k] * P.coord_stride[k];
  typename V::M inside = live;
  typename V::F y[NDIM];
  if (P.affine != nullptr) affine_source_lanes<V, NDIM>(P, coords, nd, base, pos, w, live, y);
  for (int k = 0; k < NDIM; ++k) {
    typename V::F x, dxdv;
    if (P.affine != nullptr) {  // as point_lanes
      source_lanes<V, true, kPad, NDIM>(P, k, y[k], V::zero(), &x, &dxdv);
    } else {
      const typename V::F v = V::load(coords + base + P.coord_axis_offset[k], P.coord_stride[L], live);
      const typename V::F position =
          k == L ? V::add(V::set1(static_cast<float>(w)), V::iota()) : V::set1(static_cast<float>(pos[k]));
      source_lanes<V, kDisp, kPad, NDIM>(P, k, v, position, &x, &dxdv);
    }
    const typename V::M valid = V::and_(V::gt(x, V::set1(-2.f)), V::lt(x, V::set1(P.limit_f[k])));
    const int size = static_cast<int>(P.in_size[k]);
    const typename V::I r = V::to_int(V::round_even(V::select(valid, x, V::zero())));
    inside = V::and_(inside, V::and_(valid, V::in_range(r, size)));
    index[k] = V::clampi(r, 0, size - 1);
  }
  return inside;
}

template <typename V, int NDIM>
FASTWARP_LANES_INLINE typename V::I offset_lanes(const typename V::I (&index)[NDIM],
                                                const int64_t (&stride)[NDIM]) {
  typename V::I off = V::set1i(0);
  for (int k = 0; k < NDIM; ++k) off = V::addi(off, V::muli(index[k], static_cast<int>(stride[k])));
  return off;
}

// forward_point's nearest branch for the points of a row: a copy of the voxel's bits, or 0.
// elem_t is float for every 32-bit element (float32, int32 labels: one masked gather), or
// the unsigned integer of the element's size (a lane-by-lane copy).
template <typename V, bool kDisp, Padding kPad, int NDIM, typename elem_t>
FASTWARP_LANES_INLINE void nearest_forward_row(const SampleParams<NDIM>& P, const elem_t* image,
                                              const float* coords, elem_t* out, int64_t nd,
                                              const int64_t (&pos)[NDIM]) {
  constexpr int L = NDIM - 1;
  const int64_t width = P.out_size[L];
  const RowStart row = row_start(P, nd, pos);
  const int64_t n0 = row.n0, n1 = row.n1, row_out = row.out;
  for (int64_t w = 0; w < width; w += V::W) {
    const int count = static_cast<int>(width - w < V::W ? width - w : V::W);
    const typename V::M live = V::first(count);
    typename V::I index[NDIM];
    const typename V::M inside = nearest_lanes<V, kDisp, kPad, NDIM>(P, coords, nd, pos, w, live, index);
    const typename V::I off = offset_lanes<V, NDIM>(index, P.img_stride);
    const int64_t out_sp = row_out + w * P.out_stride[L];
    alignas(64) int32_t lane_off[V::W];
    unsigned lane_in = 0;
    if constexpr (!std::is_same<elem_t, float>::value) {
      V::to_array(off, lane_off);
      lane_in = V::bits(inside);
    }
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t c = 0; c < P.C; ++c) {
        const elem_t* img_c = image + n * P.img_stride_n + c * P.img_stride_c;
        elem_t* dst = out + n * P.out_stride_n + c * P.out_stride_c + out_sp;
        if constexpr (std::is_same<elem_t, float>::value) {
          V::store(dst, V::gather(img_c, off, inside), live);
        } else {
          for (int j = 0; j < count; ++j) dst[j] = (lane_in >> j & 1u) ? img_c[lane_off[j]] : elem_t(0);
        }
      }
    }
  }
}

// backward_point's nearest branch for the points of a row: each point's upstream value added
// to its voxel, lane by lane in the scalar code's order; the coordinate gradient is 0.
template <typename V, bool kDisp, Padding kPad, int NDIM>
FASTWARP_LANES_INLINE void nearest_backward_row(const SampleParams<NDIM>& P, const float* grad_out,
                                               const float* coords, float* grad_image,
                                               float* grad_coords, int64_t nd, const int64_t (&pos)[NDIM]) {
  constexpr int L = NDIM - 1;
  const int64_t width = P.out_size[L];
  const RowStart row = row_start(P, nd, pos);
  const int64_t n0 = row.n0, n1 = row.n1, row_out = row.out, row_gc = row.gcoord;
  for (int64_t w = 0; w < width; w += V::W) {
    const int count = static_cast<int>(width - w < V::W ? width - w : V::W);
    const typename V::M live = V::first(count);
    if (grad_image != nullptr) {
      typename V::I index[NDIM];
      const typename V::M inside = nearest_lanes<V, kDisp, kPad, NDIM>(P, coords, nd, pos, w, live, index);
      alignas(64) int32_t lane_off[V::W];
      V::to_array(offset_lanes<V, NDIM>(index, P.gimg_stride), lane_off);
      const unsigned lane_in = V::bits(inside);
      const int64_t go_sp = row_out + w * P.out_stride[L];
      for (int64_t n = n0; n < n1; ++n) {
        for (int64_t c = 0; c < P.C; ++c) {
          alignas(64) float gl[V::W];
          V::to_array(V::load(grad_out + n * P.out_stride_n + c * P.out_stride_c + go_sp, P.out_stride[L], live), gl);
          float* gi = grad_image + n * P.gimg_stride_n + c * P.gimg_stride_c;
          for (int j = 0; j < count; ++j)
            if (lane_in >> j & 1u) gi[lane_off[j]] += 1.f * gl[j];
        }
      }
    }
    if (grad_coords != nullptr) {
      float* dst = grad_coords + row_gc + w * P.gcoord_stride[L];
      for (int k = 0; k < NDIM; ++k) {
        if (P.gcoord_stride[L] == 1) {
          V::store(dst + P.gcoord_axis_offset[k], V::zero(), live);
        } else {
          for (int j = 0; j < count; ++j) dst[P.gcoord_axis_offset[k] + j * P.gcoord_stride[L]] = 0.f;
        }
      }
    }
  }
}

// Row loops: rows [r0, r1) of the output (coordinate batch, all axes but the last).
template <int NDIM>
FASTWARP_LANES_INLINE void unravel_row(const SampleParams<NDIM>& P, int64_t r, int64_t* nd, int64_t (&pos)[NDIM]) {
  for (int k = NDIM - 2; k >= 0; --k) {
    pos[k] = r % P.out_size[k];
    r /= P.out_size[k];
  }
  *nd = r;
}

template <typename V, int NDIM, bool kDisp, Padding kPad>
void forward_rows(const SampleParams<NDIM>& P, const float* image, const float* coords, float* out,
                  float* jac, int64_t r0, int64_t r1) {
  int64_t pos[NDIM] = {}, nd = 0;
  for (int64_t r = r0; r < r1; ++r) {
    unravel_row(P, r, &nd, pos);
    forward_row<V, kDisp, kPad, NDIM>(P, image, coords, out, jac, nd, pos);
  }
}

template <typename V, int NDIM, bool kDisp, Padding kPad>
void backward_rows(const SampleParams<NDIM>& P, const float* grad_out, const float* image,
                   const float* coords, float* grad_image, float* grad_coords, int64_t r0,
                   int64_t r1) {
  int64_t pos[NDIM] = {}, nd = 0;
  for (int64_t r = r0; r < r1; ++r) {
    unravel_row(P, r, &nd, pos);
    backward_row<V, kDisp, kPad, NDIM>(P, grad_out, image, coords, grad_image, grad_coords, nd, pos);
  }
}

template <typename V, int NDIM, bool kDisp, Padding kPad, typename elem_t>
void nearest_forward_rows(const SampleParams<NDIM>& P, const elem_t* image, const float* coords,
                          elem_t* out, int64_t r0, int64_t r1) {
  int64_t pos[NDIM] = {}, nd = 0;
  for (int64_t r = r0; r < r1; ++r) {
    unravel_row(P, r, &nd, pos);
    nearest_forward_row<V, kDisp, kPad, NDIM, elem_t>(P, image, coords, out, nd, pos);
  }
}

template <typename V, int NDIM, bool kDisp, Padding kPad>
void nearest_backward_rows(const SampleParams<NDIM>& P, const float* grad_out, const float* coords,
                           float* grad_image, float* grad_coords, int64_t r0, int64_t r1) {
  int64_t pos[NDIM] = {}, nd = 0;
  for (int64_t r = r0; r < r1; ++r) {
    unravel_row(P, r, &nd, pos);
    nearest_backward_row<V, kDisp, kPad, NDIM>(P, grad_out, coords, grad_image, grad_coords, nd, pos);
  }
}

}  // namespace FASTWARP_SIMD_NAMESPACE
}  // namespace simd
}  // namespace fastwarp
