// What the native kernels share: loads and stores of 16 fp32 lanes from fp32 or bf16 memory,
// bf16 rounding, exp, lane masks, and the bf16 pair products (AVX512-BF16).
#pragma once

#include <ATen/ATen.h>
#include <immintrin.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

namespace {

inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }

inline __m512 load16(const at::BFloat16* p, __mmask16 m) {   // bf16 -> fp32 is exact: a shift
  __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

inline void store16(float* p, __m512 v, __mmask16 m) { _mm512_mask_storeu_ps(p, m, v); }

// Lanes rounded to T's precision and widened back: bf16 rounds to nearest even
// (at::BFloat16's rounding), and a NaN stays a quiet NaN.
template <typename T>
inline __m512 round_to(__m512 v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    const __m512i i = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(i, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(_mm512_add_epi32(i, _mm512_set1_epi32(0x7fff)), lsb);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(i, _mm512_set1_epi32(0x400000)));
    return _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
  }
}

inline void store16(at::BFloat16* p, __m512 v, __mmask16 m) {   // rounded to nearest even
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(round_to<at::BFloat16>(v)), 16)));
}

// e^x to about 2 ulp; -inf and anything below -104 give 0, past ~88.7 inf, NaN stays NaN. Cephes'
// expf: x = n ln2 + f with |f| <= ln2 / 2, e^f from a degree-7 polynomial, then scaled by 2^n.
inline __m512 exp16(__m512 x) {
  const __mmask16 zero = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-104.0f), _CMP_LT_OQ);
  x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);     // (max returns its second operand for a NaN)
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  f = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), f);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(f, f), _mm512_add_ps(f, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_mov_ps(~zero, _mm512_scalef_ps(p, n));
}

// Masks of the first `left` lanes (all, or none, past the ends).
inline __mmask16 tail16(int64_t left) {
  return left >= 16 ? __mmask16(0xffff) : left <= 0 ? __mmask16(0) : __mmask16((1u << left) - 1);
}

inline __mmask32 tail32(int64_t left) {
  return left >= 32 ? __mmask32(0xffffffffu) : left <= 0 ? __mmask32(0) : __mmask32((1u << left) - 1);
}

inline uint16_t bf16_bits(at::BFloat16 v) { return v.x; }
inline uint16_t bf16_bits(float v) {      // v is a bf16 value held in fp32: its top half is exact
  uint32_t i;
  std::memcpy(&i, &v, sizeof i);
  return static_cast<uint16_t>(i >> 16);
}

// Rows of bf16 values as the pair products read them: pair p of row m holds the bits of x[m][2p]
// (low half) and x[m][2p+1] (high half; 0 past K). `at(m, k)` gives x[m][k].
template <typename F>
std::vector<uint32_t> bf16_pairs(int64_t M, int64_t K, F at) {
  const int64_t P = (K + 1) / 2;
  std::vector<uint32_t> xp(M * P);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t p = 0; p < P; ++p) {
      const uint32_t lo = bf16_bits(at(m, 2 * p)), hi = 2 * p + 1 < K ? bf16_bits(at(m, 2 * p + 1)) : 0;
      xp[m * P + p] = lo | hi << 16;
    }
  return xp;
}

#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

inline bool bf16_dot_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("DEEPSEEK_BF16_DOT");
    return __builtin_cpu_supports("avx512bf16") && !(env && std::string(env) == "0");
  }();
  return enabled;
}

// One pair of weight rows (a0, a1: row 2p's two 32-column segments; b0, b1: row 2p + 1's) into the
// R x 64 accumulators.
template <int R>
BF16_TARGET __attribute__((always_inline)) inline void pair_step(__m512 (&acc)[R][4], const uint32_t* xp,
                                                                 int64_t P, int64_t p, __m512i a0, __m512i a1,
                                                                 __m512i b0, __m512i b1) {
  const __m512i w[4] = {_mm512_unpacklo_epi16(a0, b0), _mm512_unpackhi_epi16(a0, b0),
                            _mm512_unpacklo_epi16(a1, b1), _mm512_unpackhi_epi16(a1, b1)};
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(xp[r * P + p]));
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], a, (__m512bh)w[j]);
  }
}

// The 4 accumulators of one row of a pair tile (64 columns, in lane order: see tile_bf16) stored
// in column order.
template <typename TY>
inline void store_pair_sums(const __m512 (&acc)[4], TY* y, const __mmask16* m16) {
  // lo = columns {0-3, 8-11, 16-19, 24-27} of a segment, hi = {4-7, 12-15, 20-23, 28-31}
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
    const __m512 lo = acc[2 * h], hi = acc[2 * h + 1];
    store16(y + 32 * h, _mm512_permutex2var_ps(lo, first, hi), m16[2 * h]);
    store16(y + 32 * h + 16, _mm512_permutex2var_ps(lo, second, hi), m16[2 * h + 1]);
  }
}

}  // namespace
