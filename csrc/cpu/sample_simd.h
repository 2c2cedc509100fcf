// Vectorized CPU sampling: the forward and backward of a row of output points, W points at a
// time (W = 16 with AVX-512, 8 with AVX2), at float32 coordinates with zeros or border
// padding: linear interpolation of float32 images, and nearest of float32 and integer
// (label) images. This header holds the two instruction
// sets' lane operations; sample_simd_kernels.h the kernels, written once over them and
// compiled once per instruction set; csrc/cpu/warp_cpu.cpp chooses at run time by what the
// CPU supports. Every other case, and every CPU without AVX2, runs the scalar per-point code
// of csrc/common/sampling.h.
//
// Note [Vectorized CPU sampling]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// The lanes compute exactly what sampling.h computes for one point, in the same operations
// and the same order (the coordinate map and ATen's unnormalize, clip_coordinates_set_grad,
// axis_sample's range test, floor and weights, make_corners' weight products built axis by
// axis, tree_sum's pairing, axis_derivative): with no fused multiply-add on either side
// (the extension is built with -ffp-contract=off) the results are the scalar path's, bit for
// bit, which tests/test_warp_simd.py checks at hostile coordinates. The formulas are restated
// here rather than called because a branch of the scalar code is a select across lanes here:
//   * clip (border): x <= 0 -> 0, x >= size - 1 -> size - 1, else x, with derivative 1 only
//     in between; NaN fails both tests and passes through, as in the scalar code;
//   * axis_sample: a lane outside (-2, size + 1), or NaN, gets zero weights and no corner
//     inside, so it reads 0 and passes no gradient (Note [Non-finite and far-away
//     coordinates]); floor is the instruction, equal to floor_in_range in that range;
//   * a corner outside is gathered as 0 (a masked gather), never weight * value, so an Inf
//     or NaN voxel beside the border cannot leak into a point that does not touch it.
//   * nearest: the lanes round half to even (the rounding instruction in its default mode is
//     std::nearbyint), and copy the voxel's bits: a masked 32-bit gather for float32 and
//     32-bit labels, a lane-by-lane copy for 8-, 16- and 64-bit labels. Its coordinate
//     gradient is 0 and its image gradient adds each point's upstream value to one voxel.
// Reflection keeps the scalar path (its fmod and flip parity have no exact lane form), and so
// do half, bfloat16 and double (their coordinates are not float32).
//
// The gathers address the image with 32-bit offsets: warp_cpu.cpp uses these kernels only
// when params_fit_int32 holds. Along the last axis, when it is contiguous, the two
// neighbours of a point are adjacent in memory: one 64-bit gather lane reads both (half the
// gathered elements, which bound the loop on CPUs whose gathers are slow), at a pair start
// clamped into the row, and a select picks the right element of the pair at the borders. The image gradient is a scatter (two lanes may add to one
// voxel), done lane by lane from the vector weights and offsets into the thread's buffer of
// Note [CPU image gradient], in the scalar code's order.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#define FASTWARP_HAVE_X86_SIMD 1
#include <immintrin.h>
#endif

#include <cstdint>

#include "../common/sampling.h"

#if defined(FASTWARP_HAVE_X86_SIMD)

// The kernels' helpers (sample_simd_kernels.h): inlined into the row loops, whose target
// they share, so that their lane arrays stay in registers.
#define FASTWARP_LANES_INLINE __attribute__((always_inline)) inline
#define FASTWARP_AVX2_FN __attribute__((always_inline, target("avx2"))) static inline
#define FASTWARP_AVX512_FN \
  __attribute__((always_inline, target("avx512f,avx512dq,avx512vl,avx512bw"))) static inline

namespace fastwarp {
namespace simd {

struct Avx512 {
  static constexpr int W = 16;
  using F = __m512;
  using I = __m512i;
  using M = __mmask16;
  FASTWARP_AVX512_FN F set1(float v) { return _mm512_set1_ps(v); }
  FASTWARP_AVX512_FN I set1i(int v) { return _mm512_set1_epi32(v); }
  FASTWARP_AVX512_FN F zero() { return _mm512_setzero_ps(); }
  FASTWARP_AVX512_FN F iota() {
    return _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  }
  FASTWARP_AVX512_FN I iotai() {
    return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  }
  FASTWARP_AVX512_FN M first(int n) { return n >= W ? M(0xFFFF) : M((1u << n) - 1u); }
  FASTWARP_AVX512_FN M all() { return M(0xFFFF); }
  FASTWARP_AVX512_FN F add(F a, F b) { return _mm512_add_ps(a, b); }
  FASTWARP_AVX512_FN F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  FASTWARP_AVX512_FN F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  FASTWARP_AVX512_FN M lt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  FASTWARP_AVX512_FN M gt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  FASTWARP_AVX512_FN M le(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
  FASTWARP_AVX512_FN M ge(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  FASTWARP_AVX512_FN M and_(M a, M b) { return M(a & b); }
  FASTWARP_AVX512_FN M or_(M a, M b) { return M(a | b); }
  FASTWARP_AVX512_FN M not_(M a) { return M(~a); }
  FASTWARP_AVX512_FN F select(M m, F if_true, F if_false) {
    return _mm512_mask_blend_ps(m, if_false, if_true);
  }
  FASTWARP_AVX512_FN F floor(F x) {
    return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  }
  FASTWARP_AVX512_FN F round_even(F x) {  // std::nearbyint in the default rounding mode
    return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  FASTWARP_AVX512_FN I to_int(F x) { return _mm512_cvttps_epi32(x); }
  FASTWARP_AVX512_FN I addi(I a, I b) { return _mm512_add_epi32(a, b); }
  FASTWARP_AVX512_FN I muli(I a, int s) { return _mm512_mullo_epi32(a, _mm512_set1_epi32(s)); }
  FASTWARP_AVX512_FN I clampi(I a, int lo, int hi) {
    return _mm512_min_epi32(_mm512_max_epi32(a, _mm512_set1_epi32(lo)), _mm512_set1_epi32(hi));
  }
  FASTWARP_AVX512_FN M in_range(I a, int size) {  // 0 <= a < size
    return M(_mm512_cmpge_epi32_mask(a, _mm512_setzero_si512()) &
             _mm512_cmplt_epi32_mask(a, _mm512_set1_epi32(size)));
  }
  // p[lane * stride] for the lanes of m, 0 elsewhere
  FASTWARP_AVX512_FN F load(const float* p, int64_t stride, M m) {
    if (stride == 1) return _mm512_maskz_loadu_ps(m, p);
    if (stride == 0) return _mm512_maskz_mov_ps(m, _mm512_set1_ps(*p));
    const I idx = _mm512_mullo_epi32(iotai(), _mm512_set1_epi32(static_cast<int>(stride)));
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, p, 4);
  }
  FASTWARP_AVX512_FN void store(float* p, F v, M m) { _mm512_mask_storeu_ps(p, m, v); }
  FASTWARP_AVX512_FN F gather(const float* base, I idx, M m) {
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, base, 4);
  }
  FASTWARP_AVX512_FN M eqi(I a, int v) { return _mm512_cmpeq_epi32_mask(a, _mm512_set1_epi32(v)); }
  // (base[idx], base[idx + 1]) of every lane: two 64-bit gathers of 8 lanes, deinterleaved
  FASTWARP_AVX512_FN void gather_pairs(const float* base, I idx, F* first, F* second) {
    const __m512 a = _mm512_castsi512_ps(_mm512_i32gather_epi64(_mm512_castsi512_si256(idx), base, 4));
    const __m512 b = _mm512_castsi512_ps(
        _mm512_i32gather_epi64(_mm512_extracti64x4_epi64(idx, 1), base, 4));
    const I even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    *first = _mm512_permutex2var_ps(a, even, b);
    *second = _mm512_permutex2var_ps(a, _mm512_add_epi32(even, _mm512_set1_epi32(1)), b);
  }
  FASTWARP_AVX512_FN void to_array(F v, float* dst) { _mm512_storeu_ps(dst, v); }
  FASTWARP_AVX512_FN void to_array(I v, int32_t* dst) {
    _mm512_storeu_si512(reinterpret_cast<void*>(dst), v);
  }
  FASTWARP_AVX512_FN unsigned bits(M m) { return static_cast<unsigned>(m); }
};

struct Avx2 {
  static constexpr int W = 8;
  using F = __m256;
  using I = __m256i;
  using M = __m256;  // all-ones lanes
  FASTWARP_AVX2_FN F set1(float v) { return _mm256_set1_ps(v); }
  FASTWARP_AVX2_FN I set1i(int v) { return _mm256_set1_epi32(v); }
  FASTWARP_AVX2_FN F zero() { return _mm256_setzero_ps(); }
  FASTWARP_AVX2_FN F iota() { return _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7); }
  FASTWARP_AVX2_FN I iotai() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
  FASTWARP_AVX2_FN M first(int n) {
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), iotai()));
  }
  FASTWARP_AVX2_FN M all() { return _mm256_castsi256_ps(_mm256_set1_epi32(-1)); }
  FASTWARP_AVX2_FN F add(F a, F b) { return _mm256_add_ps(a, b); }
  FASTWARP_AVX2_FN F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  FASTWARP_AVX2_FN F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  FASTWARP_AVX2_FN M lt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  FASTWARP_AVX2_FN M gt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  FASTWARP_AVX2_FN M le(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
  FASTWARP_AVX2_FN M ge(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  FASTWARP_AVX2_FN M and_(M a, M b) { return _mm256_and_ps(a, b); }
  FASTWARP_AVX2_FN M or_(M a, M b) { return _mm256_or_ps(a, b); }
  FASTWARP_AVX2_FN M not_(M a) { return _mm256_xor_ps(a, all()); }
  FASTWARP_AVX2_FN F select(M m, F if_true, F if_false) {
    return _mm256_blendv_ps(if_false, if_true, m);
  }
  FASTWARP_AVX2_FN F floor(F x) { return _mm256_floor_ps(x); }
  FASTWARP_AVX2_FN F round_even(F x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  FASTWARP_AVX2_FN I to_int(F x) { return _mm256_cvttps_epi32(x); }
  FASTWARP_AVX2_FN I addi(I a, I b) { return _mm256_add_epi32(a, b); }
  FASTWARP_AVX2_FN I muli(I a, int s) { return _mm256_mullo_epi32(a, _mm256_set1_epi32(s)); }
  FASTWARP_AVX2_FN I clampi(I a, int lo, int hi) {
    return _mm256_min_epi32(_mm256_max_epi32(a, _mm256_set1_epi32(lo)), _mm256_set1_epi32(hi));
  }
  FASTWARP_AVX2_FN M in_range(I a, int size) {
    const I ge0 = _mm256_cmpgt_epi32(a, _mm256_set1_epi32(-1));
    const I lts = _mm256_cmpgt_epi32(_mm256_set1_epi32(size), a);
    return _mm256_castsi256_ps(_mm256_and_si256(ge0, lts));
  }
  FASTWARP_AVX2_FN F load(const float* p, int64_t stride, M m) {
    if (stride == 1) return _mm256_maskload_ps(p, _mm256_castps_si256(m));
    if (stride == 0) return _mm256_and_ps(_mm256_set1_ps(*p), m);
    const I idx = _mm256_mullo_epi32(iotai(), _mm256_set1_epi32(static_cast<int>(stride)));
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), p, idx, m, 4);
  }
  FASTWARP_AVX2_FN void store(float* p, F v, M m) {
    _mm256_maskstore_ps(p, _mm256_castps_si256(m), v);
  }
  FASTWARP_AVX2_FN F gather(const float* base, I idx, M m) {
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), base, idx, m, 4);
  }
  FASTWARP_AVX2_FN M eqi(I a, int v) {
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(a, _mm256_set1_epi32(v)));
  }
  FASTWARP_AVX2_FN void gather_pairs(const float* base, I idx, F* first, F* second) {
    const __m256 a = _mm256_castsi256_ps(_mm256_i32gather_epi64(
        reinterpret_cast<const long long*>(base), _mm256_castsi256_si128(idx), 4));
    const __m256 b = _mm256_castsi256_ps(_mm256_i32gather_epi64(
        reinterpret_cast<const long long*>(base), _mm256_extracti128_si256(idx, 1), 4));
    // within 128-bit halves: (a0 a1 b0 b1 | a2 a3 b2 b3), then the halves' 64-bit blocks reordered
    *first = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xD8));
    *second = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xDD)), 0xD8));
  }
  FASTWARP_AVX2_FN void to_array(F v, float* dst) { _mm256_storeu_ps(dst, v); }
  FASTWARP_AVX2_FN void to_array(I v, int32_t* dst) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), v);
  }
  FASTWARP_AVX2_FN unsigned bits(M m) { return static_cast<unsigned>(_mm256_movemask_ps(m)); }
};

}  // namespace simd
}  // namespace fastwarp

#endif  // FASTWARP_HAVE_X86_SIMD
