// fp8_round_trip(x, ue8m0) -> x's FP8 round trip (deepseek/model/fp8.py, `fake_quantize_activation`).
//
// Per block of 128 values of a row: scale = max(max|x|, 1e-4) / 448, rounded up to a power of two
// (ue8m0), then x / scale clamped to +-448, rounded to the nearest e4m3 value (ties to even) and
// multiplied back; bf16 results round to nearest even. The same fp32 operations, in the same order,
// as the torch expression, so the same bits; one pass over 16 lanes at a time, where torch's CPU
// casts to and from FP8 take one element at a time.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "vec.h"

namespace {

constexpr int64_t kBlock = 128;

// fp32 lanes within +-448 rounded to e4m3: add and subtract 1.5 * 2^23 * (e4m3's spacing at |v|).
inline __m512 round_e4m3(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  __m512i e = _mm512_and_si512(_mm512_srli_epi32(bits, 23), _mm512_set1_epi32(0xFF));
  e = _mm512_max_epi32(_mm512_sub_epi32(e, _mm512_set1_epi32(3)), _mm512_set1_epi32(127 - 9));
  const __m512 magic = _mm512_castsi512_ps(
      _mm512_or_si512(_mm512_slli_epi32(_mm512_add_epi32(e, _mm512_set1_epi32(23)), 23), _mm512_set1_epi32(1 << 22)));
  const __m512i sign = _mm512_and_si512(bits, _mm512_set1_epi32(static_cast<int>(0x80000000u)));
  const __m512 r = _mm512_sub_ps(_mm512_add_ps(_mm512_abs_ps(v), magic), magic);
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(r), sign));
}

// Exactly 2^ceil(log2 s) for positive normal s.
inline float pow2_ceil(float s) {
  uint32_t i;
  std::memcpy(&i, &s, sizeof i);
  i = (i + 0x7FFFFFu) & 0x7F800000u;
  float r;
  std::memcpy(&r, &i, sizeof r);
  return r;
}

template <typename T>
void round_trip_block(const T* x, T* y, bool ue8m0) {
  __m512 top = _mm512_setzero_ps();
  for (int64_t i = 0; i < kBlock; i += 16) top = _mm512_max_ps(top, _mm512_abs_ps(load16(x + i, 0xffff)));
  float scale = std::max(_mm512_reduce_max_ps(top), 1e-4f) / 448.0f;
  if (ue8m0) scale = pow2_ceil(scale);
  const __m512 s = _mm512_set1_ps(scale), hi = _mm512_set1_ps(448.0f), lo = _mm512_set1_ps(-448.0f);
  for (int64_t i = 0; i < kBlock; i += 16) {
    const __m512 v = _mm512_min_ps(_mm512_max_ps(_mm512_div_ps(load16(x + i, 0xffff), s), lo), hi);
    store16(y + i, _mm512_mul_ps(round_e4m3(v), s), 0xffff);
  }
}

at::Tensor fp8_round_trip(const at::Tensor& x, bool ue8m0) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "fp8_round_trip: fp32 or bf16 only");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) % kBlock == 0, "fp8_round_trip: the last dim must be a multiple of 128");
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty_like(xc);
  const int64_t blocks = xc.numel() / kBlock;
  at::parallel_for(0, blocks, 64, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      if (x.scalar_type() == at::kFloat)
        round_trip_block(xc.data_ptr<float>() + b * kBlock, y.data_ptr<float>() + b * kBlock, ue8m0);
      else
        round_trip_block(xc.data_ptr<at::BFloat16>() + b * kBlock, y.data_ptr<at::BFloat16>() + b * kBlock, ue8m0);
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(deepseek_kernels, m) { m.def("fp8_round_trip(Tensor x, bool ue8m0) -> Tensor"); }
TORCH_LIBRARY_IMPL(deepseek_kernels, CPU, m) { m.impl("fp8_round_trip", &fp8_round_trip); }
